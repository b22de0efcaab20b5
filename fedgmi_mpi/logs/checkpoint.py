"""Checkpoints: everything a run needs to continue exactly, in one standard HDF5 file beside its log.

``<out>.checkpoint`` (see docs/checkpoints.md) holds the loop's state between two rounds (the
server's state, every client's small state, the downlink replica, the bookkeeping of downloads,
the error-feedback residuals and private state gathered from the worker ranks), the observer's
running totals, the row count of every dataset of the log at that moment, and the config and
code version it belongs to. It is written whole or not at all: a temporary file beside it,
fsynced, renamed over the previous one (which stays until the new one is complete).

Reading never unpickles: values are HDF5 datasets and attributes, and a server state (a tree of
dataclasses, arrays, numbers, strings, sets and tuples) is rebuilt field by field; the only
classes it may construct are dataclasses defined in this package.
"""
from __future__ import annotations

import dataclasses
import errno as errno_codes
import importlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import fsync_path
from ..errors import UserError

FORMAT = "fedgmi-checkpoint"
FORMAT_VERSION = 1
# Keys that may change between a run and its resumption without changing its results: where and
# how fast it runs (devices, threads, polling, batching) and how often it checkpoints.
FREE_ON_RESUME = ("runtime.device", "runtime.threads_per_rank", "runtime.poll_interval_ms", "runtime.batched",
                  "runtime.group_size", "runtime.checkpoint_every", "runtime.round_timeout_s")


def disk_error(exc: BaseException) -> str | None:
    """What the disk said, when an HDF5 write failed because of it (ENOSPC, EIO, EFBIG...); h5py
    reports some of these as RuntimeError with the errno in the text."""
    for candidate in (exc, exc.__context__):
        if isinstance(candidate, OSError) and candidate.errno:
            return os.strerror(candidate.errno)
        found = re.search(r"errno = (\d+)", str(candidate)) if candidate is not None else None
        if found and int(found.group(1)) in errno_codes.errorcode:
            return os.strerror(int(found.group(1)))
    return None


class CheckpointWriteError(OSError):
    """The disk refused the checkpoint; the previous one is untouched."""


def remove_stale(folder: Path, pattern: str) -> None:
    """Temporaries that a killed run left behind (its pid in their name; ours would be new)."""
    for stale in folder.glob(pattern):
        stale.unlink(missing_ok=True)


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint")


@dataclass
class Snapshot:
    """The run between two rounds, as rank 0 assembles it (the loop's part) and the session
    completes it (the observer's totals, the log's row counts)."""

    rounds: int  # communication rounds done
    train_rounds: int
    server_state: Any
    client_table: np.ndarray  # [clients, width] every client's small state (runtime.state)
    held_model: np.ndarray  # the downlink replica: the model clients hold
    downloads_sent: int
    downloads_synced: np.ndarray  # [clients]
    pinned: np.ndarray  # [clients, width] float64 per-client state that lives on its home rank
    has_pinned: np.ndarray  # [clients] int8: 1 residual, 2 private state (bit flags)
    observed: dict[str, np.ndarray]  # what the algorithm keeps from broadcasts on every rank
    observer: dict[str, Any] = field(default_factory=dict)
    log_rows: dict[str, int] = field(default_factory=dict)
    log_model: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Header:
    """Who a checkpoint belongs to."""

    config: dict
    num_components: int
    package_version: str
    git_commit: str
    world_size: int
    complete: bool  # written when the run ended: nothing is left to run


# ---- values: a tree of dataclasses, containers, arrays and scalars -----------------------------
def _write_value(group: h5py.Group, name: str, value: Any) -> None:
    if value is None:
        node = group.create_dataset(name, data=np.zeros(0, np.int8))
        node.attrs["kind"] = "none"
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        node = group.create_group(name)
        node.attrs["kind"] = "dataclass"
        node.attrs["type"] = f"{type(value).__module__}:{type(value).__qualname__}"
        for f in dataclasses.fields(value):
            _write_value(node, f.name, getattr(value, f.name))
    elif isinstance(value, (set, frozenset, tuple, list)):
        node = group.create_group(name)
        node.attrs["kind"] = "set" if isinstance(value, (set, frozenset)) else type(value).__name__
        for i, item in enumerate(sorted(value) if isinstance(value, (set, frozenset)) else value):
            _write_value(node, str(i), item)
        node.attrs["length"] = len(value)
    elif isinstance(value, dict):
        node = group.create_group(name)
        node.attrs["kind"] = "dict"
        for key, item in value.items():
            if not isinstance(key, str) or "/" in key or key in (".", ""):
                raise TypeError(f"checkpoint: cannot store the key {key!r} of {name}")
            _write_value(node, key, item)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint: cannot store an array of dtype {value.dtype} ({name})")
        node = group.create_dataset(name, data=value)
        node.attrs["kind"] = "array"
    elif isinstance(value, (bool, np.bool_)):
        node = group.create_dataset(name, data=np.int8(value))
        node.attrs["kind"] = "bool"
    elif isinstance(value, np.generic):
        node = group.create_dataset(name, data=value)
        node.attrs["kind"] = "numpy_scalar"
    elif isinstance(value, int):
        node = group.create_dataset(name, data=np.int64(value))
        node.attrs["kind"] = "int"
    elif isinstance(value, float):
        node = group.create_dataset(name, data=np.float64(value))
        node.attrs["kind"] = "float"
    elif isinstance(value, str):
        node = group.create_dataset(name, data=value, dtype=h5py.string_dtype())
        node.attrs["kind"] = "str"
    else:
        raise TypeError(f"checkpoint: cannot store {name} of type {type(value).__name__}")


def _our_dataclass(spec: str) -> type:
    """The class a checkpoint names: only a dataclass defined in one of the algorithms' modules
    (algorithms.STATE_MODULES), found by its own module and name, never any other import."""
    from ..algorithms import STATE_MODULES

    module_name, _, qualname = spec.partition(":")
    if module_name not in STATE_MODULES:
        raise ValueError(f"names a class outside fedgmi_mpi's server states ({spec})")
    target = importlib.import_module(module_name).__dict__.get(qualname)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target) and target.__module__ == module_name
            and target.__qualname__ == qualname):
        raise ValueError(f"names {spec}, which is not a server-state dataclass")
    return target


def _read_value(node: h5py.Group | h5py.Dataset) -> Any:
    kind = node.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind == "none":
        return None
    if kind == "dataclass":
        cls = _our_dataclass(str(node.attrs["type"]))
        values = {f.name: _read_value(node[f.name]) for f in dataclasses.fields(cls) if f.name in node}
        return cls(**values)
    if kind in ("set", "tuple", "list"):
        items = [_read_value(node[str(i)]) for i in range(int(node.attrs["length"]))]
        return {"set": set, "tuple": tuple, "list": list}[kind](items)
    if kind == "dict":
        return {key: _read_value(node[key]) for key in node}
    if kind == "array":
        return node[()]
    if kind == "numpy_scalar":
        return node[()]
    if kind == "bool":
        return bool(node[()])
    if kind == "int":
        return int(node[()])
    if kind == "float":
        return float(node[()])
    if kind == "str":
        value = node[()]
        return value.decode() if isinstance(value, bytes) else str(value)
    raise ValueError(f"{node.name} has no known kind ({kind!r})")


# ---- the file ------------------------------------------------------------------------------------
def write(path: Path, header: Header, snapshot: Snapshot) -> None:
    """Write atomically: a temporary beside ``path``, fsynced, renamed over it; on failure the
    previous checkpoint is left as it was and the temporary removed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    remove_stale(path.parent, f".{path.name}.*.tmp")
    try:
        _write_file(temporary, path, header, snapshot)
    except (OSError, RuntimeError) as exc:
        reason = disk_error(exc)
        if reason is None:
            raise
        raise CheckpointWriteError(f"cannot write the checkpoint {path}: {reason}") from None
    finally:
        if temporary.exists():
            temporary.unlink()
    fsync_path(path.parent)


def _write_file(temporary: Path, path: Path, header: Header, snapshot: Snapshot) -> None:
    with h5py.File(temporary, "w", libver=("v110", "v110")) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(header.config, sort_keys=True)
        f.attrs["num_components"] = header.num_components
        f.attrs["package_version"] = header.package_version
        f.attrs["git_commit"] = header.git_commit
        f.attrs["world_size"] = header.world_size
        f.attrs["complete"] = int(header.complete)
        f.attrs["rounds"] = snapshot.rounds
        f.attrs["train_rounds"] = snapshot.train_rounds
        loop = f.create_group("loop")
        loop["client_table"] = snapshot.client_table
        loop["held_model"] = snapshot.held_model
        loop["downloads_sent"] = np.int64(snapshot.downloads_sent)
        loop["downloads_synced"] = snapshot.downloads_synced
        loop["pinned"] = snapshot.pinned
        loop["has_pinned"] = snapshot.has_pinned
        _write_value(f, "server_state", snapshot.server_state)
        _write_value(f, "observed", snapshot.observed)
        _write_value(f, "observer", snapshot.observer)
        _write_value(f, "log_model", snapshot.log_model)
        names = sorted(snapshot.log_rows)
        log = f.create_group("log_rows")
        log["paths"] = np.array(names, dtype=h5py.string_dtype())
        log["rows"] = np.array([snapshot.log_rows[n] for n in names], dtype=np.int64)
    fsync_path(temporary)
    os.replace(temporary, path)


def read_bytes(path: Path) -> bytes:
    """The checkpoint file's bytes (rank 0 reads them once and broadcasts them)."""
    if not path.is_file():
        raise UserError(f"no checkpoint {path} to resume from (a run writes it every runtime.checkpoint_every "
                        "training rounds and when it is stopped by a signal)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from None


def parse(data: bytes, path: Path) -> tuple[Header, Snapshot]:
    """The header and snapshot of a checkpoint's bytes; UserError for anything that is not a
    complete checkpoint of this format."""
    if not data.startswith(b"\x89HDF\r\n\x1a\n"):
        raise UserError(f"{path} is not a checkpoint (not an HDF5 file: truncated, corrupt or another kind of file)")
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise UserError(f"{path} is an HDF5 file but not a fedgmi checkpoint")
            if int(f.attrs["format_version"]) != FORMAT_VERSION:
                raise UserError(f"{path} is a version {int(f.attrs['format_version'])} checkpoint; this fedgmi "
                                f"reads version {FORMAT_VERSION}")
            header = Header(config=json.loads(f.attrs["config"]), num_components=int(f.attrs["num_components"]),
                            package_version=str(f.attrs["package_version"]), git_commit=str(f.attrs["git_commit"]),
                            world_size=int(f.attrs["world_size"]), complete=bool(f.attrs["complete"]))
            loop = f["loop"]
            log = f["log_rows"]
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in log["paths"][()]]
            snapshot = Snapshot(
                rounds=int(f.attrs["rounds"]), train_rounds=int(f.attrs["train_rounds"]),
                server_state=_read_value(f["server_state"]),
                client_table=loop["client_table"][()], held_model=loop["held_model"][()],
                downloads_sent=int(loop["downloads_sent"][()]), downloads_synced=loop["downloads_synced"][()],
                pinned=loop["pinned"][()], has_pinned=loop["has_pinned"][()],
                observed=_read_value(f["observed"]), observer=_read_value(f["observer"]),
                log_rows=dict(zip(paths, (int(n) for n in log["rows"][()]))), log_model=_read_value(f["log_model"]),
            )
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError, AttributeError, ImportError, RuntimeError,
            RecursionError) as exc:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): {str(exc).splitlines()[0]}") from None
    return header, snapshot


def differing_keys(saved: dict, current: dict) -> list[str]:
    """``key (checkpoint X, now Y)`` for every config key that differs, except those free to change."""
    def flat(mapping: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in mapping.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, after = flat(saved), flat(current)
    return [f"{key} (checkpoint {before.get(key, 'unset')!r}, now {after.get(key, 'unset')!r})"
            for key in sorted(set(before) | set(after))
            if key not in FREE_ON_RESUME and before.get(key) != after.get(key)]
