"""IFCA (Ghosh et al. 2020): K models. Each round a client evaluates every model on its training
samples, picks the one with the lowest mean loss, and trains only that one; the server averages
each model over the clients that picked it (weighted by their sample counts). The pick is the
client's cluster: logged as one-hot proportions (every sample assigned to it) so the same scoring
as FedGMI's applies, and the client predicts with its model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..scenarios.base import Scenario
from . import em
from ..models.vae import Params
from .classifiers import ClassifierBaseline
from .common import Batch


class IFCA(ClassifierBaseline):
    name = "ifca"

    def num_models(self, scenario: Scenario) -> int:
        return scenario.num_components

    def responsibilities(self, params: Params, nll: torch.Tensor, batch: Batch, states: list[dict[str, np.ndarray]],
                         training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mean_loss = em.masked_mean(nll.transpose(1, 2), batch.mask)  # [G, M]
        picked = F.one_hot(mean_loss.argmin(1), self.models).to(nll.dtype)
        return picked, picked.unsqueeze(1).expand(-1, nll.shape[2], -1)
