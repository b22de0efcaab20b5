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


def build(config: Config, scenario: Scenario, device: torch.device) -> Algorithm:
    module, cls = ALGORITHMS[config.algorithm.name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(config, scenario, device)
