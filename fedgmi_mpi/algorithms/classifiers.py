"""The classifier baselines' shared engine: M stacked MLP classifiers and one round of them.

Every baseline (local, FedAvg, FedProx, IFCA, FedEM) trains M copies of the same classifier,
input -> hidden -> hidden -> classes with ReLU (64-128-128-10 on digits): exactly FedGMI's
classifier per component (its encoder trunk ``enc1``, ``enc2`` and head ``cls``), so a comparison
is about the method, not the model size. FedGMI's VAEs add the density model (``mu``, ``logvar``
and the decoder) on top of that trunk.

A baseline says only what differs (see ``ClassifierBaseline``'s hooks): how many models, which
model(s) each sample trains (responsibilities), how a client's upload is weighted, and how a
client mixes the models to predict. Rounds, cohorts, batching, metrics and aggregation (the
weighted mean of each model's deltas) are here. Where a metric does not apply (proportions of a
single model), it is NaN.
"""
from __future__ import annotations

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
from .base import Aggregated, Broadcast, ClientUpload, ModelLayout, Summed, UploadLayout, no_upload, pack
from .common import Batch, GroupAlgorithmBase, client_generators

EVAL_PROPORTION_ITERATIONS = 1000


def classifier_layout(models: int, input_dim: int, hidden: int, num_classes: int) -> StackedLayout:
    return StackedLayout([("enc1", input_dim, hidden), ("enc2", hidden, hidden), ("cls", hidden, num_classes)], models)


def class_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """x [G, B, D] -> logits [G, M, B, C] of every model of every client (batched matmuls)."""
    models = params["enc1_w"].shape[1]
    h = F.relu(vae._linear(params, "enc1", x.unsqueeze(1).expand(-1, models, -1, -1)))
    h = F.relu(vae._linear(params, "enc2", h))
    return vae._linear(params, "cls", h)


def sample_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of labels y [G, B] under logits [G, M, B, C] -> [G, M, B]."""
    labels = y.unsqueeze(1).expand(-1, logits.shape[1], -1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").reshape(labels.shape)


@dataclass
class ServerState:
    params: np.ndarray  # float32 [M, P]
    round: int = 0
    train_round: int = 0
    last_eval_train_round: int = -1


class ClassifierBaseline(GroupAlgorithmBase):
    name = "classifier"
    model_kind = "classifiers"  # rows: M classifiers (enc1, enc2, cls)
    reads_truth = False
    # A model's loss is its responsibility-weighted mean over the batch (each model takes steps of
    # the same size whatever its mass); False: the weighted sum over the batch size (FedEM's).
    loss_per_mass = True

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu"):
        super().__init__(config, scenario, device)
        self.models = self.num_models(scenario)
        self.layout = classifier_layout(self.models, scenario.input_dim, config.model.hidden, scenario.num_classes)

    # ---- what a baseline says ------------------------------------------------------------
    def num_models(self, scenario: Scenario) -> int:
        return 1

    def responsibilities(self, params: Params, nll: torch.Tensor | None, batch: Batch, states: list[dict[str, np.ndarray]],
                         training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """From per-sample losses nll [G, M, N]: (mixing [G, M], the client's proportions, and
        responsibilities [G, N, M], the weight of each sample in each model's loss).
        ``training`` False: an evaluation round (inference from scratch, states untouched)."""
        groups, samples = batch.mask.shape
        return torch.ones(groups, 1, device=self.device), torch.ones(groups, samples, 1, device=self.device)

    def upload_weights(self, weights: torch.Tensor, batch: Batch) -> torch.Tensor:
        """[G, M] weight of each model's delta in the server's mean; default: the responsibility
        mass (samples that trained the model). weights [G, N, M] is zero on padding."""
        return em.ordered_sum(weights, 1)

    def predict(self, params: Params, x: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        """p(y|x) [G, B, C] a client predicts with: sum_m mixing_m p_m(y|x) (fixed mixing)."""
        return torch.einsum("gm,gmbc->gbc", mixing.to(torch.float32), torch.softmax(class_logits(params, x), dim=-1))

    def unflatten(self, matrix: torch.Tensor) -> Params:
        return self.layout.unflatten(matrix)

    def start(self, broadcast: Broadcast, states: list[dict[str, np.ndarray]]) -> torch.Tensor:
        """[G, M, P] the parameters each client starts from: the global model."""
        model = torch.as_tensor(broadcast.model, device=self.device)
        return model.expand(len(states), *model.shape)

    def uploads(self, deltas: np.ndarray, weights: np.ndarray, clients: list[ClientData],
                states: list[dict[str, np.ndarray]], trained: torch.Tensor, metrics: list[dict[str, np.ndarray]],
                params: Params, batch: Batch, resp: torch.Tensor) -> list[ClientUpload]:
        """What each client sends; ``params`` are the ones it started from, ``resp`` its E-step's."""
        return [ClientUpload(delta=deltas[g], weights=weights[g], statistics=np.zeros(0), metrics=metrics[g])
                if client.seen else no_upload(metrics[g]) for g, client in enumerate(clients)]

    # ---- declarations -------------------------------------------------------------------
    def metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        k = self.num_components
        per_round = {"proportions": (k,), "log_likelihood": (k,), "accuracy": (), "confusion": (k, k)}
        return {"train": dict(per_round), "evaluate": dict(per_round)}

    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"train": {"aggregation_weight": (self.models,)}, "evaluate": {}}

    def model_layout(self) -> ModelLayout:
        return ModelLayout(rows=self.models, row_size=self.layout.per_component, segments=tuple(self.layout.sizes),
                           control_bytes=0)

    def initial_model(self) -> np.ndarray:
        return self.layout.init_matrix(rngs.torch_generator(self.seed, rngs.SERVER, 0)).numpy()

    def memory_per_client(self) -> int:
        """Peak bytes a client adds to a group: activations of every model over its padded samples."""
        return 4 * 4 * self.models * max(self.max_train, self.max_test) * (2 * self.layout.layers[0][2] + 64)

    def client_state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"proportions": (self.models,)}

    def init_client(self, client: ClientData) -> dict[str, np.ndarray]:
        return {"proportions": np.full(self.models, 1.0 / self.models)}

    # ---- server -------------------------------------------------------------------------
    def init_server(self) -> ServerState:
        return ServerState(params=self.initial_model())

    def configure(self, state: ServerState) -> Broadcast | None:
        phase = self.plan.next_phase(state.train_round, state.last_eval_train_round)
        if phase is None:
            return None
        if phase == "evaluate":
            return self.plan.evaluation(state.round, state.params)
        return Broadcast("train", state.round, pack([]), model=state.params, cohort=self.plan.cohort(state.train_round))

    def upload_layout(self, broadcast: Broadcast) -> UploadLayout:
        if broadcast.phase == "train":
            return UploadLayout(self.models, self.layout.per_component, 0)
        return UploadLayout(0, 0, 0)

    def aggregate(self, state: ServerState, broadcast: Broadcast, summed: Summed) -> Aggregated:
        state.round += 1
        if broadcast.phase != "train":
            state.last_eval_train_round = state.train_round
            return Aggregated(state, {})
        weight = summed.weights
        if not summed.weighted_delta.size:  # nothing came up (local training)
            state.train_round += 1
            return Aggregated(state, {"aggregation_weight": np.zeros(self.models)})
        update = np.zeros_like(summed.weighted_delta)
        update[weight > 0] = summed.weighted_delta[weight > 0] / weight[weight > 0, None]
        state.params = (state.params.astype(np.float64) + update).astype(np.float32)
        state.train_round += 1
        return Aggregated(state, {"aggregation_weight": weight})

    # ---- client -------------------------------------------------------------------------
    def group_update(self, broadcast: Broadcast, clients: list[ClientData],
                     states: list[dict[str, np.ndarray]]) -> list[ClientUpload]:
        training = broadcast.phase == "train"
        purpose = rngs.CLIENT_TRAIN if training else rngs.CLIENT_EVAL
        generators = client_generators(self.seed, clients, purpose, broadcast.round, self.device)
        batch = Batch.of(clients, self.max_train, self.max_test, self.device)
        start = self.start(broadcast, states)
        params = self.unflatten(start)
        with torch.no_grad():
            # [G, M, N] per-sample losses; a single model needs none (nothing to choose between)
            nll = sample_nll(class_logits(params, batch.x), batch.y) if self.models > 1 else None
            mixing, resp = self.responsibilities(params, nll, batch, states, training)
            metrics = self._metrics(clients, batch, params, nll, mixing, resp)
        if not training:
            return [no_upload(m) for m in metrics]
        for state, value in zip(states, mixing.double().cpu().numpy()):
            state["proportions"][:] = value
        weights = resp * batch.mask.unsqueeze(2)
        trained = em.local_training(start, batch.counts, self.max_train, self.cfg.local_epochs, self.cfg.batch_size,
                                    self.cfg.lr, generators, self._loss(start, batch, weights), self.cfg.optimizer,
                                    self.cfg.shuffle)
        deltas = (trained - start).cpu().numpy()
        upload_weights = self.upload_weights(weights, batch).double().cpu().numpy()
        return self.uploads(deltas, upload_weights, clients, states, trained, metrics, params, batch, resp)

    def prox_mu(self) -> float:
        return 0.0

    def _loss(self, start: torch.Tensor, batch: Batch, weights: torch.Tensor):
        rows = torch.arange(len(weights), device=weights.device)[:, None]
        mu = self.prox_mu()

        def loss(matrix: torch.Tensor, index: torch.Tensor, batch_mask: torch.Tensor) -> torch.Tensor:
            nll = sample_nll(class_logits(self.unflatten(matrix), batch.x[rows, index]), batch.y[rows, index])
            w = (weights[rows, index] * batch_mask.unsqueeze(2)).permute(0, 2, 1).contiguous()  # [G, M, B]
            norm = em.ordered_sum(w, 2) if self.loss_per_mass else batch_mask.sum(1, keepdim=True).to(w.dtype)
            per_model = em.ordered_sum(w * nll, 2) / norm.clamp_min(1e-8)
            if mu:  # FedProx: stay near the model the round started from
                per_model = per_model + 0.5 * mu * em.ordered_sum((matrix - start).pow(2), 2)
            return per_model

        return loss

    def _metrics(self, clients: list[ClientData], batch: Batch, params: Params, nll: torch.Tensor | None,
                 mixing: torch.Tensor, resp: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Personalised test accuracy (``predict``); proportions, per-model mean
        log p_m(y|x) and the assignment confusion where the models are the K components."""
        probabilities = self.predict(params, batch.x_test, mixing)
        correct = ((probabilities.argmax(2) == batch.y_test) & batch.test_mask).sum(1).double()
        accuracy = (correct / batch.test_counts.double()).cpu().numpy()
        k = self.num_components
        as_components = self.models == k
        mean_ll = None if nll is None else (-em.masked_mean(nll.transpose(1, 2), batch.mask)).double().cpu().numpy()
        proportions = mixing.double().cpu().numpy()
        assigned = resp.argmax(2).cpu().numpy()
        out = []
        for g, client in enumerate(clients):
            confusion = np.full((k, k), np.nan)
            if as_components:
                confusion[:] = 0.0
                if client.true_components_train is not None:  # scoring only: never feeds back into training
                    np.add.at(confusion, (client.true_components_train, assigned[g, : client.num_train]), 1.0)
            out.append({"proportions": proportions[g] if as_components else np.full(k, np.nan),
                        "log_likelihood": mean_ll[g] if as_components and mean_ll is not None else np.full(k, np.nan),
                        "accuracy": np.array(accuracy[g]), "confusion": confusion})
        return out
