"""FedProx (Li et al. 2020): FedAvg whose local loss adds (mu / 2) ||w - w_global||^2, which keeps
clients with different data near the global model (``algorithm.prox_mu``; 0 is FedAvg)."""
from __future__ import annotations

from .fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def prox_mu(self) -> float:
        return self.cfg.prox_mu
