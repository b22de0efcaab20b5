"""The round loop, the same for every transport.

Per round: the server configures a broadcast and the downlink channel turns it into bytes; the
transport carries the bytes to every rank, and every rank (the server too) decodes them into the
same broadcast and the same replica of the clients' model. Every rank runs its hosted clients,
passes each upload through the uplink channel (serialised, capped, decoded as the server would),
and adds ``weights * delta``, ``weights`` and the exact statistics into one int64 fixed-point
buffer; one reduce brings the sum to the server and one gather brings the small per-client metric
rows. The loop knows nothing of the algorithm's phases, of the codecs, or of MPI.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from ..algorithms.base import Aggregated, Algorithm, Broadcast, ClientUpload, Summed, UploadLayout
from ..compression import Channels
from ..compression.channel import ClientChannel, Uplink
from ..scenarios.base import Scenario
from . import exact_sum

COLLECTIVES = ("broadcast", "reduce", "gather")


@dataclass
class Message:
    """A broadcast as the transport carries it: the phase and round travel in the transport's header."""

    phase: str
    round: int
    data: np.ndarray  # uint8, the downlink channel's bytes


class Transport(Protocol):
    is_server: bool
    hosted: list[int]  # client ids this rank runs, ascending
    moved: dict[str, int]  # bytes the last round's collectives moved between ranks, by collective

    def broadcast(self, message: Message | None) -> Message | None: ...
    def reduce_sum(self, local: np.ndarray) -> np.ndarray | None: ...
    def gather_rows(self, rows: np.ndarray) -> np.ndarray | None: ...


@dataclass
class RoundRecord:
    """What the server learned in one round, handed to the observer (log, progress, summary)."""

    broadcast: Broadcast
    client_metrics: dict[str, np.ndarray]  # name -> [clients, ...], NaN where a client reported nothing
    bytes_down: np.ndarray  # [clients]
    bytes_up: np.ndarray  # [clients]
    aggregated: Aggregated
    wall_time: float
    downlink_cap: int = -1  # bytes; -1: this round has no cap
    uplink_cap: int = -1
    mpi_bytes: dict[str, int] = field(default_factory=dict)


def _metric_columns(spec: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...], int, int]]:
    columns, start = [], 0
    for name, shape in spec.items():
        size = int(np.prod(shape, dtype=np.int64))
        columns.append((name, shape, start, start + size))
        start += size
    return columns


def _buffer_size(layout: UploadLayout) -> int:
    return layout.rows * layout.row_size + layout.rows + layout.statistics


def run(
    algorithm: Algorithm,
    scenario: Scenario,
    channels: Channels,
    transport: Transport,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> Any:
    """Run to the end; returns the server's final state on the server, None elsewhere."""
    client_states = {cid: algorithm.init_client(scenario.clients[cid]) for cid in transport.hosted}
    channel_states = {cid: channels.uplink.init_client() for cid in transport.hosted}
    server_state = algorithm.init_server() if transport.is_server else None
    specs = {phase: _metric_columns(spec) for phase, spec in algorithm.metric_specs().items()}
    limit = exact_sum.contribution_limit(len(scenario.clients))

    while True:
        started = time.perf_counter()
        message = None
        if transport.is_server:
            configured = algorithm.configure(server_state)
            if configured is not None:
                message = Message(configured.phase, configured.round, channels.downlink.encode(configured))
        message = transport.broadcast(message)
        if message is None:
            return server_state
        broadcast = channels.downlink.decode(message.phase, message.round, message.data)
        layout = algorithm.upload_layout(broadcast)
        n_rows, row_size = layout.rows, layout.row_size
        columns = specs[broadcast.phase]
        width = (columns[-1][3] if columns else 0) + 2  # metrics, then bytes down and up
        local = np.zeros(_buffer_size(layout), dtype=np.int64)
        rows = np.full((len(transport.hosted), width), np.nan)
        for i, cid in enumerate(transport.hosted):
            upload = algorithm.client_update(broadcast, scenario.clients[cid], client_states[cid])
            try:
                bytes_up = _add_upload(local, upload, layout, channels.uplink, channel_states[cid], broadcast.round,
                                       cid, limit)
            except OverflowError as exc:
                raise OverflowError(f"client {cid}, {broadcast.phase} round {broadcast.round}: {exc}") from None
            for name, _, lo, hi in columns:
                if name in upload.metrics:
                    rows[i, lo:hi] = np.asarray(upload.metrics[name], dtype=np.float64).reshape(-1)
            rows[i, -2:] = (len(message.data), bytes_up)

        total = transport.reduce_sum(local)
        gathered = transport.gather_rows(rows)
        if not transport.is_server:
            continue
        total = exact_sum.decode(total)
        summed = Summed(
            weighted_delta=total[: n_rows * row_size].reshape(n_rows, row_size),
            weights=total[n_rows * row_size : n_rows * row_size + n_rows],
            statistics=total[n_rows * row_size + n_rows :],
        )
        aggregated = algorithm.aggregate(server_state, broadcast, summed)
        server_state = aggregated.state
        if on_round is not None:
            metrics = {name: gathered[:, lo:hi].reshape(-1, *shape) for name, shape, lo, hi in columns}
            down_cap = channels.downlink.cap if broadcast.model is not None and channels.downlink.cap is not None else -1
            up_cap = channels.uplink.cap if n_rows and channels.uplink.cap is not None else -1
            on_round(RoundRecord(broadcast, metrics, gathered[:, -2], gathered[:, -1], aggregated,
                                 time.perf_counter() - started, down_cap, up_cap, dict(transport.moved)))


def _add_upload(local: np.ndarray, upload: ClientUpload, layout: UploadLayout, uplink: Uplink,
                channel_state: ClientChannel, round_index: int, cid: int, limit: float) -> int:
    """Add one client's upload, as the server decodes it, into the rank's fixed-point sum; returns
    the bytes the client sent."""
    if not upload.sends:
        return 0
    n_rows, row_size = layout.rows, layout.row_size
    if len(upload.weights) != n_rows or len(upload.statistics) != layout.statistics or (upload.delta is None) != (n_rows == 0):
        raise ValueError(f"client {cid} uploaded {len(upload.weights)} weights / {len(upload.statistics)} statistics / "
                         f"{'a' if upload.delta is not None else 'no'} model delta; the round expects {n_rows} / "
                         f"{layout.statistics} / {'a' if n_rows else 'no'} delta")
    decoded = uplink.send(upload, channel_state, cid, round_index)
    if n_rows:
        local[: n_rows * row_size] += exact_sum.encode(decoded.weights[:, None] * decoded.delta, limit).ravel()
    local[n_rows * row_size :] += exact_sum.encode(np.concatenate([decoded.weights, decoded.statistics]), limit)
    return decoded.nbytes


class SerialTransport:
    """One process is the server and hosts every client: the reference for the MPI path."""

    is_server = True

    def __init__(self, num_clients: int):
        self.hosted = list(range(num_clients))
        self.moved = dict.fromkeys(COLLECTIVES, 0)  # nothing crosses a process boundary

    def broadcast(self, message: Message | None) -> Message | None:
        return message

    def reduce_sum(self, local: np.ndarray) -> np.ndarray:
        return local

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows
