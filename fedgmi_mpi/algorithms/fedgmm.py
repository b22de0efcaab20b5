"""FedGMM (Wu et al., ICML 2023) in its essentials: a Gaussian mixture on the codes of a federated
autoencoder is the density model of x, paired with K classifiers.

Joint model of a client's sample: p(x, y) = sum_k pi_ck N(e(x); mu_k, diag var_k) p_k(y|x), with
e the autoencoder's encoder (one shared autoencoder, trained on every sample's reconstruction).
Client round: E-step r_ik ∝ pi_ck N(e(x_i); mu_k, var_k) p_k(y_i|x_i), pi_c = mean_i r_i; the
classifiers train on the r-weighted loss and the autoencoder on reconstruction; the Gaussian's
M-step is closed form: the client sends its own r-weighted mean and second moment of the codes,
and the server's mass-weighted mean of them is the pooled estimate. Server: component k (its
classifier and Gaussian) averaged with weight sum_i r_ik (FedGMM's n_t pi_tk), the autoencoder
with weight n_t. Prediction gated by the input, all in log space:
p(y|x) = sum_k softmax_k(log pi_k + log N(e(x); mu_k, var_k)) p_k(y|x). (The reference code adds a
probability to a log-probability there; here every term is a log until one final exp.)
Evaluation and unseen clients: EM on pi from uniform with the code likelihoods alone.

Model rows: K rows [classifier k | mu_k | second moment_k | zeros] and one row [autoencoder |
zeros], all as long as the longest (a dense upload carries the padding: 4 bytes a zero)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import rng as rngs
from ..config import Config
from ..models import vae
from ..models.vae import Params, StackedLayout
from ..scenarios.base import ClientData, Scenario
from . import em
from .base import Broadcast, ClientUpload, ModelLayout, UploadLayout, pack, unpack
from .classifiers import EVAL_PROPORTION_ITERATIONS, ClassifierBaseline, ServerState, class_logits, sample_nll
from .common import Batch

VARIANCE_FLOOR = 1e-3
# Rounds whose responsibilities come from a fixed random split of code space instead of the
# mixture: a Gaussian mixture started from random means lets the component nearest the codes take
# every sample while the others starve (measured: all clients on one component); the split spreads
# the first means over the data.
SPREAD_ROUNDS = 5


class FedGMM(ClassifierBaseline):
    name = "fedgmm"

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu"):
        super().__init__(config, scenario, device)
        d, h, z = scenario.input_dim, config.model.hidden, config.model.latent
        self.code = z
        self.autoencoder = StackedLayout([("ae1", d, h), ("ae2", h, z), ("ad1", z, h), ("ad2", h, d)], 1)
        self.classifier_size = self.layout.per_component
        self.row_size = max(self.classifier_size + 2 * z, self.autoencoder.per_component)
        self.spreading = False  # set per round from the broadcast (see SPREAD_ROUNDS)

    def num_models(self, scenario: Scenario) -> int:
        return scenario.num_components

    # ---- the model -----------------------------------------------------------------------
    def model_layout(self) -> ModelLayout:
        used = self.classifier_size + 2 * self.code
        segments = (*self.layout.sizes, 2 * self.code) + ((self.row_size - used,) if self.row_size > used else ())
        return ModelLayout(rows=self.models + 1, row_size=self.row_size, segments=segments, control_bytes=0)

    def upload_layout(self, broadcast: Broadcast) -> UploadLayout:
        return UploadLayout(self.models + 1, self.row_size, 0) if broadcast.phase == "train" else UploadLayout(0, 0, 0)

    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"train": {"aggregation_weight": (self.models + 1,)}, "evaluate": {}}

    def initial_model(self) -> np.ndarray:
        generator = rngs.torch_generator(self.seed, rngs.SERVER, 0)
        k, c, z = self.models, self.classifier_size, self.code
        matrix = torch.zeros(k + 1, self.row_size)
        matrix[:k, :c] = self.layout.init_matrix(generator)
        mean = 0.5 * torch.randn(k, z, generator=generator)
        matrix[:k, c:c + z] = mean
        matrix[:k, c + z:c + 2 * z] = mean.pow(2) + 1.0  # unit variances
        matrix[k, : self.autoencoder.per_component] = self.autoencoder.init_matrix(generator)[0]
        return matrix.numpy()

    def unflatten(self, matrix: torch.Tensor) -> Params:
        k, c, z = self.models, self.classifier_size, self.code
        params = self.layout.unflatten(matrix[:, :k, :c])
        params["gmm_mean"] = matrix[:, :k, c:c + z]
        params["gmm_moment"] = matrix[:, :k, c + z:c + 2 * z]
        params.update(self.autoencoder.unflatten(matrix[:, k:, : self.autoencoder.per_component]))
        return params

    @staticmethod
    def codes(params: Params, x: torch.Tensor) -> torch.Tensor:
        """x [G, B, D] -> codes [G, B, Z]."""
        return vae._linear(params, "ae2", F.relu(vae._linear(params, "ae1", x.unsqueeze(1))))[:, 0]

    @staticmethod
    def reconstruction_logits(params: Params, codes: torch.Tensor) -> torch.Tensor:
        return vae._linear(params, "ad2", F.relu(vae._linear(params, "ad1", codes.unsqueeze(1))))[:, 0]

    @staticmethod
    def log_density(params: Params, codes: torch.Tensor) -> torch.Tensor:
        """log N(codes; mu_k, diag var_k) [G, B, K]."""
        mean = params["gmm_mean"]
        variance = (params["gmm_moment"] - mean.pow(2)).clamp_min(VARIANCE_FLOOR)
        diff = codes.unsqueeze(2) - mean.unsqueeze(1)  # [G, B, K, Z]
        return -0.5 * (diff.pow(2) / variance.unsqueeze(1) + variance.log().unsqueeze(1) + math.log(2 * math.pi)).sum(-1)

    # ---- the algorithm -------------------------------------------------------------------
    def configure(self, state: ServerState) -> Broadcast | None:
        broadcast = super().configure(state)
        if broadcast is not None and broadcast.phase == "train":
            broadcast.payload = pack([np.array([float(state.train_round < SPREAD_ROUNDS)])])
        return broadcast

    def group_update(self, broadcast: Broadcast, clients: list[ClientData],
                     states: list[dict[str, np.ndarray]]) -> list[ClientUpload]:
        (control,) = unpack(broadcast.payload) if broadcast.phase == "train" else (np.zeros(1),)
        self.spreading = bool(control[0])
        return super().group_update(broadcast, clients, states)

    def _spread(self, codes: torch.Tensor) -> torch.Tensor:
        """[G, N, K] soft split of code space along K fixed random directions (from the seed)."""
        generator = rngs.torch_generator(self.seed, rngs.SERVER, 1)
        directions = torch.randn(self.models, self.code, generator=generator).to(codes.device)
        scores = codes @ directions.T  # [G, N, K]
        spread = scores.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)  # each client's own: group-independent
        return torch.softmax(scores / spread * 4.0, dim=2)

    def responsibilities(self, params: Params, nll: torch.Tensor, batch: Batch, states: list[dict[str, np.ndarray]],
                         training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        log_density = self.log_density(params, self.codes(params, batch.x))  # [G, N, K]
        if not training:
            uniform = torch.full((len(states), self.models), 1.0 / self.models, device=nll.device)
            return em.fit_proportions(log_density, batch.mask, uniform, EVAL_PROPORTION_ITERATIONS)
        if self.spreading:
            resp = self._spread(self.codes(params, batch.x))
            return em.masked_mean(resp, batch.mask), resp
        prior = torch.as_tensor(np.stack([s["proportions"] for s in states]), dtype=torch.float32, device=nll.device)
        resp = em.responsibilities(log_density - nll.transpose(1, 2), prior)
        return em.masked_mean(resp, batch.mask), resp

    def predict(self, params: Params, x: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        log_gate = torch.log_softmax(self.log_density(params, self.codes(params, x))
                                     + torch.log(mixing.clamp_min(1e-30)).unsqueeze(1), dim=2)  # [G, B, K]
        log_classes = torch.log_softmax(class_logits(params, x), dim=-1)  # [G, K, B, C]
        return torch.logsumexp(log_gate.transpose(1, 2).unsqueeze(3) + log_classes, dim=1).exp()

    def upload_weights(self, weights: torch.Tensor, batch: Batch) -> torch.Tensor:
        return torch.cat([weights.sum(1), batch.counts.to(weights.dtype)[:, None]], dim=1)

    def _loss(self, start: torch.Tensor, batch: Batch, weights: torch.Tensor):
        rows = torch.arange(len(weights), device=weights.device)[:, None]

        def loss(matrix: torch.Tensor, index: torch.Tensor, batch_mask: torch.Tensor) -> torch.Tensor:
            params = self.unflatten(matrix)
            x = batch.x[rows, index]
            nll = sample_nll(class_logits(params, x), batch.y[rows, index])  # [G, K, B]
            w = (weights[rows, index] * batch_mask.unsqueeze(2)).permute(0, 2, 1).contiguous()
            classifiers = (w * nll).sum(2) / w.sum(2).clamp_min(1e-8)
            reconstruction = F.binary_cross_entropy_with_logits(
                self.reconstruction_logits(params, self.codes(params, x)), x, reduction="none").sum(2)
            real = batch_mask.to(reconstruction.dtype)
            autoencoder = (reconstruction * real).sum(1) / real.sum(1).clamp_min(1)
            return torch.cat([classifiers, autoencoder.unsqueeze(1)], dim=1)  # the Gaussians' gradient is 0

        return loss

    def uploads(self, deltas: np.ndarray, weights: np.ndarray, clients: list[ClientData],
                states: list[dict[str, np.ndarray]], trained: torch.Tensor, metrics: list[dict[str, np.ndarray]],
                params: Params, batch: Batch, resp: torch.Tensor) -> list[ClientUpload]:
        # The Gaussians' closed-form M-step: the client's r-weighted code moments, sent as deltas
        # so that the server's mass-weighted mean of them is the pooled estimate.
        with torch.no_grad():
            codes = self.codes(params, batch.x).double()  # [G, N, Z]
            r = (resp * batch.mask.unsqueeze(2)).double()  # [G, N, K]
            mass = r.sum(1).clamp_min(1e-12).unsqueeze(2)
            mean = torch.einsum("gnk,gnz->gkz", r, codes) / mass
            moment = torch.einsum("gnk,gnz->gkz", r, codes.pow(2)) / mass
        k, c, z = self.models, self.classifier_size, self.code
        deltas[:, :k, c:c + z] = (mean - params["gmm_mean"].double()).cpu().numpy()
        deltas[:, :k, c + z:c + 2 * z] = (moment - params["gmm_moment"].double()).cpu().numpy()
        return super().uploads(deltas, weights, clients, states, trained, metrics, params, batch, resp)
