from __future__ import annotations

import importlib

import torch

from ..config import Config
from ..scenarios.base import Scenario
from .base import Algorithm

# name -> module:class. A new algorithm is one file plus one line here.
ALGORITHMS = {
    "fedgmi": "fedgmi:FedGMI",
    "oracle": "oracle:Oracle",
    "local": "local:Local",
    "fedavg": "fedavg:FedAvg",
    "fedprox": "fedprox:FedProx",
    "ifca": "ifca:IFCA",
    "fedem": "fedem:FedEM",
    "fedgmm": "fedgmm:FedGMM",
}


# Modules whose dataclasses a checkpoint may rebuild (a server state and the pieces it holds):
# the algorithms' own files, the baselines' shared engine and the codebook's; nothing else is
# imported when reading one.
STATE_MODULES = frozenset({f"{__name__}.{target.split(':')[0]}" for target in ALGORITHMS.values()}
                          | {f"{__name__}.codebook", f"{__name__}.classifiers"})


# the algorithms that can fit another number of components than the scenario's truth
OWN_COMPONENT_COUNT = ("fedgmi",)


def build(config: Config, scenario: Scenario, device: torch.device, num_components: int | None = None) -> Algorithm:
    """The configured algorithm; ``num_components``: the K it fits when not the scenario's (fedgmi only)."""
    module, cls = ALGORITHMS[config.algorithm.name].split(":")
    algorithm = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    if num_components is not None and num_components != scenario.num_components:
        return algorithm(config, scenario, device, num_components=num_components)
    return algorithm(config, scenario, device)
