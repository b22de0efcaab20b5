"""The run log: one HDF5 file written by rank 0, the only place that writes HDF5.

Layout (see docs/hdf5-schema.md):
  /                    attrs: config (JSON), seed, training_seed, versions (JSON), mpi_library, world_size,
                       git_commit, schema_version, created, command, the budget and methods
  /status              [1] int8: 0 running, 1 complete (readable while the run goes on)
  /rounds/{phase, wall_time, participated, bytes_down, bytes_up, downlink_cap, uplink_cap,
           mpi_broadcast_bytes, mpi_reduce_bytes, mpi_gather_bytes}   one row per communication round
  /<phase>/round       communication round index of each row of this phase
  /<phase>/<metric>    [rows, clients, ...] per-client metrics the algorithm reports
  /<phase>/server/<m>  [rows, ...] server-side metrics
  /<phase>/summary/<m> [rows] scores against the truth (train and evaluate phases)
  /events              [n] text: collapse warnings and other notices
  /clients/{seen, num_train, num_test}, /truth/{true_proportions, component_counts}
  /component_selection/{candidates, vocabularies, heldout_log_likelihood, best, chosen}   only when
                       K was chosen from the data; attrs: method, description
  /model/{parameters, control, control_length, round, train_round}   the global model of the
                       latest evaluation round, overwritten in place; attrs: description (JSON)

The file is written under SWMR to ``<out>.partial`` and flushed every round, so it can be read
while the run goes on and stays valid if the run dies; on success it is fsynced and renamed to
``<out>``. An existing ``<out>`` or ``<out>.partial`` is never overwritten unless asked.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import fsync_path
from ..errors import UserError
from .checkpoint import checkpoint_path, remove_stale

SCHEMA_VERSION = 4  # 4: /model (the saved global model) and the held-out log-likelihoods
MPI_COLLECTIVES = ("broadcast", "reduce", "gather")


class CapExceeded(RuntimeError):
    """A client's bytes in a round exceed the cap: the budget was broken, and the run must stop."""


def check_caps(round_index: int, bytes_down: np.ndarray, bytes_up: np.ndarray, downlink_cap: int,
               uplink_cap: int) -> None:
    for direction, sent, cap in (("down", bytes_down, downlink_cap), ("up", bytes_up, uplink_cap)):
        if cap >= 0 and np.nanmax(sent, initial=0) > cap:
            client = int(np.nanargmax(sent))
            raise CapExceeded(f"round {round_index}: client {client} moved {int(sent[client])} bytes {direction}, "
                              f"over the cap of {cap}")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it (or choose another --out)")
    part = partial_path(out)
    checkpoint = checkpoint_path(out)
    if checkpoint.exists() and not overwrite:
        raise UserError(f"{checkpoint} exists (a run that can continue: add --resume); or pass --overwrite to start afresh")
    if part.exists() and not overwrite:
        raise UserError(f"{part} exists (a run that did not finish?); remove it or pass --overwrite")
    if not out.parent.exists():
        raise UserError(f"output folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"output folder {out.parent} is not writable")


def _growable(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> None:
    row = 8 * int(np.prod(shape, dtype=np.int64))
    # Rows over many clients are mostly NaN or 0 when cohorts are small: deflate them (a standard
    # HDF5 filter, which h5dump and every HDF5 reader understand).
    filters = {"compression": "gzip", "compression_opts": 1, "shuffle": True} if row > 2**14 else {}
    group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                         chunks=(max(1, min(64, 2**20 // max(1, row))), *shape), **filters)


def _append(dataset: h5py.Dataset, row: Any) -> None:
    n = dataset.shape[0]
    dataset.resize(n + 1, axis=0)
    dataset[n] = row


def _growable_rows(file: h5py.File) -> dict[str, int]:
    rows = {}

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset) and node.maxshape and node.maxshape[0] is None:
            rows[name] = int(node.shape[0])

    file.visititems(visit)
    return rows


@dataclass(frozen=True)
class ModelSpec:
    """The model the log keeps: its [rows, row_size] float32 parameters, the largest control
    payload beside them, and a JSON-able description to rebuild it (algorithm.model_description)."""

    rows: int
    row_size: int
    control_size: int
    description: dict


def _create_model_group(file: h5py.File, spec: ModelSpec) -> None:
    group = file.create_group("model")
    group.attrs["description"] = json.dumps(spec.description, sort_keys=True)
    group.attrs["note"] = ("the global model of the latest evaluation round (the one its clients evaluated), "
                           "overwritten in place; round -1: none yet")
    group.create_dataset("parameters", data=np.full((spec.rows, spec.row_size), np.nan, dtype=np.float32))
    group["parameters"].attrs["legend"] = ("float32 [rows, row_size]; row k = component (or model) k, its tensors "
                                           "in the order of description.tensors")
    group.create_dataset("control", data=np.zeros(max(spec.control_size, 1), dtype=np.float32))
    group.create_dataset("control_length", data=np.zeros(1, dtype=np.int64))
    group["control"].attrs["legend"] = "the round's control payload (first control_length values), e.g. FedGMM's Gaussians"
    group.create_dataset("round", data=np.full(1, -1, dtype=np.int64))
    group.create_dataset("train_round", data=np.full(1, -1, dtype=np.int64))


def _reopen_for_writing(path: Path, attempts: int = 100) -> h5py.File:
    """Reopen the closed log read-write. A reader that is looking at it under SWMR (``fedgmi
    watch``, ``analyze``) holds its lock for moments at a time: wait for a gap rather than fail the
    whole run at its last step; after ~30 s, open without the lock (readers only read)."""
    for attempt in range(attempts):
        try:
            return h5py.File(path, "r+")
        except BlockingIOError:
            time.sleep(min(0.5, 0.02 * (attempt + 1)))
    return h5py.File(path, "r+", locking=False)


class RunLog:
    def __init__(self, out: Path, file: h5py.File, phases: list[str]):
        self.out = out
        self.file = file
        self.phases = phases

    @classmethod
    def create(
        cls,
        out: str | Path,
        overwrite: bool,
        attrs: dict[str, Any],
        seen: np.ndarray,
        num_train: np.ndarray,
        num_test: np.ndarray,
        truth: dict[str, np.ndarray],
        client_specs: dict[str, dict[str, tuple[int, ...]]],
        server_specs: dict[str, dict[str, tuple[int, ...]]],
        summary_specs: dict[str, dict[str, tuple[int, ...]]],
        model: ModelSpec | None = None,
        component_selection: dict[str, Any] | None = None,
    ) -> "RunLog":
        out = Path(out)
        check_output(out, overwrite)
        part = partial_path(out)
        checkpoint_path(out).unlink(missing_ok=True)  # --overwrite: a stale checkpoint must not meet the new log
        try:
            # SWMR needs the 1.10 format; capping it there keeps the file readable by
            # HDF5 1.10 tools (Debian's h5dump) even when h5py ships a newer library.
            file = h5py.File(part, "w", libver=("v110", "v110"))
        except OSError as exc:
            raise UserError(f"cannot create {part}: {exc}") from None
        phases = list(client_specs)
        num_clients = len(seen)
        for key, value in attrs.items():
            file.attrs[key] = value
        file.attrs["schema_version"] = SCHEMA_VERSION
        status = file.create_dataset("status", data=np.zeros(1, dtype=np.int8))
        status.attrs["legend"] = "0 running, 1 complete"
        clients = file.create_group("clients")
        clients["seen"] = seen.astype(np.int8)
        clients["num_train"] = num_train.astype(np.int64)
        clients["num_test"] = num_test.astype(np.int64)
        if component_selection is not None:  # how K was chosen (algorithm.num_components=auto)
            chosen = file.create_group("component_selection")
            for name, value in component_selection.items():
                if isinstance(value, str):
                    chosen.attrs[name] = value
                else:
                    chosen[name] = value
        truth_group = file.create_group("truth")
        truth_group.attrs["note"] = "evaluation only: never used in training or initialisation"
        for name, value in truth.items():
            truth_group[name] = value
        rounds = file.create_group("rounds")
        _growable(rounds, "phase", (), np.int8)
        rounds["phase"].attrs["phases"] = json.dumps(phases)
        _growable(rounds, "wall_time", (), np.float64)
        _growable(rounds, "compute_time", (), np.float64)
        rounds["compute_time"].attrs["legend"] = ("seconds the busiest worker rank spent computing its clients (with their "
                                                  "channels); wall_time minus this is the framework's share")
        _growable(rounds, "participated", (num_clients,), np.int8)
        rounds["participated"].attrs["legend"] = "1: the client took part in the round (its cohort); 0: it did nothing"
        _growable(rounds, "bytes_down", (num_clients,), np.int64)
        _growable(rounds, "bytes_up", (num_clients,), np.int64)
        _growable(rounds, "bytes_catch_up", (num_clients,), np.int64)
        rounds["bytes_catch_up"].attrs["legend"] = ("bytes a client that missed rounds downloads first, to hold the "
                                                   "model the others hold (compressed downlink only; outside the cap)")
        for direction in ("downlink", "uplink"):
            _growable(rounds, f"{direction}_cap", (), np.int64)
            rounds[f"{direction}_cap"].attrs["legend"] = "bytes a client may move this round; -1: no cap"
        for collective in MPI_COLLECTIVES:
            _growable(rounds, f"mpi_{collective}_bytes", (), np.int64)
            rounds[f"mpi_{collective}_bytes"].attrs["legend"] = "bytes this MPI collective delivered; 0 serial"
        for phase in phases:
            group = file.create_group(phase)
            _growable(group, "round", (), np.int64)
            for name, shape in client_specs[phase].items():
                _growable(group, name, (num_clients, *shape), np.float64)
            server = group.create_group("server")
            for name, shape in server_specs.get(phase, {}).items():
                _growable(server, name, shape, np.float64)
            summary = group.create_group("summary")
            for name, shape in summary_specs.get(phase, {}).items():
                _growable(summary, name, shape, np.float64)
        _growable(file, "events", (), h5py.string_dtype())
        if model is not None:
            _create_model_group(file, model)
        file.swmr_mode = True  # from here on: append and flush only; readers may attach
        file.flush()
        return cls(out, file, phases)

    @classmethod
    def reopen(cls, out: Path, rows: dict[str, int], model: dict[str, np.ndarray], record: dict[str, Any]) -> "RunLog":
        """Continue the log of an interrupted run from a checkpoint. A writer that was killed
        leaves its file marked as open, which HDF5 refuses to reopen for writing; so the log is
        copied, as far as the checkpoint goes, into a new file that then replaces it (the old one
        stays until the copy is complete). Rows written after the checkpoint are dropped (no round
        appears twice), the saved model is put back as it was then, and the resumption is
        recorded in the ``resumes`` attribute (JSON list)."""
        part = partial_path(out)
        if not part.is_file():
            raise UserError(f"the log {part} that the checkpoint continues is missing")
        remove_stale(part.parent, f".{part.name}.*.resume")
        copy = part.with_name(f".{part.name}.{os.getpid()}.resume")
        try:
            with h5py.File(part, "r", libver="latest", swmr=True) as source, \
                    h5py.File(copy, "w", libver=("v110", "v110")) as target:
                growable = _growable_rows(source)
                if set(growable) != set(rows):
                    raise UserError(f"the log {part} does not belong to this checkpoint (its datasets differ)")
                short = [path for path, count in rows.items() if growable[path] < count]
                if short:
                    raise UserError(f"the log {part} has fewer rows of {short[0]} than its checkpoint "
                                    f"({growable[short[0]]} < {rows[short[0]]}): it does not belong to it")
                for key, value in source.attrs.items():
                    target.attrs[key] = value
                for name in source:
                    source.copy(source[name], target, name=name)
                for path, count in rows.items():
                    target[path].resize(count, axis=0)
                for name, value in model.items():
                    target["model"][name][...] = value
                resumes = json.loads(target.attrs.get("resumes", "[]"))
                target.attrs["resumes"] = json.dumps(resumes + [record], sort_keys=True)
                target["status"][0] = 0
            fsync_path(copy)
            os.replace(copy, part)
            fsync_path(part.parent)
        except (OSError, RuntimeError, KeyError) as exc:
            raise UserError(f"cannot continue the log {part}: {str(exc).splitlines()[0]}") from None
        finally:
            copy.unlink(missing_ok=True)
        file = h5py.File(part, "r+", libver=("v110", "v110"))
        phases = json.loads(file["rounds/phase"].attrs["phases"])
        file.swmr_mode = True
        file.flush()
        return cls(out, file, phases)

    def row_counts(self) -> dict[str, int]:
        """Rows of every growable dataset now (a checkpoint keeps them, to cut the log back to them)."""
        return _growable_rows(self.file)

    def model_contents(self) -> dict[str, np.ndarray]:
        return {name: self.file["model"][name][()] for name in self.file["model"]} if "model" in self.file else {}

    def sync(self) -> None:
        """Flush and fsync: what a checkpoint claims is in the log is on the disk before it."""
        self.file.flush()
        fsync_path(partial_path(self.out))

    def write_round(
        self,
        phase: str,
        round_index: int,
        wall_time: float,
        bytes_down: np.ndarray,
        bytes_up: np.ndarray,
        client_metrics: dict[str, np.ndarray],
        server_metrics: dict[str, np.ndarray],
        summary: dict[str, Any] | None,
        downlink_cap: int = -1,
        uplink_cap: int = -1,
        mpi_bytes: dict[str, int] | None = None,
        participated: np.ndarray | None = None,
        catch_up: np.ndarray | None = None,
        compute_time: float = 0.0,
    ) -> None:
        check_caps(round_index, bytes_down, bytes_up, downlink_cap, uplink_cap)  # before anything is written
        f = self.file
        _append(f["rounds/phase"], self.phases.index(phase))
        _append(f["rounds/wall_time"], wall_time)
        _append(f["rounds/compute_time"], compute_time)
        _append(f["rounds/participated"], np.ones(len(bytes_down), np.int8) if participated is None
                else np.asarray(participated, dtype=np.int8))
        _append(f["rounds/bytes_down"], np.nan_to_num(bytes_down).astype(np.int64))
        _append(f["rounds/bytes_up"], np.nan_to_num(bytes_up).astype(np.int64))
        _append(f["rounds/bytes_catch_up"], np.zeros(len(bytes_down), np.int64) if catch_up is None else catch_up)
        _append(f["rounds/downlink_cap"], downlink_cap)
        _append(f["rounds/uplink_cap"], uplink_cap)
        for collective in MPI_COLLECTIVES:
            _append(f[f"rounds/mpi_{collective}_bytes"], (mpi_bytes or {}).get(collective, 0))
        group = f[phase]
        _append(group["round"], round_index)
        for name, values in client_metrics.items():
            _append(group[name], values)
        for name, values in server_metrics.items():
            if name in group["server"]:
                _append(group["server"][name], values)
        if summary is not None:
            for name in group["summary"]:
                _append(group["summary"][name], summary[name])
        f.flush()

    def save_model(self, round_index: int, train_round: int, parameters: np.ndarray, control: np.ndarray) -> None:
        """Overwrite the stored model in place (SWMR allows writes to existing datasets, not new
        ones): a reader sees the previous model or this one, its round beside it."""
        group = self.file["model"]
        group["round"][0] = -1  # while the parameters change, no round vouches for them
        group["parameters"][...] = parameters
        group["control"][...] = 0.0
        group["control"][: len(control)] = control
        group["control_length"][0] = len(control)
        group["train_round"][0] = train_round
        self.file.flush()
        group["round"][0] = round_index
        self.file.flush()

    def event(self, text: str) -> None:
        _append(self.file["events"], text)
        self.file.flush()

    def finish(self, final_attrs: dict[str, Any]) -> Path:
        """Mark complete, close, add the closing attributes, fsync and move into place."""
        self.file["status"][0] = 1
        self.file.close()
        part = partial_path(self.out)
        with _reopen_for_writing(part) as file:  # attributes cannot be added under SWMR
            for key, value in final_attrs.items():
                file.attrs[key] = value
        fsync_path(part)
        os.replace(part, self.out)
        fsync_path(self.out.parent)
        return self.out

    def discard(self) -> None:
        """Close and delete the partial file: the run never started."""
        self.close()
        partial_path(self.out).unlink(missing_ok=True)

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()
