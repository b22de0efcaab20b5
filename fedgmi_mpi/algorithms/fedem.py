"""FedEM (Marfoq et al. 2021): K component classifiers, mixed with per-client proportions.

Client, each round: E-step q_im ∝ pi_m exp(-loss_m(x_i, y_i)) from the received models (per-sample
*losses*: FedEM has no density of x), pi = mean_i q_i, then each model trains on its q-weighted
loss summed over the batch and divided by the batch size (so a component the client barely holds
takes small steps). Server: each component is averaged with weight n_c, the client's sample count,
for every component (FedGMI instead weights component k by the client's responsibility mass
sum_i r_ik, so a client that does not hold a component barely moves it). Prediction with *fixed*
proportions: sum_m pi_m p_m(y|x), the same for every input. Evaluation (and unseen clients): EM on
pi from uniform with the models frozen."""
from __future__ import annotations

import numpy as np
import torch

from ..scenarios.base import Scenario
from . import em
from ..models.vae import Params
from .classifiers import EVAL_PROPORTION_ITERATIONS, ClassifierBaseline
from .common import Batch


class FedEM(ClassifierBaseline):
    name = "fedem"
    loss_per_mass = False

    def num_models(self, scenario: Scenario) -> int:
        return scenario.num_components

    def responsibilities(self, params: Params, nll: torch.Tensor, batch: Batch, states: list[dict[str, np.ndarray]],
                         training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        log_likelihood = -nll.transpose(1, 2)  # [G, N, M]: log p_m(y_i | x_i)
        if not training:
            uniform = torch.full((len(states), self.models), 1.0 / self.models, device=nll.device)
            return em.fit_proportions(log_likelihood, batch.mask, uniform, EVAL_PROPORTION_ITERATIONS)
        prior = torch.as_tensor(np.stack([s["proportions"] for s in states]), dtype=torch.float32, device=nll.device)
        resp = em.responsibilities(log_likelihood, prior)
        return em.masked_mean(resp, batch.mask), resp

    def upload_weights(self, weights: torch.Tensor, batch: Batch) -> torch.Tensor:
        return batch.counts.to(weights.dtype)[:, None].expand(-1, self.models)
