"""FedGMI: K VAEs trained federatedly as density estimators of K inherent distributions.

Phases, each a sequence of communication rounds:

1. ``codebook`` - federated LBG vector quantisation of the samples (per-cluster sums only).
2. ``topics`` - federated topic model over the clients' codeword histograms; gives every client
   initial proportions W[c] and every sample initial responsibilities r_ik ∝ W[c,k] T[k, word(i)].
   (Cost: about 40 + 300 rounds of a few KB each; the histograms never leave the clients.)
3. ``train`` - the EM rounds. Client: E-step r_ik ∝ pi_ck p_k(x_i) [p_k(y_i|x_i)] with
   importance-weighted likelihoods, pi_c fitted by EM with the likelihoods fixed, then a local
   M-step on the responsibility-weighted bound + classifier loss from the global parameters; it
   uploads per-component parameter deltas weighted by sum_i w_ik^aggregation_power (its
   responsibility mass at power 1). Server: each component moves by the weighted mean of the
   deltas. The first ``warmup_rounds`` train on the initial responsibilities instead of an
   E-step, so the VAEs learn the topic split before their (at first meaningless) likelihoods
   drive the E-step.
4. ``evaluate`` - inference only: importance-weighted likelihoods, proportions by E-steps alone
   from uniform (what an unseen client does), personalised prediction on test samples.

Clients with ``seen=False`` never upload anything: they only run E-steps on the global model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import rng as rngs
from ..config import Config
from ..models import density_model, vae
from ..scenarios.base import ClientData, Scenario
from . import codebook, em, topics
from .common import Batch, GroupAlgorithmBase, client_generators
from .base import Aggregated, Broadcast, ClientUpload, ModelLayout, Summed, UploadLayout, no_upload, pack, unpack

EVAL_PROPORTION_ITERATIONS = 1000
# Components whose proportions rise and fall together across clients (correlation above this)
# look like parts of one inherent distribution: distinct ones are anti-correlated, since a
# client's proportions sum to 1 (about -1/(K-1) for Dirichlet draws).
MERGE_CORRELATION = 0.5


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
    groups: tuple[tuple[int, ...], ...] = ()  # components that move together, as last reported


class FedGMI(GroupAlgorithmBase):
    name = "fedgmi"
    # K VAEs with classifier heads (models/: MLP or conv, Bernoulli or Gaussian): ``fedgmi infer`` rebuilds it
    model_kind = "vae_mixture"

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu",
                 num_components: int | None = None):
        super().__init__(config, scenario, device, num_components)
        self.model = density_model(config.model, scenario.input_dim, scenario.num_classes, self.num_components,
                                   scenario.metadata.get("image_shape"))
        self.shape, self.layout = self.model.shape, self.model.layout
        # where the scenario knows the exact densities, evaluation rounds log every sample's
        # responsibilities so they can be compared with the exact ones
        self.log_responsibilities = scenario.has_exact_densities
        self.warmup_rounds = min(self.cfg.warmup_rounds, self.cfg.rounds) if self.cfg.init == "topics" else 0
        # This rank's memory of broadcasts its clients keep: the codebook (sent in the first topics
        # round, which every seen client takes part in) and each client's codewords, recomputed
        # from it wherever the client runs.
        self.codebook: np.ndarray | None = None
        self.words: dict[int, np.ndarray] = {}

    # ---- declarations -------------------------------------------------------------------
    def metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        k = self.num_components
        per_round = {
            "proportions": (k,),
            "log_likelihood": (k,),  # mean over the client's training samples, per component
            "accuracy": (),  # personalised test accuracy
            "confusion": (self.true_components, k),  # [true, learned] hard assignments (evaluation only; zeros without truth)
            # held out: on the client's test samples, each component's log p_k(x) averaged with the
            # weights r_ik it claims (sum_i r_ik beside it, to pool over clients), and the mixture's
            "heldout_log_likelihood": (k,),
            "heldout_mass": (k,),
            "heldout_mixture_log_likelihood": (),
        }
        # evaluation only: proportions and assignments of the client's test samples by the E-step
        # alone, from uniform: scored on samples no model trained on (the training samples' scores
        # also reward a model for having memorised them, and the oracle memorised their truth)
        evaluate = dict(per_round, mixture_log_likelihood=(), heldout_proportions=(k,),
                        heldout_confusion=(self.true_components, k))
        if self.log_responsibilities:
            evaluate["responsibilities"] = (self.max_train, k)
        return {"codebook": {}, "topics": {}, "train": dict(per_round), "evaluate": evaluate}

    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        k, r = self.num_components, self.cfg.topic_restarts
        return {
            "codebook": {"codebook_size": ()},
            "topics": {"topic_log_likelihood": (r,)},
            "train": {"responsibility_mass": (k,), "warmup": ()},
            "evaluate": {"component_group": (k,)},  # the smallest component of each one's group (itself: alone)
        }

    def model_layout(self) -> ModelLayout:
        k = self.num_components
        largest_control = pack([np.zeros(3), np.zeros((k, self.cfg.codebook_size))])  # warm-up: control + topics
        return ModelLayout(rows=k, row_size=self.layout.per_component, segments=tuple(self.layout.sizes),
                           control_bytes=4 * largest_control.size)

    def initial_model(self) -> np.ndarray:
        return self.model.init_matrix(rngs.torch_generator(self.seed, rngs.SERVER, 0)).numpy()

    def memory_per_client(self) -> int:
        """Peak bytes a client adds to a group: the decoder's activations for one chunk of
        importance samples over its padded samples, with room for temporaries."""
        return self.model.memory_per_sample() * max(self.max_train, self.max_test)

    def model_description(self) -> dict:
        return {**super().model_description(), **self.model.description()}

    def client_state_spec(self) -> dict[str, tuple[int, ...]]:
        """What a client keeps between its rounds (everything else is its data or recomputed)."""
        k = self.num_components
        return {"proportions": (k,), "topic_weights": (self.cfg.topic_restarts, k)}

    def init_client(self, client: ClientData) -> dict[str, np.ndarray]:
        k = self.num_components
        return {"proportions": np.full(k, np.float32(1.0 / k)),
                "topic_weights": np.full((self.cfg.topic_restarts, k), 1.0 / k)}

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
        # The initialisation involves every seen client; unseen clients only ever run inference.
        if state.phase == "codebook":
            return Broadcast("codebook", state.round, pack([state.codebook.centroids]), cohort=self.plan.seen)
        if state.phase == "topics":
            # Clients turn their samples into codewords once, in the first topics round, and keep
            # them: the (final) codebook travels only then.
            centroids = state.codebook.centroids if state.topic_iteration == 0 else np.zeros((0, 0))
            return Broadcast("topics", state.round, pack([centroids, state.topics]), cohort=self.plan.seen)
        phase = self.plan.next_phase(state.train_round, state.last_eval_train_round)
        if phase is None:
            return None
        if phase == "evaluate":
            return self.plan.evaluation(state.round, state.params)
        warmup = state.train_round < self.warmup_rounds
        control = np.array([float(warmup), float(state.best_restart), self._tempering(state.train_round)])
        # A client computes its initial responsibilities in its first warm-up round, which with
        # cohorts may be any of them: the topic table travels in every warm-up round.
        best_topics = state.topics[state.best_restart] if warmup else np.zeros((0, 0))
        return Broadcast("train", state.round, pack([control, best_topics]), model=state.params,
                         cohort=self.plan.cohort(state.train_round))

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
            # with aggregation_power != 1 the responsibility mass travels beside the aggregation weights
            plain_mass = self.num_components if self.cfg.aggregation_power != 1 else 0
            return UploadLayout(self.num_components, self.layout.per_component, plain_mass)
        k = self.num_components
        return UploadLayout(0, 0, k + k * k + 1)  # evaluation: sums of pi_c, pi_c pi_c^T and clients

    def _tempering(self, train_round: int) -> float:
        """beta of the M-step's weights this round: mstep_tempering for the first
        mstep_tempering_rounds E-step rounds (all of them with -1), then 1."""
        tempered = self.cfg.mstep_tempering_rounds
        if tempered == -1 or train_round - self.warmup_rounds < tempered:
            return float(np.float32(self.cfg.mstep_tempering))
        return 1.0

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
            weight = summed.weights  # sum over clients of em.aggregation_mass
            has_weight = weight > 0
            update = np.zeros_like(summed.weighted_delta)
            update[has_weight] = summed.weighted_delta[has_weight] / weight[has_weight, None]
            state.params = (state.params.astype(np.float64) + update).astype(np.float32)
            mass = summed.statistics if len(summed.statistics) else weight
            events = self._check_collapse(state, mass)
            state.train_round += 1
            metrics = {"responsibility_mass": mass, "warmup": np.array(float(state.train_round <= self.warmup_rounds))}
            return Aggregated(state, metrics, events)
        state.last_eval_train_round = state.train_round
        groups, correlation = moving_together(summed.statistics, self.num_components)
        events = []
        if groups != state.groups:
            for group in groups:
                if len(group) > 1 and group not in state.groups:
                    least = min(correlation[a, b] for a in group for b in group if a < b)
                    events.append(f"evaluation at train round {state.train_round}: components "
                                  f"{', '.join(map(str, group))} move together across clients (correlation of their "
                                  f"proportions >= {least:.2f}): probably one inherent distribution in parts; "
                                  "add their proportions")
            state.groups = groups
        group_of = {c: group[0] for group in groups for c in group}  # groups are sorted: [0] is the smallest
        labels = np.array([group_of[c] for c in range(self.num_components)], dtype=np.float64)
        return Aggregated(state, {"component_group": labels}, events)

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
    def observe(self, broadcast: Broadcast) -> None:
        """Every rank sees every broadcast: keep the codebook, which travels once."""
        if broadcast.phase == "topics":
            centroids, _ = unpack(broadcast.payload)
            if centroids.size:
                self.codebook = centroids.astype(np.float64)
                self.words.clear()

    def observed_state(self) -> dict[str, np.ndarray]:
        """What ``observe`` kept, for a checkpoint (the words are recomputed from it)."""
        return {} if self.codebook is None else {"codebook": self.codebook}

    def restore_observed(self, observed: dict[str, np.ndarray]) -> None:
        self.codebook = np.asarray(observed["codebook"], dtype=np.float64)
        self.words.clear()

    def group_update(self, broadcast: Broadcast, clients: list[ClientData],
                     states: list[dict[str, np.ndarray]]) -> list[ClientUpload]:
        """The training and evaluation rounds of a group run as one batched computation; the
        initialisation rounds are a few array operations per client."""
        if broadcast.phase == "codebook":
            return [self._codebook_update(broadcast, client) for client in clients]
        if broadcast.phase == "topics":
            return [self._topics_update(broadcast, client, state) for client, state in zip(clients, states)]
        if broadcast.phase == "train":
            return self._train_group(broadcast, clients, states)
        return self._evaluate_group(broadcast, clients)

    def _codebook_update(self, broadcast: Broadcast, client: ClientData) -> ClientUpload:
        if not client.seen:
            return no_upload()
        (centroids,) = unpack(broadcast.payload)
        stats = codebook.cluster_statistics(client.x_train.astype(np.float64), centroids.astype(np.float64))
        return ClientUpload(delta=None, weights=np.zeros(0), statistics=stats)

    def _words(self, client: ClientData) -> np.ndarray:
        if client.client_id not in self.words:
            if self.codebook is None:
                raise RuntimeError(f"client {client.client_id}: no codebook on this rank (the first topics round carries it)")
            self.words[client.client_id] = codebook.nearest(client.x_train.astype(np.float64), self.codebook)
        return self.words[client.client_id]

    def _topics_update(self, broadcast: Broadcast, client: ClientData, state: dict[str, np.ndarray]) -> ClientUpload:
        if not client.seen:
            return no_upload()
        _, topic_words = unpack(broadcast.payload)
        histogram = np.bincount(self._words(client), minlength=topic_words.shape[2]).astype(np.float64)
        state["topic_weights"][:], expected, loglik = topics.client_step(
            histogram, state["topic_weights"], topic_words.astype(np.float64))
        return ClientUpload(delta=None, weights=np.zeros(0), statistics=np.concatenate([expected.ravel(), loglik]))

    def _batch(self, clients: list[ClientData]) -> Batch:
        return Batch.of(clients, self.max_train, self.max_test, self.device)

    def _generators(self, clients: list[ClientData], purpose: int, round_index: int) -> list[torch.Generator]:
        return client_generators(self.seed, clients, purpose, round_index, self.device)

    def _mstep_objective(self) -> Callable:
        """The bound each component's M-step maximises: the one-sample ELBO, or with
        ``mstep_samples`` > 1 the importance-weighted bound (a tighter density model)."""
        return self.model.elbo if self.cfg.mstep_samples == 1 else self.model.iw_bound

    def _noise(self, generators: list[torch.Generator], samples: int, counts: list[int], padded: int) -> torch.Tensor:
        k, z = self.num_components, self.shape.latent
        return em.stacked_normal(generators, [(samples, k, n, z) for n in counts], (samples, k, padded, z), axis=2)

    def _metrics(self, clients: list[ClientData], batch: Batch, params: vae.Params, proportions: torch.Tensor,
                 log_likelihood: torch.Tensor, resp: torch.Tensor, test_samples: int,
                 generators: list[torch.Generator], heldout: bool = False) -> list[dict[str, np.ndarray]]:
        """Per-client metrics; ``heldout`` (evaluation rounds) adds the test samples' own E-step."""
        noise = self._noise(generators, test_samples, batch.test_counts.tolist(), self.max_test)
        test_log_px, test_logits = self.model.iw_log_likelihood(params, batch.x_test, noise)
        test_ll = test_log_px.transpose(1, 2)  # [G, Ntest, K]
        gate = em.responsibilities(test_ll, proportions)  # the prediction's gate and the held-out weights alike
        predicted = em.predict_proba(test_ll, test_logits, proportions, gate=gate).argmax(2)
        test_resp = gate * batch.test_mask.unsqueeze(2)
        heldout_mass = em.ordered_sum(test_resp, 1)
        heldout_ll = (em.ordered_sum(test_resp * test_ll, 1) / heldout_mass.clamp_min(1e-30)).double().cpu().numpy()
        heldout_mixture = em.masked_mean(em.mixture_log_likelihood(test_ll, proportions).unsqueeze(2),
                                         batch.test_mask)[:, 0].double().cpu().numpy()
        heldout_mass = heldout_mass.double().cpu().numpy()
        correct = ((predicted == batch.y_test) & batch.test_mask).sum(1).double() / batch.test_counts.double()
        mean_ll = em.masked_mean(log_likelihood, batch.mask).double().cpu().numpy()
        assigned = resp.argmax(2).cpu().numpy()
        proportions_np = proportions.double().cpu().numpy()
        correct = correct.cpu().numpy()
        k = self.num_components
        if heldout:
            uniform = torch.full((len(clients), k), 1.0 / k, device=self.device)
            test_proportions, test_own_resp = em.fit_proportions(test_ll, batch.test_mask, uniform,
                                                                 EVAL_PROPORTION_ITERATIONS)
            test_proportions_np = test_proportions.double().cpu().numpy()
            test_assigned = test_own_resp.argmax(2).cpu().numpy()
        out = []
        for g, client in enumerate(clients):
            metrics = {"proportions": proportions_np[g], "log_likelihood": mean_ll[g],
                       "accuracy": np.array(correct[g]),
                       "confusion": _confusion(client.true_components_train, assigned[g], self.true_components, k),
                       "heldout_log_likelihood": heldout_ll[g], "heldout_mass": heldout_mass[g],
                       "heldout_mixture_log_likelihood": np.array(heldout_mixture[g])}
            if heldout:
                metrics["heldout_proportions"] = test_proportions_np[g]
                metrics["heldout_confusion"] = _confusion(client.true_components_test, test_assigned[g],
                                                          self.true_components, k)
            out.append(metrics)
        return out

    def _training_responsibilities(self, clients: list[ClientData], states: list[dict[str, np.ndarray]], batch: Batch,
                                   log_likelihood: torch.Tensor, logits: torch.Tensor, warmup: bool,
                                   best_restart: int, best_topics: np.ndarray,
                                   tempering: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(proportions [G, K], responsibilities [G, N, K], the M-step's weights [G, N, K]) of a
        training round: the topic model's during warm-up, then the E-step's; the weights are
        w ∝ pi^mstep_prior_power p^tempering (em.mstep_weights; the proportions stay maximum likelihood)."""
        if warmup:
            resp = torch.zeros_like(log_likelihood)
            for g, (client, state) in enumerate(zip(clients, states)):
                resp[g, : client.num_train] = torch.as_tensor(topics.initial_responsibilities(
                    self._words(client), state["topic_weights"][best_restart], best_topics.astype(np.float64)))
            return em.masked_mean(resp, batch.mask), resp, resp
        estep_ll = em.with_labels(log_likelihood, logits, batch.y) if self.cfg.estep_uses_labels else log_likelihood
        prior = torch.as_tensor(np.stack([s["proportions"] for s in states]), dtype=torch.float32, device=self.device)
        proportions, resp = em.fit_proportions(estep_ll, batch.mask, prior, self.cfg.proportion_iterations)
        prior_power = self.cfg.mstep_prior_power
        if tempering == 1 and prior_power == 1:  # plain EM: the weights are the responsibilities
            return proportions, resp, resp
        return proportions, resp, em.mstep_weights(estep_ll, proportions, tempering, prior_power)

    def _train_group(self, broadcast: Broadcast, clients: list[ClientData],
                     states: list[dict[str, np.ndarray]]) -> list[ClientUpload]:
        control, best_topics = unpack(broadcast.payload)
        warmup, best_restart, tempering = bool(control[0]), int(control[1]), float(control[2])
        start = torch.as_tensor(broadcast.model, device=self.device)
        params = self.layout.unflatten(start.expand(len(clients), *start.shape))
        generators = self._generators(clients, rngs.CLIENT_TRAIN, broadcast.round)
        batch = self._batch(clients)
        counts = batch.counts.tolist()
        noise = self._noise(generators, self.cfg.estep_samples, counts, self.max_train)
        log_px, logits = self.model.iw_log_likelihood(params, batch.x, noise)
        log_likelihood = log_px.transpose(1, 2)  # [G, N, K]
        proportions, resp, mstep_weights = self._training_responsibilities(
            clients, states, batch, log_likelihood, logits, warmup, best_restart, best_topics, tempering)
        metrics = self._metrics(clients, batch, params, proportions, log_likelihood, resp, self.cfg.test_samples,
                                generators)
        for state, value in zip(states, proportions.cpu().numpy()):
            state["proportions"][:] = value
        weights = mstep_weights * batch.mask.unsqueeze(2)
        with self.model.training_numerics():
            trained = em.local_m_step(self.layout, start, batch.x, batch.y, batch.counts, weights,
                                      self.cfg.local_epochs, self.cfg.batch_size, self.cfg.lr, self.cfg.label_weight,
                                      generators, elbo_fn=self._mstep_objective(), samples=self.cfg.mstep_samples)
        delta = (trained - start).cpu().numpy()
        power = self.cfg.aggregation_power
        aggregation = em.aggregation_mass(weights, power).double().cpu().numpy()
        plain_mass = em.aggregation_mass(weights).double().cpu().numpy() if power != 1 else np.zeros((len(clients), 0))
        return [ClientUpload(delta=delta[g], weights=aggregation[g], statistics=plain_mass[g], metrics=metrics[g])
                if client.seen else no_upload(metrics[g]) for g, client in enumerate(clients)]

    def _evaluate_group(self, broadcast: Broadcast, clients: list[ClientData]) -> list[ClientUpload]:
        """Inference only: what an unseen client does, from uniform proportions; the clients'
        training proportions are left alone."""
        start = torch.as_tensor(broadcast.model, device=self.device)
        params = self.layout.unflatten(start.expand(len(clients), *start.shape))
        generators = self._generators(clients, rngs.CLIENT_EVAL, broadcast.round)
        batch = self._batch(clients)
        k = self.num_components
        noise = self._noise(generators, self.cfg.eval_samples, batch.counts.tolist(), self.max_train)
        log_px, logits = self.model.iw_log_likelihood(params, batch.x, noise)
        log_likelihood = log_px.transpose(1, 2)
        # with labels the proportions and assignments come from p_k(x_i) p_k(y_i | x_i); the logged
        # likelihoods stay the densities' own
        estep_ll = em.with_labels(log_likelihood, logits, batch.y) if self.cfg.eval_uses_labels else log_likelihood
        uniform = torch.full((len(clients), k), 1.0 / k, device=self.device)
        proportions, resp = em.fit_proportions(estep_ll, batch.mask, uniform, EVAL_PROPORTION_ITERATIONS)
        metrics = self._metrics(clients, batch, params, proportions, log_likelihood, resp, self.cfg.eval_samples,
                                generators, heldout=True)
        mixture = em.masked_mean(em.mixture_log_likelihood(log_likelihood, proportions).unsqueeze(2), batch.mask)
        for g, value in enumerate(mixture[:, 0].double().cpu().numpy()):
            metrics[g]["mixture_log_likelihood"] = np.array(value)
        if self.log_responsibilities:  # per sample, to set beside the exact ones (NaN past its samples)
            padded = torch.where(batch.mask.unsqueeze(2), resp, torch.nan).double().cpu().numpy()
            for g in range(len(clients)):
                metrics[g]["responsibilities"] = padded[g]
        # the seen clients' proportions, summed with their squares: the server sees which components
        # move together across clients (moving_together) and no single client's proportions
        stats = [np.concatenate([p, np.outer(p, p).ravel(), [1.0]]) for p in proportions.double().cpu().numpy()]
        return [ClientUpload(delta=None, weights=np.zeros(0), statistics=stats[g], metrics=m) if client.seen
                else no_upload(m) for g, (client, m) in enumerate(zip(clients, metrics))]


def _confusion(true_components: np.ndarray | None, assigned: np.ndarray, num_true: int, k: int) -> np.ndarray:
    """[true, learned] counts of hard assignments (zeros without truth); evaluation only: never
    feeds back into training."""
    counts = np.zeros((num_true, k))
    if true_components is not None:
        np.add.at(counts, (true_components, assigned[: len(true_components)]), 1.0)
    return counts


def moving_together(statistics: np.ndarray, k: int) -> tuple[tuple[tuple[int, ...], ...], np.ndarray]:
    """Groups of components whose proportions are correlated across the clients above
    MERGE_CORRELATION for every pair in the group (complete linkage: a chain of pairs does not
    make a group), from the summed pi_c, pi_c pi_c^T and client count; and the correlation
    matrix [K, K]."""
    total, outer, clients = statistics[:k], statistics[k:k + k * k].reshape(k, k), statistics[-1]
    if clients < 3:
        return tuple((c,) for c in range(k)), np.eye(k)
    mean = total / clients
    covariance = outer / clients - np.outer(mean, mean)
    spread = np.sqrt(np.clip(np.diag(covariance), 1e-30, None))
    correlation = covariance / np.outer(spread, spread)
    groups = [[c] for c in range(k)]
    while True:  # join the two groups whose least-correlated pair is the most correlated, while above the bar
        best, pair = MERGE_CORRELATION, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                link = min(correlation[a, b] for a in groups[i] for b in groups[j])
                if link > best:
                    best, pair = link, (i, j)
        if pair is None:
            return tuple(sorted(tuple(sorted(g)) for g in groups)), correlation
        groups[pair[0]] += groups.pop(pair[1])
