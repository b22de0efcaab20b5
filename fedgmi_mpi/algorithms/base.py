"""What an algorithm is, as the runtimes see it.

A round: the server's ``configure`` produces one :class:`Broadcast` (a phase name, a small flat
float32 control payload and, where the phase needs it, the global model) that every client
receives; each client's ``client_update`` returns one :class:`ClientUpload`; the runtime passes
both through the compression channels (``compression.channel``), sums ``weights * delta``,
``weights`` and ``statistics`` over clients as the server decodes them, and the server's
``aggregate`` consumes only those sums. Per-client ``metrics`` go to the log, never into
aggregation.

Under a downlink budget, ``broadcast.model`` on the client side is the model the clients hold
(the server's model as far as the compressed broadcasts have carried it), and a client's delta
is taken against it; the server adds the aggregated delta to its own model. The algorithm does
not need to know: with a dense downlink the two are the same.

Algorithms never import MPI: everything here runs in one process (see runtime.serial).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..scenarios.base import ClientData


@dataclass
class Broadcast:
    phase: str
    round: int  # communication round index, counting every phase
    payload: np.ndarray  # float32 [n]: control values, sent as they are
    model: np.ndarray | None = None  # float32 [rows, row_size]: the global model, sent by the downlink channel
    evaluation_only: bool = False  # True: clients use the model for this round only (inference), not as their new base
    cohort: np.ndarray | None = None  # int64 client ids that take part this round (None: every client)


@dataclass(frozen=True)
class ModelLayout:
    """The shape of the model that travels, fixed for the run, for the compression channels."""

    rows: int  # e.g. K components; the uplink's per-row weights say how much each row counts
    row_size: int
    segments: tuple[int, ...]  # sizes of the parameter tensors along a row (sum = row_size); codecs treat each apart
    control_bytes: int  # the largest control payload a model broadcast carries (counts against the downlink cap)
    statistics: int = 0  # exact statistics a client sends beside its model delta in a model round

    @property
    def parameters(self) -> int:
        return self.rows * self.row_size


@dataclass(frozen=True)
class UploadLayout:
    """Sizes every rank must agree on before the reduce, derived from the broadcast alone."""

    rows: int  # number of weighted delta rows (e.g. K components); 0 when the phase uploads no model
    row_size: int  # parameters per row
    statistics: int  # exact float64 statistics summed as they are


@dataclass
class ClientUpload:
    delta: np.ndarray | None  # float32 [rows, row_size] model change; None when the phase has no model
    weights: np.ndarray  # float64 [rows] weight of each row in the server's weighted mean
    statistics: np.ndarray  # float64 [statistics]
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    sends: bool = True  # False: the client uploads nothing this round (e.g. an unseen client)


def no_upload(metrics: dict[str, np.ndarray] | None = None) -> ClientUpload:
    return ClientUpload(delta=None, weights=np.zeros(0), statistics=np.zeros(0), metrics=metrics or {}, sends=False)


@dataclass
class Summed:
    """Sums over all clients of one round, as the server receives them."""

    weighted_delta: np.ndarray  # float64 [rows, row_size]: sum_c weights_c[:, None] * delta_c
    weights: np.ndarray  # float64 [rows]
    statistics: np.ndarray  # float64 [statistics]


@dataclass
class Aggregated:
    """What the server's aggregate returns: the new state, server-side metrics for the log, and
    events worth telling the user (printed on rank 0 and stored in the log)."""

    state: Any
    metrics: dict[str, np.ndarray]
    events: list[str] = field(default_factory=list)


class Algorithm(Protocol):
    name: str

    # Which per-client metrics each phase reports, {phase: {name: shape}}; fixed for the run so the
    # log can create its datasets up front.
    def metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]: ...
    def server_metric_specs(self) -> dict[str, dict[str, tuple[int, ...]]]: ...

    def model_layout(self) -> ModelLayout: ...
    def initial_model(self) -> np.ndarray:
        """float32 [rows, row_size], built from the seed alone: every party can build it, so it costs no bytes."""
        ...

    def init_server(self) -> Any: ...
    def configure(self, state: Any) -> Broadcast | None: ...
    def upload_layout(self, broadcast: Broadcast) -> UploadLayout: ...
    def aggregate(self, state: Any, broadcast: Broadcast, summed: Summed) -> Aggregated: ...

    # What a client keeps between its rounds: small float arrays, {name: shape}, fixed for the run.
    # The runtime holds them, so a client can run on any rank in any round; everything else a
    # client needs is its data or recomputed.
    def client_state_spec(self) -> dict[str, tuple[int, ...]]: ...
    def init_client(self, client: ClientData) -> dict[str, np.ndarray]: ...
    # One client's round; ``state`` holds the arrays of client_state_spec, updated in place.
    def client_update(self, broadcast: Broadcast, client: ClientData, state: dict[str, np.ndarray]) -> ClientUpload: ...


class GroupAlgorithm(Algorithm, Protocol):
    """Optional: an algorithm that computes a whole group of clients at once (one batched
    computation on the rank's device). Each client's result must not depend on the others in the
    group. Without it the runtime calls ``client_update`` client by client."""

    def group_update(self, broadcast: Broadcast, clients: list[ClientData],
                     states: list[dict[str, np.ndarray]]) -> list[ClientUpload]: ...


class PrivateState(Protocol):
    """Optional: state too big to travel with a client (e.g. its own model). It is kept only on the
    client's home rank, never shared between ranks or logged, and such a client always runs on its
    home rank. ``update`` sees it merged into ``state`` beside the shared arrays."""

    def client_private_spec(self) -> dict[str, tuple[int, ...]]: ...
    def init_private(self, client: ClientData) -> dict[str, np.ndarray]: ...


class Observer(Protocol):
    """Optional: ``observe`` is called on every rank for every broadcast, before any client runs,
    so an algorithm can keep what its clients will need later wherever they run (FedGMI keeps the
    codebook, which travels once)."""

    def observe(self, broadcast: Broadcast) -> None: ...
    # What it kept, for a checkpoint (taken from rank 0, restored on every rank when resuming).
    def observed_state(self) -> dict[str, np.ndarray]: ...
    def restore_observed(self, observed: dict[str, np.ndarray]) -> None: ...


def pack(arrays: list[np.ndarray]) -> np.ndarray:
    """Several arrays in one float32 vector, shapes in a small header so the receiver needs no side channel."""
    header = [len(arrays)]
    for a in arrays:
        if any(dim >= 2**24 for dim in a.shape):  # float32 holds integers exactly only up to 2**24
            raise ValueError(f"cannot pack an array of shape {a.shape}: a dimension is 2**24 or more")
        header += [a.ndim, *a.shape]
    parts = [np.asarray(header, dtype=np.float32)] + [np.asarray(a, dtype=np.float32).ravel() for a in arrays]
    return np.concatenate(parts)


def unpack(vector: np.ndarray) -> list[np.ndarray]:
    count = int(vector[0])
    pos, shapes = 1, []
    for _ in range(count):
        ndim = int(vector[pos])
        shapes.append(tuple(int(s) for s in vector[pos + 1 : pos + 1 + ndim]))
        pos += 1 + ndim
    out = []
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(vector[pos : pos + size].reshape(shape))
        pos += size
    return out
