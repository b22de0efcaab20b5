"""The two channels between clients and server, each a real serialisation to bytes and back.

Uplink (one per rank, state per hosted client): a client's upload - per-row weights (FedGMI: the
responsibility mass of each component), exact statistics, and the model delta [rows, row_size] -
becomes one byte string no longer than the cap, and is decoded as the server would decode it. The
decoded upload is what the runtime sums; ``len()`` of the byte string is what the log counts.

Downlink (one per rank): the server's broadcast - a small control payload and the global model -
becomes one byte string that the MPI broadcast carries. Under a budget it holds the compressed
*change* of the model against the replica every party keeps of what the clients hold; every rank,
the server included, decodes the same bytes into the same replica, so the server's next change is
measured against exactly what clients have (server-side error feedback: what was not sent this
round is still in the difference next round). Clients train from the replica, never from
parameters they were not sent.

Message layouts (little-endian):
  uplink, model round   weights[rows] (float64 dense, float32 under a cap; 0 = row not sent),
                        statistics[S] float64, then per segment the codec's bytes for the sent rows
  uplink, other rounds  statistics[S] float64
  downlink              flags u8 (1 model, 2 evaluation only), payload length u32, payload float32,
                        then the model: float32 as it is (dense) or per segment the codec's bytes
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import rng as rngs
from ..algorithms.base import Broadcast, ClientUpload, ModelLayout
from .base import Codec
from .casts import FP16_MAX
from .wire import Reader, Writer

UP, DOWN = 1, 0
SHARED, PRIVATE = 0, 1
HAS_MODEL, EVALUATION_ONLY = 1, 2
DOWNLINK_HEADER = 5  # flags u8 + payload length u32
# Tensors smaller than this travel together as one segment, so a bias vector does not pay a
# codec's fixed costs (scales, index-code parameters) on its own.
SMALL_SEGMENT = 1024


class BudgetError(RuntimeError):
    """A payload came out larger than its cap: a bug, never a user error."""


def uplink_header_bytes(layout: ModelLayout, capped: bool, statistics: int | None = None) -> int:
    """The weights (float64 dense, float32 under a cap) and the exact float64 statistics of a model
    round (as many as the layout declares, unless the upload says otherwise)."""
    return (4 if capped else 8) * layout.rows + 8 * (layout.statistics if statistics is None else statistics)


def waterfill(total: int, weights: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Integer budgets b_i with low_i <= b_i <= high_i and the rest of ``total`` spread in proportion
    to ``weights`` (items that reach ``high`` give their excess to the others). Assumes
    total >= sum(low). Deterministic: both ends of a channel compute it from the same inputs."""
    budgets = low.astype(np.int64).copy()
    remaining = int(total - budgets.sum())
    active = [i for i in range(len(weights)) if high[i] > low[i]]
    while active and remaining > 0:
        weight = float(sum(weights[i] for i in active))
        if weight <= 0:
            break
        shares = {i: int(np.floor(remaining * float(weights[i]) / weight)) for i in active}
        full = [i for i in active if budgets[i] + shares[i] >= high[i]]
        if not full:
            for i in active:
                budgets[i] += shares[i]
            break
        for i in full:
            remaining -= int(high[i] - budgets[i])
            budgets[i] = high[i]
            active.remove(i)
    return budgets


@dataclass(frozen=True)
class Segments:
    """How one row is cut for the codecs: a column order and the sizes of the pieces in that order."""

    order: np.ndarray | None  # None: the row in its own order, one piece
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, layout: ModelLayout, whole: bool) -> "Segments":
        if whole:
            return cls(None, (layout.row_size,))
        starts = np.concatenate([[0], np.cumsum(layout.segments)[:-1]]).astype(np.int64)
        large = [(s, n) for s, n in zip(starts, layout.segments) if n >= SMALL_SEGMENT]
        small = [(s, n) for s, n in zip(starts, layout.segments) if n < SMALL_SEGMENT]
        pieces = [np.arange(s, s + n) for s, n in large]
        sizes = [n for _, n in large]
        if small:
            pieces.append(np.concatenate([np.arange(s, s + n) for s, n in small]))
            sizes.append(sum(n for _, n in small))
        return cls(np.concatenate(pieces), tuple(sizes))

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        ordered = rows if self.order is None else rows[:, self.order]
        return np.split(ordered, np.cumsum(self.sizes)[:-1], axis=1)

    def join(self, pieces: list[np.ndarray], row_size: int) -> np.ndarray:
        ordered = np.concatenate(pieces, axis=1)
        if self.order is None:
            return ordered
        out = np.empty((ordered.shape[0], row_size), dtype=ordered.dtype)
        out[:, self.order] = ordered
        return out


class Plan:
    """Budgets of one message: which rows travel and how many bytes each (row, segment) gets."""

    def __init__(self, codec: Codec, segments: Segments):
        self.codec = codec
        self.segments = segments
        self.low = np.array([codec.min_bytes(n) for n in segments.sizes], dtype=np.int64)
        self.high = np.array([codec.max_bytes(n) for n in segments.sizes], dtype=np.int64)
        self.row_min = int(self.low.sum())
        self.row_max = int(self.high.sum())

    def rows(self, total: int, weights: np.ndarray, proportional: bool) -> tuple[np.ndarray, np.ndarray]:
        """(rows sent, their byte budgets) for rows with weight > 0. Rows that cannot get the minimum
        are dropped, lightest first, until the others can."""
        sent = [i for i in range(len(weights)) if weights[i] > 0]
        while sent:
            share = np.asarray([weights[i] for i in sent], dtype=np.float64) if proportional else np.ones(len(sent))
            budgets = waterfill(total, share, np.zeros(len(sent), np.int64),
                                np.full(len(sent), self.row_max, np.int64))
            if budgets.min() >= self.row_min:
                return np.array(sent, dtype=np.int64), budgets
            sent.remove(min(sent, key=lambda i: (weights[i], -i)))
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def segment_budgets(self, row_budget: int) -> np.ndarray:
        return waterfill(row_budget, np.asarray(self.segments.sizes, dtype=np.float64), self.low, self.high)

    def _budgets(self, row_budgets: np.ndarray) -> np.ndarray:
        """[rows, segments] bytes."""
        out = np.zeros((len(row_budgets), len(self.segments.sizes)), dtype=np.int64)
        for i, budget in enumerate(row_budgets):
            out[i] = self.segment_budgets(int(budget))
        return out

    def encode(self, rows: np.ndarray, row_budgets: np.ndarray, shared: np.random.Generator,
               private: np.random.Generator, out: Writer) -> None:
        self.codec.encode(self.segments.split(rows), self._budgets(row_budgets), shared, private, out)

    def decode(self, row_budgets: np.ndarray, row_size: int, shared: np.random.Generator, src: Reader) -> np.ndarray:
        return self.segments.join(self.codec.decode(self.segments.sizes, self._budgets(row_budgets), shared, src),
                                  row_size)


class _LazyStream:
    """A numpy Generator made on first use: deriving one costs ~50 us, and dense and cast codecs,
    the common case, draw nothing."""

    def __init__(self, *key: int):
        self._key = key
        self._rng: np.random.Generator | None = None

    def __getattr__(self, name: str):
        if self._rng is None:
            self._rng = rngs.numpy_rng(*self._key)
        return getattr(self._rng, name)


def _streams(seed: int, direction: int, *ids: int) -> tuple[np.random.Generator, np.random.Generator]:
    return (_LazyStream(seed, rngs.COMPRESSION, direction, *ids, SHARED),  # type: ignore[return-value]
            _LazyStream(seed, rngs.COMPRESSION, direction, *ids, PRIVATE))


@dataclass
class Decoded:
    """One client's upload as the server decodes it."""

    weights: np.ndarray  # float64 [rows]; 0 for rows not sent
    delta: np.ndarray | None  # float32 [rows, row_size]
    statistics: np.ndarray  # float64 [S]
    nbytes: int


class ClientChannel:
    """A client's side of the uplink: its error-feedback residual (None until first needed)."""

    def __init__(self) -> None:
        self.residual: np.ndarray | None = None


class Uplink:
    def __init__(self, codec: Codec, layout: ModelLayout, cap: int | None, seed: int, select: bool = False,
                 threshold: float = 0.0, error_feedback: bool = False, residual_dtype: str = "float16"):
        self.codec = codec
        self.layout = layout
        self.cap = cap  # bytes per model-round upload, None: dense (float32 model, weights on top)
        self.seed = seed
        self.select = select and cap is not None
        self.threshold = threshold
        self.error_feedback = error_feedback and cap is not None  # a dense upload loses nothing to feed back
        self.residual_dtype = np.dtype(residual_dtype)
        self.plan = Plan(codec, Segments.of(layout, whole=cap is None))
        self.weight_dtype = np.float64 if cap is None else np.float32

    def init_client(self) -> ClientChannel:
        return ClientChannel()

    def _weights_on_wire(self, weights: np.ndarray) -> np.ndarray:
        wire = np.asarray(weights, dtype=self.weight_dtype).copy()
        if self.select:
            total = float(wire.sum())
            wire[wire < self.threshold * total] = 0
        return wire

    def _row_budgets(self, wire_weights: np.ndarray, statistics: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cap is None:  # dense: every row travels whole, whatever its weight
            return np.arange(self.layout.rows), np.full(self.layout.rows, self.plan.row_max, dtype=np.int64)
        header = uplink_header_bytes(self.layout, capped=True, statistics=statistics)
        return self.plan.rows(self.cap - header, wire_weights, self.select)

    def send(self, upload: ClientUpload, state: ClientChannel, client_id: int, round_index: int) -> Decoded:
        """Serialise the upload, decode it as the server would, and keep what was not sent in the
        client's residual (error feedback)."""
        statistics = np.asarray(upload.statistics, dtype=np.float64)
        if upload.delta is None:
            data = self.encode(upload, state, client_id, round_index)[0]
            return Decoded(np.zeros(0), None, Reader(data).array(len(statistics), np.float64), len(data))
        data, intended, sent = self.encode(upload, state, client_id, round_index)
        decoded = self.receive(data, client_id, round_index, len(statistics))
        if self.error_feedback:
            if state.residual is None:
                state.residual = np.zeros((self.layout.rows, self.layout.row_size), dtype=self.residual_dtype)
            residual = intended - decoded.delta[sent]
            if self.residual_dtype == np.float16:  # beyond fp16's range it would turn to inf, then NaN
                residual = np.clip(residual, -FP16_MAX, FP16_MAX)
            state.residual[sent] = residual.astype(self.residual_dtype)
        return decoded

    def encode(self, upload: ClientUpload, state: ClientChannel, client_id: int,
               round_index: int) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        """(the bytes on the wire, the rows the client meant to send with its residual added, which
        rows those are). Leaves the client's state alone."""
        statistics = np.asarray(upload.statistics, dtype=np.float64)
        out = Writer()
        if upload.delta is None:
            out.array(statistics, np.float64)
            return out.getvalue(), None, None
        bad = ~np.isfinite(np.asarray(upload.delta)).all(axis=1) | ~np.isfinite(np.asarray(upload.weights))
        if bad.any():  # one diverging client would poison every component it has weight in
            raise OverflowError(f"the update of component(s) {', '.join(map(str, np.flatnonzero(bad)))} is not finite "
                                "(NaN or Inf: a diverging client? lower algorithm.lr)")
        shared, private = _streams(self.seed, UP, client_id, round_index)
        wire = self._weights_on_wire(upload.weights)
        sent, budgets = self._row_budgets(wire, len(statistics))
        wire[np.setdiff1d(np.arange(len(wire)), sent)] = 0
        delta = np.asarray(upload.delta, dtype=np.float32)
        if delta.shape != (self.layout.rows, self.layout.row_size):
            raise ValueError(f"client {client_id} uploaded a delta of shape {delta.shape}; the model is "
                             f"{(self.layout.rows, self.layout.row_size)}")
        if self.error_feedback and state.residual is not None:
            intended = delta[sent] + state.residual[sent].astype(np.float32)
        else:
            intended = delta[sent]
        out.array(wire, self.weight_dtype)
        out.array(statistics, np.float64)
        self.plan.encode(intended, budgets, shared, private, out)
        data = out.getvalue()
        if self.cap is not None and len(data) > self.cap:
            raise BudgetError(f"client {client_id} round {round_index}: upload of {len(data)} bytes exceeds its cap "
                              f"of {self.cap}")
        return data, intended, sent

    def receive(self, data: bytes, client_id: int, round_index: int, statistics: int) -> Decoded:
        """What the server reconstructs from a client's bytes."""
        src = Reader(data)
        weights = src.array(self.layout.rows, self.weight_dtype).astype(np.float64)
        stats = src.array(statistics, np.float64)
        shared, _ = _streams(self.seed, UP, client_id, round_index)
        sent, budgets = self._row_budgets(weights, statistics)
        rows = self.plan.decode(budgets, self.layout.row_size, shared, src)
        if src.remaining():
            raise ValueError(f"upload of client {client_id}: {src.remaining()} bytes left over")
        delta = np.zeros((self.layout.rows, self.layout.row_size), dtype=np.float32)
        delta[sent] = rows
        return Decoded(weights, delta, stats, len(data))


class Downlink:
    def __init__(self, codec: Codec, layout: ModelLayout, cap: int | None, seed: int, initial_model: np.ndarray):
        self.codec = codec
        self.layout = layout
        self.cap = cap  # bytes per model broadcast, None: dense (the float32 model itself)
        self.seed = seed
        self.plan = Plan(codec, Segments.of(layout, whole=cap is None))
        # Every party builds the initial model from the run's seed, so it costs no bytes.
        self.held = np.array(initial_model, dtype=np.float32)

    def _row_budgets(self, payload_floats: int) -> np.ndarray:
        total = self.cap - DOWNLINK_HEADER - 4 * payload_floats
        sent, budgets = self.plan.rows(total, np.ones(self.layout.rows), proportional=False)
        if len(sent) != self.layout.rows:
            raise BudgetError(f"the downlink cap of {self.cap} bytes cannot carry every component")
        return budgets

    def encode(self, broadcast: Broadcast) -> np.ndarray:
        """The server's broadcast as bytes (does not advance the replica: ``decode`` does, on every rank)."""
        out = Writer()
        model = broadcast.model
        flags = (HAS_MODEL if model is not None else 0) | (EVALUATION_ONLY if broadcast.evaluation_only else 0)
        payload = np.asarray(broadcast.payload, dtype=np.float32)
        out.array(np.array([flags]), np.uint8)
        out.array(np.array([payload.size]), np.uint32)
        out.array(payload, np.float32)
        if model is not None:
            if self.cap is None:
                out.array(model, np.float32)
            else:
                shared, private = _streams(self.seed, DOWN, broadcast.round)
                change = np.asarray(model, dtype=np.float32) - self.held
                self.plan.encode(change, self._row_budgets(payload.size), shared, private, out)
        data = np.frombuffer(out.getvalue(), dtype=np.uint8)
        if model is not None and self.cap is not None and len(data) > self.cap:
            raise BudgetError(f"round {broadcast.round}: broadcast of {len(data)} bytes exceeds its cap of {self.cap}")
        return data

    @staticmethod
    def model_bytes(data: np.ndarray) -> int:
        """How many of a message's bytes carry the model (the rest: framing and control values)."""
        payload = int(np.frombuffer(np.asarray(data, dtype=np.uint8)[1:DOWNLINK_HEADER].tobytes(), dtype=np.uint32)[0])
        return len(data) - DOWNLINK_HEADER - 4 * payload

    def decode(self, phase: str, round_index: int, data: np.ndarray) -> Broadcast:
        src = Reader(data)
        flags = int(src.array(1, np.uint8)[0])
        payload = src.array(int(src.array(1, np.uint32)[0]), np.float32)
        model = None
        if flags & HAS_MODEL:
            if self.cap is None:
                model = src.array(self.layout.parameters, np.float32).reshape(self.layout.rows, self.layout.row_size)
            else:
                shared, _ = _streams(self.seed, DOWN, round_index)
                change = self.plan.decode(self._row_budgets(payload.size), self.layout.row_size, shared, src)
                model = self.held + change
            if not flags & EVALUATION_ONLY:
                self.held = model  # what clients now hold; evaluation peeks without keeping it
        if src.remaining():
            raise ValueError(f"broadcast of round {round_index}: {src.remaining()} bytes left over")
        return Broadcast(phase, round_index, payload, model=model, evaluation_only=bool(flags & EVALUATION_ONLY))
