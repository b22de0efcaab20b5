from __future__ import annotations

import torch

from ..config import Config
from ..scenarios.base import Scenario
from .base import Algorithm


def build(config: Config, scenario: Scenario, device: torch.device) -> Algorithm:
    from .fedgmi import FedGMI

    return {"fedgmi": FedGMI}[config.algorithm.name](config, scenario, device)
