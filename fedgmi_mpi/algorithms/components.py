"""Choosing K from the data (``algorithm.num_components=auto``): a federated pre-pass before FedGMI.

What it measures: how many topics the clients' codeword histograms need. Every client's samples
are a mixture of the K inherent distributions in its own proportions, so its expected codeword
histogram is a convex combination of K topic rows: the clients x codewords count matrix has
rank K plus sampling noise. A topic model with fewer topics cannot fit the clients' differences;
one with more fits noise. Which is which shows on words the model did not see: every client
splits its samples into two halves (its own random stream), the topic model is fitted on one
half, and the other half scores it (the summed held-out log-likelihood, no truth involved); both
halves take each role once. Candidates K = auto_min_components .. auto_max_components all run
side by side in the same rounds (2 random restarts each; the restart with the best training fit
is scored).

Why several codebook sizes: a coarse codebook merges the words that tell two components apart
(it finds too few: flips at 64 codewords), a fine one spreads few samples over many words (it
finds too few again: 16 clients of 60 samples at 128 codewords). Too many components never won
on held-out words in our measurements (docs/algorithm.md), so the choice is the largest of the
best K of each codebook size (32, 64, 128 codewords: the LBG codebook passes through them).

Cost: the codebook rounds of FedGMI's own initialisation (to 128 codewords), then at most 100
topic rounds that each carry, per client, 2 halves x 3 codebooks x sum(K) x 2 restarts x
codewords expected counts (about 32,000 float64 numbers for K = 1..8); they stop early when every
fit has converged. No sample and no histogram leaves a client.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import rng as rngs
from ..config import Config
from ..scenarios.base import ClientData, Scenario
from . import codebook, topics
from .base import Aggregated, Broadcast, ClientUpload, ModelLayout, Summed, UploadLayout, no_upload, pack, unpack

VOCABULARIES = (32, 64, 128)  # codebook sizes scored; the LBG codebook settles at each on its way to the last
HALVES = 2  # each client's samples split in two: fitted on one, scored on the other, and the other way round
RESTARTS = 2  # random restarts per fit (FedGMI's own topic model runs topic_restarts)
ITERATIONS = 100  # topic rounds at most; the held-out scores no longer change the choice by then
TOLERANCE = 1e-6  # relative change of every fit's log-likelihood below which the topic rounds stop


@dataclass(frozen=True)
class Block:
    """One topic fit: codebook ``vocabulary`` (index into the settled codebooks), held-out ``half``, ``k`` topics."""

    vocabulary: int
    half: int
    k: int


@dataclass
class SelectionState:
    phase: str = "codebook"
    round: int = 0
    codebook: codebook.CodebookState | None = None
    codebooks: list[np.ndarray] = field(default_factory=list)  # settled codebooks, VOCABULARIES' sizes
    topics: list[np.ndarray] = field(default_factory=list)  # per block [R, k, M]
    loglik: np.ndarray | None = None  # [blocks, R] training fit at the last round
    heldout: np.ndarray | None = None  # [blocks, R] held-out log-likelihood at the last round
    iteration: int = 0
    done: bool = False


@dataclass
class Selection:
    """The outcome, for the log: held-out log-likelihood per (codebook, K), each codebook's best K, the choice."""

    candidates: np.ndarray  # [n] the K tried
    vocabularies: np.ndarray  # [V] codewords of each settled codebook
    heldout_log_likelihood: np.ndarray  # [V, n] summed over clients and both halves
    best: np.ndarray  # [V] the best K of each codebook
    chosen: int
    rounds: int
    bytes_up_per_client: float
    seconds: float  # wall time of the pre-pass on rank 0

    def log_entries(self) -> dict:
        """What the log's /component_selection group holds."""
        return {"candidates": self.candidates, "vocabularies": self.vocabularies,
                "heldout_log_likelihood": self.heldout_log_likelihood, "best": self.best,
                "chosen": np.array(self.chosen), "rounds": np.array(self.rounds),
                "bytes_up_per_client": np.array(self.bytes_up_per_client), "seconds": np.array(self.seconds),
                "method": "held-out codeword likelihood of the federated topic model, per codebook size; "
                          "the largest of the best K",
                "description": self.describe()}

    def describe(self) -> str:
        picks = ", ".join(f"{m} codewords: K={k}" for m, k in zip(self.vocabularies, self.best))
        return (f"chose K={self.chosen} from {self.candidates[0]}..{self.candidates[-1]} by held-out codeword "
                f"likelihood (best per codebook: {picks}; the largest wins) in {self.rounds} rounds, "
                f"{self.seconds:.1f} s, {self.bytes_up_per_client / 2**20:.1f} MiB up per client")


class ComponentSelection:
    """An algorithm in the runtime's sense (configure / client_update / aggregate), run once before
    the main one; no model travels."""

    name = "select_components"

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu"):
        self.cfg = config.algorithm
        self.seed = config.run_seed
        self.candidates = np.arange(self.cfg.auto_min_components, self.cfg.auto_max_components + 1)
        self.restarts = RESTARTS
        self.seen = np.array([c.client_id for c in scenario.clients if c.seen], dtype=np.int64)
        self.input_dim = scenario.input_dim
        self.blocks = [Block(v, h, int(k)) for v in range(len(VOCABULARIES)) for h in range(HALVES)
                       for k in self.candidates]
        self.codebooks: list[np.ndarray] | None = None  # every rank keeps the settled codebooks (sent once)
        self.words: dict[int, list[np.ndarray]] = {}
        self.halves: dict[int, np.ndarray] = {}

    # ---- declarations ---------------------------------------------------------------------
    def metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"codebook": {}, "topics": {}}

    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"codebook": {}, "topics": {}}

    def model_layout(self) -> ModelLayout:
        return ModelLayout(rows=1, row_size=1, segments=(1,), control_bytes=0)

    def initial_model(self) -> np.ndarray:
        return np.zeros((1, 1), dtype=np.float32)

    def client_state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"topic_weights": (sum(self.restarts * b.k for b in self.blocks),)}

    def init_client(self, client: ClientData) -> dict[str, np.ndarray]:
        return {"topic_weights": np.concatenate([np.full(self.restarts * b.k, 1.0 / b.k) for b in self.blocks])}

    # ---- server ----------------------------------------------------------------------------
    def init_server(self) -> SelectionState:
        return SelectionState(codebook=codebook.start(self.input_dim, VOCABULARIES[-1],
                                                      self.cfg.codebook_lloyd_iterations))

    def configure(self, state: SelectionState) -> Broadcast | None:
        if state.done:
            return None
        if state.phase == "codebook":
            return Broadcast("codebook", state.round, pack([state.codebook.centroids]), cohort=self.seen)
        # the settled codebooks travel once, in the first topics round
        books = state.codebooks if state.iteration == 0 else []
        return Broadcast("topics", state.round, pack([np.array([len(books)]), *books, *state.topics]), cohort=self.seen)

    def upload_layout(self, broadcast: Broadcast) -> UploadLayout:
        if broadcast.phase == "codebook":
            (centroids,) = unpack(broadcast.payload)
            m, d = centroids.shape
            return UploadLayout(0, 0, m + m * d + m)
        sizes = self._vocabulary_sizes()
        return UploadLayout(0, 0, sum(self.restarts * (b.k * sizes[b.vocabulary] + 2) for b in self.blocks))

    def aggregate(self, state: SelectionState, broadcast: Broadcast, summed: Summed) -> Aggregated:
        state.round += 1
        if broadcast.phase == "codebook":
            state.codebook = codebook.update(state.codebook, summed.statistics,
                                             rngs.numpy_rng(self.seed, rngs.SERVER, broadcast.round))
            settled = state.codebook.settled
            # the first settled codebook at least as large as the next size wanted (clusters nobody
            # uses are dropped, so sizes may fall short of the powers of two); the final one fills
            # whatever is left (data with fewer distinct samples than codewords)
            while (settled is not None and len(state.codebooks) < len(VOCABULARIES)
                   and (len(settled) >= VOCABULARIES[len(state.codebooks)] or state.codebook.done)):
                state.codebooks.append(settled)
            if state.codebook.done:
                state.phase = "topics"
                rng = rngs.numpy_rng(self.seed, rngs.SERVER, broadcast.round, 1)
                state.topics = [topics.random_topics(self.restarts, b.k, len(state.codebooks[b.vocabulary]), rng)
                                for b in self.blocks]
            return Aggregated(state, {})
        statistics, offset = summed.statistics, 0
        loglik, heldout = np.zeros((len(self.blocks), self.restarts)), np.zeros((len(self.blocks), self.restarts))
        for i in range(len(self.blocks)):
            r, k, m = state.topics[i].shape
            expected = statistics[offset: offset + r * k * m].reshape(r, k, m)
            offset += r * k * m
            loglik[i], heldout[i] = statistics[offset: offset + r], statistics[offset + r: offset + 2 * r]
            offset += 2 * r
            state.topics[i] = topics.server_step(expected)
        converged = state.loglik is not None and bool(np.all(np.abs(loglik - state.loglik) <= TOLERANCE * np.abs(loglik)))
        state.loglik, state.heldout = loglik, heldout
        state.iteration += 1
        state.done = converged or state.iteration >= ITERATIONS
        return Aggregated(state, {})

    def result(self, state: SelectionState, bytes_up_per_client: float, seconds: float = 0.0) -> Selection:
        """The choice, from the last topics round: per codebook and K, the held-out score of each
        half's best-fitting restart, summed over the halves."""
        scores = np.zeros((len(VOCABULARIES), len(self.candidates)))
        for i, block in enumerate(self.blocks):
            best_restart = int(np.argmax(state.loglik[i]))
            scores[block.vocabulary, block.k - self.candidates[0]] += state.heldout[i, best_restart]
        best = self.candidates[np.argmax(scores, axis=1)]
        return Selection(self.candidates, np.array([len(c) for c in state.codebooks]), scores, best, int(best.max()),
                         state.round, bytes_up_per_client, seconds)

    # ---- client ----------------------------------------------------------------------------
    def _vocabulary_sizes(self) -> list[int]:
        if self.codebooks is None:
            raise RuntimeError("no codebooks on this rank (the first topics round carries them)")
        return [len(c) for c in self.codebooks]

    def observe(self, broadcast: Broadcast) -> None:
        if broadcast.phase == "topics":
            parts = unpack(broadcast.payload)
            count = int(parts[0][0])
            if count:
                self.codebooks = [c.astype(np.float64) for c in parts[1: 1 + count]]
                self.words.clear()

    def client_update(self, broadcast: Broadcast, client: ClientData, state: dict[str, np.ndarray]) -> ClientUpload:
        if not client.seen:
            return no_upload()
        if broadcast.phase == "codebook":
            (centroids,) = unpack(broadcast.payload)
            stats = codebook.cluster_statistics(client.x_train.astype(np.float64), centroids.astype(np.float64))
            return ClientUpload(delta=None, weights=np.zeros(0), statistics=stats)
        parts = unpack(broadcast.payload)
        block_topics = parts[1 + int(parts[0][0]):]
        words, half = self._client_words(client)
        sizes = self._vocabulary_sizes()
        weights, offset, out = state["topic_weights"], 0, []
        for block, topic_words in zip(self.blocks, block_topics):
            fitted = np.bincount(words[block.vocabulary][half != block.half], minlength=sizes[block.vocabulary])
            scored = np.bincount(words[block.vocabulary][half == block.half], minlength=sizes[block.vocabulary])
            size = self.restarts * block.k
            current = weights[offset: offset + size].reshape(self.restarts, block.k)
            topic_words = topic_words.astype(np.float64)
            word_prob = np.einsum("rk,rkm->rm", current, topic_words)
            heldout = (scored[None, :] * np.log(np.maximum(word_prob, 1e-300))).sum(1)
            new_weights, expected, loglik = topics.client_step(fitted.astype(np.float64), current, topic_words)
            weights[offset: offset + size] = new_weights.ravel()
            offset += size
            out += [expected.ravel(), loglik, heldout]
        return ClientUpload(delta=None, weights=np.zeros(0), statistics=np.concatenate(out))

    def _client_words(self, client: ClientData) -> tuple[list[np.ndarray], np.ndarray]:
        """The client's codewords under every settled codebook, and which half each sample is in
        (from the client's own stream: the same on any rank)."""
        if client.client_id not in self.words:
            x = client.x_train.astype(np.float64)
            self.words[client.client_id] = [codebook.nearest(x, c) for c in self.codebooks]
            order = rngs.numpy_rng(self.seed, rngs.SELECTION, client.client_id).permutation(client.num_train)
            self.halves[client.client_id] = order % HALVES
        return self.words[client.client_id], self.halves[client.client_id]
