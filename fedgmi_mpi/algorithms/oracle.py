"""The oracle: FedGMI's model and rounds with every training sample's true component known.

Responsibilities are one-hot from the truth in every training round (no initialisation, no
warm-up, no E-step), so the K VAEs and heads train on the true split. Evaluation is FedGMI's:
proportions by E-steps from uniform, input-gated prediction. It is the upper bound for
proportions, assignment and accuracy on exactly the same data, and the only algorithm that reads
the truth (the log's ``algorithm_reads_truth`` attribute says so)."""
from __future__ import annotations

import numpy as np
import torch

from ..config import Config
from ..errors import UserError
from ..scenarios.base import ClientData, Scenario
from . import em
from .common import Batch
from .fedgmi import FedGMI, ServerState


class Oracle(FedGMI):
    name = "oracle"
    reads_truth = True

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu"):
        if not scenario.has_truth:
            raise UserError("algorithm.name=oracle needs the true component of every sample; this scenario has none")
        super().__init__(config, scenario, device)
        self.warmup_rounds = 0

    def init_server(self) -> ServerState:
        return ServerState(params=self.initial_model(), phase="train")

    def _training_responsibilities(self, clients: list[ClientData], states: list[dict[str, np.ndarray]], batch: Batch,
                                   log_likelihood: torch.Tensor, logits: torch.Tensor, warmup: bool,
                                   best_restart: int, best_topics: np.ndarray,
                                   tempering: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        resp = torch.zeros_like(log_likelihood)
        for g, client in enumerate(clients):
            truth = torch.as_tensor(client.true_components_train, device=resp.device)
            resp[g, torch.arange(client.num_train, device=resp.device), truth] = 1.0
        return em.masked_mean(resp, batch.mask), resp, resp
