"""FedGMM (Wu et al., ICML 2023) in its essentials: a Gaussian mixture on the codes of a federated
autoencoder is the density model of x, paired with K classifiers.

Joint model of a client's sample: p(x, y) = sum_k pi_ck N(e(x); mu_k, diag var_k) p_k(y|x), with
e the autoencoder's encoder (one shared autoencoder, trained on every sample's reconstruction).
Client round: E-step r_ik ∝ pi_ck N(e(x_i); mu_k, var_k) p_k(y_i|x_i), pi_c = mean_i r_i; the
classifiers train on the r-weighted loss and the autoencoder on reconstruction; the Gaussians'
M-step is closed form: clients send their sufficient statistics (sum_i r_ik, sum_i r_ik e(x_i),
sum_i r_ik e(x_i)^2) as exact statistics beside the model rows, never through a lossy codec, and
the server pools them. Server: classifier k averaged with weight sum_i r_ik (FedGMM's n_t pi_tk),
the autoencoder with weight n_t; the Gaussians travel down in the broadcast's control payload.
Prediction gated by the input, all in log space:
p(y|x) = sum_k softmax_k(log pi_k + log N(e(x); mu_k, var_k)) p_k(y|x). (The reference code adds a
probability to a log-probability there; here every term is a log until one final exp.)
Evaluation and unseen clients: EM on pi from uniform with the code likelihoods alone.

Model rows: K classifier rows and one [autoencoder | zeros] row, as long as a classifier (a dense
upload carries the padding: 4 bytes a zero)."""
from __future__ import annotations

import math
from dataclasses import dataclass

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
from .base import Aggregated, Summed
from .classifiers import EVAL_PROPORTION_ITERATIONS, ClassifierBaseline, ServerState, class_logits, sample_nll
from .common import Batch

VARIANCE_FLOOR = 1e-3
# Rounds whose responsibilities come from a fixed random split of code space instead of the
# mixture: a Gaussian mixture started from random means lets the component nearest the codes take
# every sample while the others starve (measured: all clients on one component); the split spreads
# the first means over the data.
SPREAD_ROUNDS = 5


@dataclass
class GMMServerState(ServerState):
    gmm_mean: np.ndarray | None = None  # [K, Z]
    gmm_moment: np.ndarray | None = None  # [K, Z] second moments; variance = moment - mean^2


class FedGMM(ClassifierBaseline):
    name = "fedgmm"
    # rows 0..K-1: classifiers; row K: the autoencoder; the Gaussians travel in the control payload
    model_kind = "fedgmm"

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu"):
        super().__init__(config, scenario, device)
        d, h, z = scenario.input_dim, config.model.hidden, config.model.latent
        self.code = z
        self.autoencoder = StackedLayout([("ae1", d, h), ("ae2", h, z), ("ad1", z, h), ("ad2", h, d)], 1)
        self.classifier_size = self.layout.per_component
        self.row_size = max(self.classifier_size, self.autoencoder.per_component)
        # set per round from the broadcast: the spread flag and the Gaussians [K, Z]
        self.spreading = False
        self.gaussians: tuple[torch.Tensor, torch.Tensor] | None = None

    def model_description(self) -> dict:
        description = super().model_description()
        description["autoencoder_layers"] = [list(layer) for layer in self.autoencoder.layers]
        description["control"] = "[spreading flag, Gaussian means K x latent, second moments K x latent] (base.pack)"
        return description

    def _control(self, spreading: bool, mean: np.ndarray, moment: np.ndarray) -> np.ndarray:
        return pack([np.array([float(spreading)]), mean, moment])

    def num_models(self, scenario: Scenario) -> int:
        return scenario.num_components

    # ---- the model -----------------------------------------------------------------------
    def model_layout(self) -> ModelLayout:
        segments = tuple(self.layout.sizes) + ((self.row_size - self.classifier_size,)
                                               if self.row_size > self.classifier_size else ())
        zeros = np.zeros((self.models, self.code))
        return ModelLayout(rows=self.models + 1, row_size=self.row_size, segments=segments,
                           control_bytes=4 * self._control(True, zeros, zeros).size, statistics=self._statistics())

    def _statistics(self) -> int:
        return self.models * (1 + 2 * self.code)  # per component: mass, sum of codes, sum of squares

    def upload_layout(self, broadcast: Broadcast) -> UploadLayout:
        if broadcast.phase == "train":
            return UploadLayout(self.models + 1, self.row_size, self._statistics())
        return UploadLayout(0, 0, 0)

    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"train": {"aggregation_weight": (self.models + 1,)}, "evaluate": {}}

    def initial_model(self) -> np.ndarray:
        generator = rngs.torch_generator(self.seed, rngs.SERVER, 0)
        matrix = torch.zeros(self.models + 1, self.row_size)
        matrix[: self.models, : self.classifier_size] = self.layout.init_matrix(generator)
        matrix[self.models, : self.autoencoder.per_component] = self.autoencoder.init_matrix(generator)[0]
        return matrix.numpy()

    def init_server(self) -> GMMServerState:
        mean = 0.5 * rngs.numpy_rng(self.seed, rngs.SERVER, 1).standard_normal((self.models, self.code))
        return GMMServerState(params=self.initial_model(), gmm_mean=mean, gmm_moment=mean**2 + 1.0)  # unit variances

    def configure(self, state: GMMServerState) -> Broadcast | None:
        broadcast = super().configure(state)
        if broadcast is not None:
            spreading = broadcast.phase == "train" and state.train_round < SPREAD_ROUNDS
            broadcast.payload = self._control(spreading, state.gmm_mean, state.gmm_moment)
        return broadcast

    def aggregate(self, state: GMMServerState, broadcast: Broadcast, summed: Summed) -> Aggregated:
        if broadcast.phase == "train":  # the Gaussians' pooled closed-form M-step
            k, z = self.models, self.code
            mass = summed.statistics[:k]
            sums = summed.statistics[k:].reshape(2, k, z)
            held = mass > 0
            state.gmm_mean[held] = sums[0][held] / mass[held, None]
            state.gmm_moment[held] = sums[1][held] / mass[held, None]
        return super().aggregate(state, broadcast, summed)

    def unflatten(self, matrix: torch.Tensor) -> Params:
        """The classifiers and the autoencoder from the rows, the Gaussians from this round's
        broadcast (``group_update`` reads them first)."""
        k, c = self.models, self.classifier_size
        params = self.layout.unflatten(matrix[:, :k, :c])
        mean, moment = self.gaussians
        params["gmm_mean"] = mean.expand(len(matrix), *mean.shape)
        params["gmm_moment"] = moment.expand(len(matrix), *moment.shape)
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
    def group_update(self, broadcast: Broadcast, clients: list[ClientData],
                     states: list[dict[str, np.ndarray]]) -> list[ClientUpload]:
        control, mean, moment = unpack(broadcast.payload)
        self.spreading = bool(control[0])
        self.gaussians = (torch.as_tensor(mean, device=self.device), torch.as_tensor(moment, device=self.device))
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
        return torch.cat([em.ordered_sum(weights, 1), batch.counts.to(weights.dtype)[:, None]], dim=1)

    def _loss(self, start: torch.Tensor, batch: Batch, weights: torch.Tensor):
        rows = torch.arange(len(weights), device=weights.device)[:, None]

        def loss(matrix: torch.Tensor, index: torch.Tensor, batch_mask: torch.Tensor) -> torch.Tensor:
            params = self.unflatten(matrix)
            x = batch.x[rows, index]
            nll = sample_nll(class_logits(params, x), batch.y[rows, index])  # [G, K, B]
            w = (weights[rows, index] * batch_mask.unsqueeze(2)).permute(0, 2, 1).contiguous()
            classifiers = em.ordered_sum(w * nll, 2) / em.ordered_sum(w, 2).clamp_min(1e-8)
            reconstruction = F.binary_cross_entropy_with_logits(
                self.reconstruction_logits(params, self.codes(params, x)), x, reduction="none").sum(2)
            real = batch_mask.to(reconstruction.dtype)
            autoencoder = em.ordered_sum(reconstruction * real, 1) / real.sum(1).clamp_min(1)
            return torch.cat([classifiers, autoencoder.unsqueeze(1)], dim=1)  # the Gaussians' gradient is 0

        return loss

    def uploads(self, deltas: np.ndarray, weights: np.ndarray, clients: list[ClientData],
                states: list[dict[str, np.ndarray]], trained: torch.Tensor, metrics: list[dict[str, np.ndarray]],
                params: Params, batch: Batch, resp: torch.Tensor) -> list[ClientUpload]:
        # The Gaussians' sufficient statistics under the model the round started from, exact.
        with torch.no_grad():
            codes = self.codes(params, batch.x).double()  # [G, N, Z]
            r = (resp * batch.mask.unsqueeze(2)).double()  # [G, N, K]
            statistics = torch.cat([em.ordered_sum(r, 1), torch.einsum("gnk,gnz->gkz", r, codes).flatten(1),
                                    torch.einsum("gnk,gnz->gkz", r, codes.pow(2)).flatten(1)], dim=1).cpu().numpy()
        uploads = super().uploads(deltas, weights, clients, states, trained, metrics, params, batch, resp)
        for upload, row in zip(uploads, statistics):
            if upload.sends:
                upload.statistics = row
        return uploads
