"""The round loop, the same for every transport.

Per round: the server configures a broadcast (with the round's cohort: who takes part) and the
downlink channel turns it into bytes; the transport carries them to every rank, and every rank
(the server too) decodes them into the same broadcast and the same replica of the clients'
model. The cohort is split over the worker ranks by workload, afresh every round, so no rank
idles while another trains most of it; every rank holds every client's data and the runtime's
table of every client's small state, so any rank can run any client (except a client with state
that stays on its home rank: an error-feedback residual, or an algorithm's private state). A rank runs its share in
groups (one batched computation each when the algorithm can), passes each upload through the
uplink channel (serialised, capped, decoded as the server would), and adds ``weights * delta``,
``weights`` and the exact statistics into one int64 fixed-point buffer; one reduce brings the sum
to the server, and one all-gather brings every rank the round's per-client rows (metrics for the
log, updated client state for the table). The loop knows nothing of the algorithm's phases, of
the codecs, or of MPI.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from ..algorithms.base import Aggregated, Algorithm, Broadcast, ClientUpload, Summed, UploadLayout
from ..compression import Channels
from ..compression.channel import ClientChannel, Uplink
from ..errors import Stopped
from ..logs.checkpoint import Snapshot
from ..scenarios.base import Scenario
from . import exact_sum, faults
from .placement import assign_clients, client_workloads
from .state import StateTable

COLLECTIVES = ("broadcast", "reduce", "gather")
# What the server broadcasts instead of a round's message: the run is over, or it stops early
# (a signal asked it to) after every rank has helped write a checkpoint.
END, STOP = "end", "stop"
RESIDUAL, PRIVATE = 1, 2  # bits of Snapshot.has_pinned


@dataclass
class Message:
    """A broadcast as the transport carries it: phase, round and cohort travel in the transport's
    header, the downlink channel's bytes as they are."""

    phase: str
    round: int
    data: np.ndarray  # uint8
    cohort: np.ndarray | None = None  # int64 client ids; None: every client


class Transport(Protocol):
    is_server: bool
    workers: int  # ranks that run clients
    worker: int  # this rank's index among them; -1 for a rank that runs none
    moved: dict[str, int]  # bytes the last round's collectives moved between ranks, by collective

    def broadcast(self, message: Message | str | None) -> Message | str:
        """The server's Message (or END / STOP) on every rank; the others pass None."""
        ...
    def reduce_sum(self, local: np.ndarray) -> np.ndarray | None: ...
    def share_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray:
        """Every worker's rows (``counts[w]`` of them from worker w, in worker order) on every rank."""
        ...
    def gather_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """The same, on the server only (checkpoints: state that lives on one rank)."""
        ...


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
    participants: np.ndarray | None = None  # bool [clients]: who took part
    catch_up: np.ndarray | None = None  # [clients] bytes a returning client downloads to hold the current model
    compute_time: float = 0.0  # seconds the busiest worker rank spent on its clients (the rest is the framework)


def _metric_columns(spec: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...], int, int]]:
    columns, start = [], 0
    for name, shape in spec.items():
        size = int(np.prod(shape, dtype=np.int64))
        columns.append((name, shape, start, start + size))
        start += size
    return columns


def _buffer_size(layout: UploadLayout) -> int:
    return layout.rows * layout.row_size + layout.rows + layout.statistics


@dataclass
class Groups:
    """How a rank runs its clients: in groups of ``size`` through ``group_update`` when the
    algorithm has one and ``batched`` is on, else one by one."""

    batched: bool = True
    size: int = 16

    def run(self, algorithm: Algorithm, broadcast: Broadcast, clients: list, states: list) -> list[ClientUpload]:
        group_update = getattr(algorithm, "group_update", None)
        if not self.batched or group_update is None:
            return [algorithm.client_update(broadcast, c, s) for c, s in zip(clients, states)]
        uploads = []
        for start in range(0, len(clients), self.size):
            uploads += group_update(broadcast, clients[start:start + self.size], states[start:start + self.size])
        return uploads


class Downloads:
    """Bytes each client receives: the round's message (which the downlink cap bounds) and, under a
    compressed downlink, a catch-up for a client that missed rounds since it last took part - the
    missed messages' model bytes, or the dense model if that is less - so that it holds the replica
    the others hold before it applies this round's change. The catch-up is a transfer of its own,
    outside the round's cap, and logged apart. Every rank sees every message and every cohort, so
    every rank keeps the same books without communicating."""

    def __init__(self, num_clients: int, dense_model_bytes: int, compressed: bool):
        self.sent = 0  # model bytes of every committed broadcast so far
        self.synced = np.zeros(num_clients, dtype=np.int64)  # ``sent`` when each client last synced
        self.dense = dense_model_bytes
        self.compressed = compressed

    def round(self, message_bytes: int, model_bytes: int, has_model: bool, commits: bool,
              participants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(message bytes, catch-up bytes) per client for this round."""
        message = np.where(participants, message_bytes, 0).astype(np.int64)
        catch_up = np.zeros(len(self.synced), dtype=np.int64)
        if has_model and self.compressed:
            missed = self.sent - self.synced[participants]
            catch_up[participants] = np.minimum(missed, self.dense)
            if commits:
                self.sent += model_bytes
            self.synced[participants] = self.sent
        return message, catch_up


@dataclass
class Checkpoints:
    """When the loop stops to let rank 0 write a checkpoint: after every ``every``-th training
    round (0: never), when the run ends (if ``every``), and when ``stop_requested`` (asked on rank 0
    before each round) says so, after which every rank raises :class:`Stopped`. ``resume``: the
    snapshot to start from instead of the beginning."""

    every: int = 0
    write: Callable[[Snapshot, bool], None] | None = None  # rank 0; True: the run's end
    stop_requested: Callable[[], bool] = lambda: False
    resume: Snapshot | None = None


def _rank(transport: Transport) -> int:
    return 0 if transport.is_server else transport.worker + 1


def run(
    algorithm: Algorithm,
    scenario: Scenario,
    channels: Channels,
    transport: Transport,
    on_round: Callable[[RoundRecord], None] | None = None,
    groups: Groups | None = None,
    checkpoints: Checkpoints | None = None,
) -> Any:
    """Run to the end; returns the server's final state on the server, None elsewhere."""
    groups = groups or Groups()
    checkpoints = checkpoints or Checkpoints()
    clients = scenario.clients
    rank = _rank(transport)
    table = StateTable(algorithm.client_state_spec(), [algorithm.init_client(c) for c in clients])
    workloads = client_workloads([c.num_train for c in clients], [len(c.x_test) for c in clients], [c.seen for c in clients])
    # A client whose uplink keeps state (an error-feedback residual) or whose algorithm keeps private
    # state (a model of its own) always runs on its home rank, where that state lives; otherwise the
    # cohort is balanced over the workers every round.
    home = assign_clients(workloads, transport.workers)
    private_spec = getattr(algorithm, "client_private_spec", dict)()
    private: dict[int, dict[str, np.ndarray]] = {}  # this rank's clients' private state, made on first use
    pinned = channels.uplink.error_feedback or bool(private_spec)
    channel_states: dict[int, ClientChannel] = {}
    downloads = Downloads(len(clients), 4 * channels.downlink.layout.parameters, channels.downlink.cap is not None)
    server_state = algorithm.init_server() if transport.is_server else None
    specs = {phase: _metric_columns(spec) for phase, spec in algorithm.metric_specs().items()}
    limit = exact_sum.contribution_limit(len(clients))
    observe = getattr(algorithm, "observe", None)
    pinned_layout = _PinnedLayout(channels, private_spec) if pinned else None
    rounds = train_rounds = 0
    saved_at = -1  # rounds done when the last checkpoint was taken
    if checkpoints.resume is not None:
        snapshot = checkpoints.resume
        rounds, train_rounds, saved_at = snapshot.rounds, snapshot.train_rounds, snapshot.rounds
        table.values[:] = snapshot.client_table
        channels.downlink.held = np.array(snapshot.held_model, dtype=np.float32)
        downloads.sent, downloads.synced = snapshot.downloads_sent, snapshot.downloads_synced.astype(np.int64)
        if snapshot.observed and hasattr(algorithm, "restore_observed"):
            algorithm.restore_observed(snapshot.observed)
        if transport.is_server:
            server_state = snapshot.server_state
        if pinned_layout is not None and transport.worker >= 0:
            for cid in home[transport.worker]:
                pinned_layout.restore(snapshot.pinned[cid], int(snapshot.has_pinned[cid]), cid, clients[cid],
                                      algorithm, channel_states, private)

    def checkpoint(final: bool = False) -> None:
        """Every rank: gather the state that lives on home ranks; rank 0 writes the checkpoint."""
        nonlocal saved_at
        saved_at = rounds
        mine = home[transport.worker] if (pinned_layout is not None and transport.worker >= 0) else []
        width = pinned_layout.width if pinned_layout is not None else 0
        rows = np.zeros((len(mine), width + 1))
        for i, cid in enumerate(mine):
            rows[i] = pinned_layout.row(cid, channel_states, private)
        gathered = transport.gather_rows(rows, [len(group) for group in home]) if pinned_layout is not None else None
        if not transport.is_server or checkpoints.write is None:
            return
        pinned_rows = np.zeros((len(clients), width))
        has_pinned = np.zeros(len(clients), dtype=np.int8)
        if gathered is not None:
            order = [c for group in home for c in group]
            pinned_rows[order] = gathered[:, 1:]
            has_pinned[order] = gathered[:, 0].astype(np.int8)
        observed = getattr(algorithm, "observed_state", dict)()
        checkpoints.write(Snapshot(rounds, train_rounds, server_state, table.values.copy(),
                                   np.array(channels.downlink.held), downloads.sent, downloads.synced.copy(),
                                   pinned_rows, has_pinned, observed), final)

    while True:
        started = time.perf_counter()
        message: Message | str | None = None
        if transport.is_server:
            if checkpoints.stop_requested():
                message = STOP
            else:
                configured = algorithm.configure(server_state)
                message = END if configured is None else Message(
                    configured.phase, configured.round, channels.downlink.encode(configured), configured.cohort)
        message = transport.broadcast(message)
        if not isinstance(message, Message):
            # at the end always (a periodic one of this round would say "not complete"); on a stop
            # unless this very state was just saved
            if (message == END and checkpoints.every > 0) or (message == STOP and saved_at != rounds):
                checkpoint(final=message == END)
            if message == STOP:
                raise Stopped(rounds)
            return server_state
        broadcast = channels.downlink.decode(message.phase, message.round, message.data)
        broadcast.cohort = message.cohort
        if observe is not None:
            observe(broadcast)
        cohort = np.arange(len(clients)) if message.cohort is None else np.asarray(message.cohort, dtype=np.int64)
        participants = np.zeros(len(clients), dtype=bool)
        participants[cohort] = True
        if pinned:
            assignment = [[c for c in group if participants[c]] for group in home]
        else:
            assignment = [[int(cohort[i]) for i in group]
                          for group in assign_clients([workloads[c] for c in cohort], transport.workers)]
        mine = assignment[transport.worker] if transport.worker >= 0 else []
        layout = algorithm.upload_layout(broadcast)
        n_rows, row_size = layout.rows, layout.row_size
        columns = specs[broadcast.phase]
        metric_width = columns[-1][3] if columns else 0
        width = metric_width + table.width + 2  # metrics, the client's state, its rank's compute seconds, bytes up
        local = np.zeros(_buffer_size(layout), dtype=np.int64)
        rows = np.full((len(mine), width), np.nan)
        states = [table.views(cid) for cid in mine]
        for cid, state in zip(mine, states) if private_spec else ():
            if cid not in private:
                private[cid] = algorithm.init_private(clients[cid])
            state.update(private[cid])
        computing = time.perf_counter()
        if transport.worker >= 0:
            faults.in_client_work(rank, broadcast.round)
        uploads = groups.run(algorithm, broadcast, [clients[c] for c in mine], states)
        if uploads and uploads[0].delta is not None and faults.corrupts_upload(rank, broadcast.round):
            uploads[0].delta[0, 0] = np.nan
        for i, (cid, upload) in enumerate(zip(mine, uploads)):
            channel = channel_states.setdefault(cid, channels.uplink.init_client())
            try:
                bytes_up = _add_upload(local, upload, layout, channels.uplink, channel, broadcast.round, cid, limit)
            except OverflowError as exc:  # NaN or Inf (a diverging client) or beyond the exact sums: stop
                raise OverflowError(f"{broadcast.phase} round {broadcast.round}, client {cid}: {exc}; the run stops, "
                                    "its last checkpoint is kept") from None
            for name, _, lo, hi in columns:
                if name in upload.metrics:
                    rows[i, lo:hi] = np.asarray(upload.metrics[name], dtype=np.float64).reshape(-1)
            rows[i, metric_width:-2] = table.row(cid)
            rows[i, -1] = bytes_up
        rows[:, -2] = time.perf_counter() - computing  # the clients' work on this rank, channels included

        total = transport.reduce_sum(local)
        shared = transport.share_rows(rows, [len(group) for group in assignment])
        order = np.array([c for group in assignment for c in group], dtype=np.int64)
        table.update(order, shared[:, metric_width:-2])
        bytes_down, catch_up = downloads.round(len(message.data), channels.downlink.model_bytes(message.data),
                                               broadcast.model is not None, not broadcast.evaluation_only, participants)
        if transport.is_server:
            faults.in_aggregation(rank, broadcast.round)
            by_client = np.full((len(clients), width), np.nan)
            by_client[order] = shared
            total = exact_sum.decode(total)
            summed = Summed(
                weighted_delta=total[: n_rows * row_size].reshape(n_rows, row_size),
                weights=total[n_rows * row_size : n_rows * row_size + n_rows],
                statistics=total[n_rows * row_size + n_rows :],
            )
            aggregated = algorithm.aggregate(server_state, broadcast, summed)
            server_state = aggregated.state
            if on_round is not None:
                metrics = {name: by_client[:, lo:hi].reshape(-1, *shape) for name, shape, lo, hi in columns}
                bytes_up = np.where(participants, np.nan_to_num(by_client[:, -1]), 0)
                down_cap = channels.downlink.cap if broadcast.model is not None and channels.downlink.cap is not None else -1
                up_cap = channels.uplink.cap if n_rows and channels.uplink.cap is not None else -1
                on_round(RoundRecord(broadcast, metrics, bytes_down, bytes_up, aggregated, time.perf_counter() - started,
                                     down_cap, up_cap, dict(transport.moved), participants, catch_up,
                                     float(np.nanmax(shared[:, -2], initial=0.0))))
        rounds += 1
        if broadcast.phase == "train":
            train_rounds += 1
            if checkpoints.every > 0 and train_rounds % checkpoints.every == 0:
                checkpoint()


class _PinnedLayout:
    """One float64 row per client for the state that stays on its home rank: a flags column
    (RESIDUAL, PRIVATE), its error-feedback residual, its private arrays. Values go through
    float64 and back to their own dtypes (float16/32), which is exact."""

    def __init__(self, channels: Channels, private_spec: dict[str, tuple[int, ...]]):
        self.uplink = channels.uplink
        self.residual_size = channels.uplink.layout.parameters if channels.uplink.error_feedback else 0
        self.private = [(name, shape, int(np.prod(shape, dtype=np.int64))) for name, shape in private_spec.items()]
        self.width = self.residual_size + sum(size for _, _, size in self.private)

    def row(self, cid: int, channel_states: dict, private: dict) -> np.ndarray:
        row = np.zeros(self.width + 1)
        position = 1
        residual = channel_states[cid].residual if cid in channel_states else None
        if self.residual_size and residual is not None:
            row[0] += RESIDUAL
            row[position : position + self.residual_size] = residual.astype(np.float64).ravel()
        position += self.residual_size
        if cid in private:
            row[0] += PRIVATE
            for name, _, size in self.private:
                row[position : position + size] = np.asarray(private[cid][name], dtype=np.float64).ravel()
                position += size
        return row

    def restore(self, row: np.ndarray, flags: int, cid: int, client, algorithm: Algorithm, channel_states: dict,
                private: dict) -> None:
        if flags & RESIDUAL:
            channel = channel_states.setdefault(cid, self.uplink.init_client())
            channel.residual = row[: self.residual_size].reshape(
                self.uplink.layout.rows, self.uplink.layout.row_size).astype(self.uplink.residual_dtype)
        if flags & PRIVATE:
            arrays = algorithm.init_private(client)  # the right dtypes and shapes, then the saved values
            position = self.residual_size
            for name, shape, size in self.private:
                arrays[name][...] = row[position : position + size].reshape(shape)
                position += size
            private[cid] = arrays


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
    """One process is the server and the only worker: the reference for the MPI path."""

    is_server = True
    workers = 1
    worker = 0

    def __init__(self) -> None:
        self.moved = dict.fromkeys(COLLECTIVES, 0)  # nothing crosses a process boundary

    def broadcast(self, message: Message | str | None) -> Message | str:
        return message

    def reduce_sum(self, local: np.ndarray) -> np.ndarray:
        return local

    def share_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray:
        return rows

    def gather_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray:
        return rows
