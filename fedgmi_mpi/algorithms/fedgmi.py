"""FedGMI: K VAEs trained federatedly as density estimators of K inherent distributions.

Phases, each a sequence of communication rounds:

1. ``codebook`` - federated LBG vector quantisation of the samples (per-cluster sums only).
2. ``topics`` - federated topic model over the clients' codeword histograms; gives every client
   initial proportions W[c] and every sample initial responsibilities r_ik ∝ W[c,k] T[k, word(i)].
   (Cost: about 40 + 300 rounds of a few KB each; the histograms never leave the clients.)
3. ``train`` - the EM rounds. Client: E-step r_ik ∝ pi_ck p_k(x_i) [p_k(y_i|x_i)] with
   importance-weighted likelihoods, pi_c fitted by EM with the likelihoods fixed, then a local
   M-step on the responsibility-weighted ELBO + classifier loss from the global parameters; it
   uploads per-component parameter deltas weighted by its responsibility mass. Server: each
   component moves by the mass-weighted mean of the deltas. The first ``warmup_rounds`` train on
   the initial responsibilities instead of an E-step, so the VAEs learn the topic split before
   their (at first meaningless) likelihoods drive the E-step.
4. ``evaluate`` - inference only: importance-weighted likelihoods, proportions by E-steps alone
   from uniform (what an unseen client does), personalised prediction on test samples.

Clients with ``seen=False`` never upload anything: they only run E-steps on the global model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import rng as rngs
from ..config import Config
from ..models.vae import MixtureVAE, ParamLayout, VAEShape
from ..scenarios.base import ClientData, Scenario
from . import codebook, em, topics
from .base import Aggregated, Broadcast, ClientUpload, ModelLayout, Summed, UploadLayout, no_upload, pack, unpack

EVAL_PROPORTION_ITERATIONS = 1000


@dataclass
class ServerState:
    params: np.ndarray  # float32 [K, P], component-major
    phase: str = "codebook"
    round: int = 0  # communication rounds done, all phases
    codebook: codebook.CodebookState | None = None
    topics: np.ndarray | None = None  # [R, K, M]
    topic_iteration: int = 0
    topic_loglik: np.ndarray | None = None  # [R] at the last topics round
    best_restart: int = 0
    train_round: int = 0
    last_eval_train_round: int = -1
    collapsed: set[int] = field(default_factory=set)


@dataclass
class ClientState:
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    proportions: torch.Tensor  # pi_c [K]
    words: np.ndarray | None = None
    histogram: np.ndarray | None = None
    topic_weights: np.ndarray | None = None  # [R, K]
    initial_responsibilities: torch.Tensor | None = None


class FedGMI:
    name = "fedgmi"

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu"):
        self.config = config
        self.cfg = config.algorithm
        self.seed = config.seed
        self.device = torch.device(device)
        self.num_components = scenario.num_components
        self.input_dim = scenario.input_dim
        self.shape = VAEShape(scenario.num_components, scenario.input_dim, scenario.num_classes,
                              config.model.hidden, config.model.latent)
        self.model = MixtureVAE(self.shape, device=self.device)  # worker scratch copy, reloaded per client
        self.layout = ParamLayout(self.model)
        self.warmup_rounds = min(self.cfg.warmup_rounds, self.cfg.rounds) if self.cfg.init == "topics" else 0

    # ---- declarations -------------------------------------------------------------------
    def metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        k = self.num_components
        per_round = {
            "proportions": (k,),
            "log_likelihood": (k,),  # mean over the client's training samples, per component
            "accuracy": (),  # personalised test accuracy
            "confusion": (k, k),  # [true, learned] hard assignments (evaluation only; zeros without truth)
        }
        return {"codebook": {}, "topics": {}, "train": dict(per_round),
                "evaluate": dict(per_round, mixture_log_likelihood=())}

    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        k, r = self.num_components, self.cfg.topic_restarts
        return {
            "codebook": {"codebook_size": ()},
            "topics": {"topic_log_likelihood": (r,)},
            "train": {"responsibility_mass": (k,), "warmup": ()},
            "evaluate": {},
        }

    def model_layout(self) -> ModelLayout:
        k = self.num_components
        largest_control = pack([np.zeros(2), np.zeros((k, self.cfg.codebook_size))])  # warm-up: control + topics
        return ModelLayout(rows=k, row_size=self.layout.per_component, segments=tuple(self.layout.sizes),
                           control_bytes=4 * largest_control.size)

    def initial_model(self) -> np.ndarray:
        model = MixtureVAE(self.shape, generator=rngs.torch_generator(self.seed, rngs.SERVER, 0))
        return ParamLayout(model).to_matrix(model).numpy().astype(np.float32)

    # ---- server -------------------------------------------------------------------------
    def init_server(self) -> ServerState:
        params = self.initial_model()
        if self.cfg.init == "random":
            return ServerState(params=params, phase="train")
        return ServerState(
            params=params, phase="codebook",
            codebook=codebook.start(self.input_dim, self.cfg.codebook_size, self.cfg.codebook_lloyd_iterations),
        )

    def configure(self, state: ServerState) -> Broadcast | None:
        if state.phase == "codebook":
            return Broadcast("codebook", state.round, pack([state.codebook.centroids]))
        if state.phase == "topics":
            # Clients turn their samples into codewords once, in the first topics round, and keep
            # them: the (final) codebook travels only then.
            centroids = state.codebook.centroids if state.topic_iteration == 0 else np.zeros((0, 0))
            return Broadcast("topics", state.round, pack([centroids, state.topics]))
        due_eval = self.cfg.eval_every > 0 and state.train_round > 0 and state.train_round % self.cfg.eval_every == 0
        at_end = state.train_round >= self.cfg.rounds
        if (due_eval or at_end) and state.last_eval_train_round != state.train_round:
            return Broadcast("evaluate", state.round, pack([]), model=state.params, evaluation_only=True)
        if at_end:
            return None
        warmup = state.train_round < self.warmup_rounds
        control = np.array([float(warmup), float(state.best_restart)])
        # The initial responsibilities are computed once, in the first warm-up round: the topic
        # table travels only then.
        best_topics = state.topics[state.best_restart] if warmup and state.train_round == 0 else np.zeros((0, 0))
        return Broadcast("train", state.round, pack([control, best_topics]), model=state.params)

    def upload_layout(self, broadcast: Broadcast) -> UploadLayout:
        if broadcast.phase == "codebook":
            (centroids,) = unpack(broadcast.payload)
            m, d = centroids.shape
            return UploadLayout(0, 0, m + m * d + m)
        if broadcast.phase == "topics":
            _, topic_words = unpack(broadcast.payload)
            r, k, m = topic_words.shape
            return UploadLayout(0, 0, r * k * m + r)
        if broadcast.phase == "train":
            return UploadLayout(self.num_components, self.layout.per_component, 0)
        return UploadLayout(0, 0, 0)

    def aggregate(self, state: ServerState, broadcast: Broadcast, summed: Summed) -> Aggregated:
        state.round += 1
        server_rng = rngs.numpy_rng(self.seed, rngs.SERVER, broadcast.round)
        if broadcast.phase == "codebook":
            state.codebook = codebook.update(state.codebook, summed.statistics, server_rng)
            if state.codebook.done:
                state.phase = "topics"
                state.topics = topics.random_topics(self.cfg.topic_restarts, self.num_components,
                                                    len(state.codebook.centroids), server_rng)
            return Aggregated(state, {"codebook_size": np.array(len(state.codebook.centroids))})
        if broadcast.phase == "topics":
            r, k, m = state.topics.shape
            loglik = summed.statistics[r * k * m:]
            converged = state.topic_loglik is not None and np.all(
                np.abs(loglik - state.topic_loglik) <= 1e-7 * np.abs(loglik))
            state.topics = topics.server_step(summed.statistics[: r * k * m].reshape(r, k, m))
            state.topic_loglik = loglik
            state.topic_iteration += 1
            if converged or state.topic_iteration >= self.cfg.topic_iterations:
                state.best_restart = int(np.argmax(loglik))
                state.phase = "train"
            return Aggregated(state, {"topic_log_likelihood": loglik})
        if broadcast.phase == "train":
            mass = summed.weights
            has_mass = mass > 0
            update = np.zeros_like(summed.weighted_delta)
            update[has_mass] = summed.weighted_delta[has_mass] / mass[has_mass, None]
            state.params = (state.params.astype(np.float64) + update).astype(np.float32)
            events = self._check_collapse(state, mass)
            state.train_round += 1
            metrics = {"responsibility_mass": mass, "warmup": np.array(float(state.train_round <= self.warmup_rounds))}
            return Aggregated(state, metrics, events)
        state.last_eval_train_round = state.train_round
        return Aggregated(state, {})

    def _check_collapse(self, state: ServerState, mass: np.ndarray) -> list[str]:
        """A component whose share of the responsibility mass falls below collapse_fraction is dying:
        say so once when it happens and once if it recovers."""
        share = mass / max(mass.sum(), 1e-12)
        events = []
        for k in range(len(share)):
            if share[k] < self.cfg.collapse_fraction and k not in state.collapsed:
                state.collapsed.add(k)
                events.append(f"train round {state.train_round}: component {k} holds {share[k]:.4f} of the "
                              f"responsibility mass (< collapse_fraction {self.cfg.collapse_fraction}): collapsing")
            elif share[k] >= self.cfg.collapse_fraction and k in state.collapsed:
                state.collapsed.discard(k)
                events.append(f"train round {state.train_round}: component {k} recovered ({share[k]:.4f} of the mass)")
        return events

    # ---- client -------------------------------------------------------------------------
    def init_client(self, client: ClientData) -> ClientState:
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=self.device)

        k = self.num_components
        return ClientState(
            x=tensor(client.x_train.astype(np.float32)), y=tensor(client.y_train.astype(np.int64)),
            x_test=tensor(client.x_test.astype(np.float32)), y_test=tensor(client.y_test.astype(np.int64)),
            proportions=torch.full((k,), 1.0 / k, device=self.device),
        )

    def client_update(self, broadcast: Broadcast, client: ClientData, state: ClientState) -> ClientUpload:
        if broadcast.phase == "codebook":
            return self._codebook_update(broadcast, client, state)
        if broadcast.phase == "topics":
            return self._topics_update(broadcast, client, state)
        if broadcast.phase == "train":
            return self._train_update(broadcast, client, state)
        return self._evaluate(broadcast, client, state)

    def _codebook_update(self, broadcast: Broadcast, client: ClientData, state: ClientState) -> ClientUpload:
        if not client.seen:
            return no_upload()
        (centroids,) = unpack(broadcast.payload)
        stats = codebook.cluster_statistics(client.x_train.astype(np.float64), centroids.astype(np.float64))
        return ClientUpload(delta=None, weights=np.zeros(0), statistics=stats)

    def _topics_update(self, broadcast: Broadcast, client: ClientData, state: ClientState) -> ClientUpload:
        if not client.seen:
            return no_upload()
        centroids, topic_words = unpack(broadcast.payload)
        if state.words is None:  # the codebook is final once the topics phase starts
            if not centroids.size:
                raise RuntimeError(f"client {client.client_id} missed the first topics round, which carries the codebook")
            state.words = codebook.nearest(client.x_train.astype(np.float64), centroids.astype(np.float64))
            state.histogram = np.bincount(state.words, minlength=len(centroids)).astype(np.float64)
            state.topic_weights = np.full(topic_words.shape[:2], 1.0 / topic_words.shape[1])
        state.topic_weights, expected, loglik = topics.client_step(
            state.histogram, state.topic_weights, topic_words.astype(np.float64))
        return ClientUpload(delta=None, weights=np.zeros(0), statistics=np.concatenate([expected.ravel(), loglik]))

    def _likelihoods(self, x: torch.Tensor, samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        log_px, logits = self.model.iw_log_likelihood(x, samples, generator)
        return log_px.T, logits  # [N, K], [K, N, C]

    def _metrics(self, client: ClientData, state: ClientState, proportions: torch.Tensor, log_px: torch.Tensor,
                 responsibilities: torch.Tensor, test_samples: int, generator: torch.Generator) -> dict[str, np.ndarray]:
        test_log_px, test_logits = self._likelihoods(state.x_test, test_samples, generator)
        predicted = em.predict_proba(test_log_px, test_logits, proportions).argmax(1)
        k = self.num_components
        confusion = np.zeros((k, k))
        if client.true_components_train is not None:  # evaluation only: never feeds back into training
            np.add.at(confusion, (client.true_components_train, responsibilities.argmax(1).cpu().numpy()), 1.0)
        return {
            "proportions": proportions.cpu().numpy().astype(np.float64),
            "log_likelihood": log_px.mean(0).cpu().numpy().astype(np.float64),
            "accuracy": np.array((predicted == state.y_test).double().mean().item()),
            "confusion": confusion,
        }

    def _train_update(self, broadcast: Broadcast, client: ClientData, state: ClientState) -> ClientUpload:
        control, best_topics = unpack(broadcast.payload)
        warmup, best_restart = bool(control[0]), int(control[1])
        global_params = torch.as_tensor(broadcast.model, device=self.device)
        self.layout.load_matrix(self.model, global_params)
        generator = rngs.torch_generator(self.seed, rngs.CLIENT_TRAIN, client.client_id, broadcast.round, device=self.device)

        with torch.no_grad():
            log_px, logits = self._likelihoods(state.x, self.cfg.estep_samples, generator)
        if warmup and client.seen:
            if state.initial_responsibilities is None:
                if not best_topics.size:
                    raise RuntimeError(f"client {client.client_id} missed the first warm-up round, which carries the topics")
                weights = state.topic_weights[best_restart]
                state.initial_responsibilities = torch.as_tensor(
                    topics.initial_responsibilities(state.words, weights, best_topics.astype(np.float64)),
                    dtype=torch.float32, device=self.device)
            resp = state.initial_responsibilities
            state.proportions = resp.mean(0)
        else:
            estep_ll = log_px
            if self.cfg.estep_uses_labels:
                label_ll = torch.log_softmax(logits, -1).gather(2, state.y.view(1, -1, 1).expand(len(logits), -1, 1))
                estep_ll = log_px + label_ll.squeeze(2).T
            state.proportions, resp = em.fit_proportions(estep_ll, state.proportions, self.cfg.proportion_iterations)
        with torch.no_grad():
            metrics = self._metrics(client, state, state.proportions, log_px, resp, self.cfg.test_samples, generator)
        if not client.seen:
            return no_upload(metrics)

        em.local_m_step(self.model, state.x, state.y, resp, self.cfg.local_epochs, self.cfg.batch_size,
                        self.cfg.lr, self.cfg.label_weight, generator)
        delta = (self.layout.to_matrix(self.model) - global_params).cpu().numpy()
        mass = resp.sum(0).double().cpu().numpy()
        return ClientUpload(delta=delta, weights=mass, statistics=np.zeros(0), metrics=metrics)

    def _evaluate(self, broadcast: Broadcast, client: ClientData, state: ClientState) -> ClientUpload:
        self.layout.load_matrix(self.model, torch.as_tensor(broadcast.model, device=self.device))
        generator = rngs.torch_generator(self.seed, rngs.CLIENT_EVAL, client.client_id, broadcast.round, device=self.device)
        k = self.num_components
        with torch.no_grad():
            log_px, _ = self._likelihoods(state.x, self.cfg.eval_samples, generator)
            uniform = torch.full((k,), 1.0 / k, device=self.device)
            proportions, resp = em.fit_proportions(log_px, uniform, EVAL_PROPORTION_ITERATIONS)
            # Inference leaves the client's training proportions alone.
            metrics = self._metrics(client, state, proportions, log_px, resp, self.cfg.eval_samples, generator)
            metrics["mixture_log_likelihood"] = np.array(em.mixture_log_likelihood(log_px, proportions).mean().item())
        return no_upload(metrics)
