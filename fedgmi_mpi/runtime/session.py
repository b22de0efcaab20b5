"""One run from start to end on every rank: checks, scenario, transport, loop, log, summary."""
from __future__ import annotations

import dataclasses
import datetime
import json
import resource
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from .. import __version__, compression, scenarios
from .. import config as config_mod
from ..algorithms import build as build_algorithm
from ..algorithms.components import ComponentSelection, Selection
from ..analysis.summary import EXACT_FIELDS, HELDOUT_FIELDS, SUMMARY_FIELDS
from ..config import Config
from ..errors import Stopped, UserError
from ..logs import checkpoint as checkpoint_file
from ..logs.checkpoint import Header, Snapshot, checkpoint_path
from ..logs.hdf5 import ModelSpec, RunLog, check_output, partial_path
from ..provenance import git_commit, mpi_library, versions
from ..stop import REQUEST, StopRequest
from . import faults, loop
from .device import choose_device, group_size
from .mpi import MPITransport, agree_on_errors, broadcast_bytes, launched_tasks, local_rank, mpi
from .observer import LogWriteError, Observer, format_summary



def _summary_specs(client_specs: dict, num_components: int) -> dict:
    """Scores of each scored phase; with per-sample responsibilities (a scenario with exact
    densities) also their agreement with the exact ones; with the test samples' own E-step
    (FedGMI's evaluation rounds) also its scores."""
    base = {name: () for name in SUMMARY_FIELDS}
    base["permutation"] = (num_components,)
    return {phase: dict(base, **({name: () for name in EXACT_FIELDS} if "responsibilities" in spec else {}),
                        **({name: () for name in HELDOUT_FIELDS} if "heldout_confusion" in spec else {}))
            for phase, spec in client_specs.items() if "confusion" in spec}


def _create_log(config: Config, scenario, algorithm, channels, out: Path, overwrite: bool, world_size: int,
                command: str, selection: Selection | None = None) -> RunLog:
    truth = {name: value for name, value in (("true_proportions", scenario.true_proportions()),
                                             ("component_counts", scenario.component_counts()),
                                             ("exact_responsibilities", scenario.exact_responsibilities()))
             if value is not None}
    attrs = {
        "config": config.to_json(), "seed": config.seed, "training_seed": config.run_seed, "versions": json_dumps(versions()),
        "mpi_library": mpi_library(), "world_size": world_size, "git_commit": git_commit(),
        "created": _now(), "command": command, "scenario": scenario.description,
        "algorithm": algorithm.name, "algorithm_reads_truth": bool(getattr(algorithm, "reads_truth", False)),
        **channels.attributes,
    }
    client_specs = algorithm.metric_specs()
    layout = algorithm.model_layout()
    describe = getattr(algorithm, "model_description", None)
    model = None if describe is None else ModelSpec(layout.rows, layout.row_size, layout.control_bytes // 4 + 1, describe())
    return RunLog.create(
        out, overwrite, attrs,
        seen=np.array([c.seen for c in scenario.clients]),
        num_train=np.array([c.num_train for c in scenario.clients]),
        num_test=np.array([len(c.x_test) for c in scenario.clients]),
        truth=truth, client_specs=client_specs, server_specs=algorithm.server_metric_specs(),
        summary_specs=_summary_specs(client_specs, scenario.num_components), model=model,
        component_selection=None if selection is None else selection.log_entries(),
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_memory_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gather_usage(comm, size: int, wall: float, cpu: float, device: torch.device) -> np.ndarray:
    """[ranks, 5] per rank: wall and CPU seconds of the round loop, peak memory (MiB), the CUDA
    device index it computed on (-1: the CPU) and that device's peak allocated memory (MiB), on
    rank 0: what waiting costs, what holding the clients costs, and which device made the numbers
    (CPU and GPU round differently, so reproducing a log to the bit needs its device type)."""
    on_cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if on_cuda else -1
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else 0.0
    mine = np.array([wall, cpu, _peak_memory_mb(), index, gpu_peak], dtype=np.float64)
    if size == 1:
        return mine[None]
    everyone = np.zeros((size, mine.size)) if comm.Get_rank() == 0 else None
    comm.Gather(mine, everyone, root=0)
    return everyone


def json_dumps(value) -> str:
    return json.dumps(value, sort_keys=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _transport(comm, algorithm, config: Config) -> loop.Transport:
    if comm.Get_size() > 1:
        return MPITransport(comm, list(algorithm.metric_specs()), config.runtime.poll_interval_ms,
                            config.runtime.round_timeout_s)
    return loop.SerialTransport()


def _check_resume(out: Path, overwrite: bool) -> None:
    """Rank 0, before any work: what --resume needs is there."""
    if overwrite:
        raise UserError("--resume continues a run and --overwrite starts one afresh: choose one")
    if out.exists():
        raise UserError(f"the run {out} is complete: nothing to resume")
    if not checkpoint_path(out).exists():
        raise UserError(f"no checkpoint {checkpoint_path(out)} to resume from (a run writes it every "
                        "runtime.checkpoint_every training rounds and when a signal stops it)")
    if not partial_path(out).exists():
        raise UserError(f"the log {partial_path(out)} that the checkpoint {checkpoint_path(out)} continues is missing")


def _load_checkpoint(comm, out: Path, config: Config, force: bool) -> tuple[Header, Snapshot, list[str]]:
    """Every rank: the checkpoint of ``out`` (rank 0 reads the file and checks it, every rank gets
    its bytes), and on rank 0 the config keys that differ from it (refused unless ``force``).
    Rank 0 decides alone and every rank learns its verdict, so none can be left in a collective."""
    path = checkpoint_path(out)
    data, error, differing = b"", None, []
    if comm.Get_rank() == 0:
        try:
            data = checkpoint_file.read_bytes(path)
            header, _ = checkpoint_file.parse(data, path)
            differing = checkpoint_file.differing_keys(header.config, config.to_dict())
            if (header.package_version, header.git_commit) != (__version__, git_commit()):
                differing.append(f"code version (checkpoint {header.package_version} {header.git_commit}, now "
                                 f"{__version__} {git_commit()})")
            if differing and not force:
                raise UserError(f"the checkpoint {path} belongs to another config: {'; '.join(differing)}; pass "
                                "--force to resume anyway (the log records it)")
        except UserError as exc:
            error = str(exc)
    if comm.Get_size() > 1:
        error = agree_on_errors(comm, error)
    if error is not None:
        raise UserError(error)
    if comm.Get_size() > 1:
        data = broadcast_bytes(comm, data if comm.Get_rank() == 0 else None, config.runtime.poll_interval_ms / 1000,
                               config.runtime.round_timeout_s)
    header, snapshot = checkpoint_file.parse(data, path)  # the bytes rank 0 parsed: the same result
    return header, snapshot, differing


def _choose_components(config: Config, scenario, comm, quiet: bool) -> tuple[int, Selection | None]:
    """algorithm.num_components=auto: the federated pre-pass of algorithms/components.py, on the
    same ranks and transport as the run. Every rank gets the chosen K (rank 0 decides); rank 0
    also the whole Selection, for the log."""
    selector = ComponentSelection(config, scenario)
    dense = dataclasses.replace(config, compression=config_mod.CompressionConfig())  # no model travels
    channels = compression.build(dense, selector)
    transport = _transport(comm, selector, config)
    bytes_up = np.zeros(len(scenario.clients))

    def count(record: loop.RoundRecord) -> None:
        bytes_up[:] += record.bytes_up

    if comm.Get_rank() == 0 and not quiet:
        click.echo(f"choosing K from {config.algorithm.auto_min_components} to "
                   f"{config.algorithm.auto_max_components} components (algorithm.num_components=auto)", err=True)
    started = time.perf_counter()
    state = loop.run(selector, scenario, channels, transport, on_round=count)
    chosen = np.zeros(1, dtype=np.int64)
    selection = None
    if comm.Get_rank() == 0:
        seen = np.array([c.seen for c in scenario.clients])
        selection = selector.result(state, float(bytes_up[seen].mean()) if seen.any() else 0.0,
                                    time.perf_counter() - started)
        chosen[0] = selection.chosen
        click.echo(selection.describe(), err=True)
    if comm.Get_size() > 1:
        comm.Bcast(chosen, root=0)
    return int(chosen[0]), selection


class _CheckpointWriter:
    """Rank 0's side of a checkpoint: completes the loop's snapshot with the observer's totals and
    the log's row counts, syncs the log, writes the file atomically."""

    def __init__(self, path: Path, config: Config, num_components: int, world_size: int, observer, log):
        self.path = path
        self.header = Header(config.to_dict(), num_components, __version__, git_commit(), world_size, complete=False)
        self.observer = observer
        self.log = log
        self.last_round: int | None = None

    def __call__(self, snapshot: Snapshot, final: bool = False) -> None:
        snapshot.observer = self.observer.state()
        snapshot.log_rows = self.log.row_counts()
        snapshot.log_model = self.log.model_contents()
        self.log.sync()
        checkpoint_file.write(self.path, dataclasses.replace(self.header, complete=final), snapshot)
        self.last_round = snapshot.rounds

    def describe_last(self) -> str:
        if self.last_round is None:
            return "no checkpoint was written yet"
        return (f"the last checkpoint ({self.path}, after round {self.last_round - 1}) is intact: make room, then run "
                "the same command with --resume")


def run_session(config_file: str | None, overrides: tuple[str, ...], out: Path, overwrite: bool, quiet: bool,
                command: str, resume: bool = False, force: bool = False) -> None:
    """Every UserError this raises is raised on all ranks alike (agreed before any other collective).
    ``resume``: continue from ``out``'s checkpoint (``force``: even if the config differs)."""
    stop = REQUEST.install()  # SIGUSR1/SIGTERM: finish the round, checkpoint, exit 3 (``python -m`` installs it earlier)
    try:
        _run(config_file, overrides, out, overwrite, quiet, command, resume, force, stop)
    finally:
        stop.uninstall()


def _run(config_file: str | None, overrides: tuple[str, ...], out: Path, overwrite: bool, quiet: bool,
         command: str, resume: bool, force: bool, stop: StopRequest) -> None:
    MPI = mpi()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    expected = launched_tasks()
    if size == 1 and expected and expected > 1:
        raise UserError(
            f"the launcher started {expected} tasks but MPI sees a world of 1: mpi4py is not using the launcher's "
            "MPI (on Slurm try srun --mpi=pmi2, or rebuild mpi4py against the site MPI; see README)")

    # Setup that may fail on some ranks only (a config file or data file missing on one node, an
    # unwritable log on rank 0) ends the job on all of them, with the lowest rank's message.
    error, scenario, log, device, selection = None, None, None, torch.device("cpu"), None
    node_rank = local_rank(comm) if size > 1 else 0
    try:
        config = config_mod.load(config_file, overrides)
        if faults.planned() and rank == 0:
            click.echo(f"note: {faults.VARIABLE} is set: faults will be injected (a testing aid)", err=True)
        if config.runtime.threads_per_rank > 0:
            torch.set_num_threads(config.runtime.threads_per_rank)
        scenario = scenarios.build(config)
        device = choose_device(config.runtime.device, node_rank) if (rank > 0 or size == 1) else torch.device("cpu")
        if rank == 0 and resume:  # before any work: choosing K takes rounds
            _check_resume(out, overwrite)
        elif rank == 0:
            check_output(out, overwrite)
    except UserError as exc:
        error = str(exc)
    if size > 1:
        error = agree_on_errors(comm, error)
    if error is not None:
        raise UserError(error)

    header = snapshot = None
    num_components = config.algorithm.num_components
    if resume:
        header, snapshot, differing = _load_checkpoint(comm, out, config, force)
        num_components = header.num_components
    elif num_components == "auto":
        num_components, selection = _choose_components(config, scenario, comm, quiet)
    try:
        algorithm = build_algorithm(config, scenario, device,
                                    None if num_components == "scenario" else int(num_components))
        channels = compression.build(config, algorithm)
        if rank == 0 and resume:
            record = {"round": snapshot.rounds, "train_round": snapshot.train_rounds, "world_size": size,
                      "time": _now(), "command": command, "forced_keys": differing}
            log = RunLog.reopen(out, snapshot.log_rows, snapshot.log_model, record)
        elif rank == 0:
            log = _create_log(config, scenario, algorithm, channels, out, overwrite, size, command, selection)
    except UserError as exc:
        error = str(exc)
    if size > 1:
        error = agree_on_errors(comm, error)
    if error is not None:
        if log is not None and resume:
            log.close()  # the resumed log is the run's: keep it for the next --resume
        elif log is not None:
            log.discard()
        raise UserError(error)

    transport = _transport(comm, algorithm, config)
    observer = None
    if rank == 0:
        if size - 1 > len(scenario.clients):  # it runs (the idle ranks only wait, without burning a core); say so
            click.echo(f"note: {size - 1} worker ranks for {len(scenario.clients)} clients: "
                       f"{size - 1 - len(scenario.clients)} rank(s) will hold no client and stay idle", err=True)
        if not quiet:
            hosted = "all clients in-process" if size == 1 else f"{size - 1} worker rank(s)"
            click.echo(f"fedgmi {algorithm.name}: {scenario.description}; {len(scenario.clients)} clients on "
                       f"{hosted}; device {device if size == 1 else config.runtime.device}; log {out}", err=True)
        observer = Observer(log, scenario, config.algorithm.rounds, quiet=quiet)
        if snapshot is not None:
            observer.restore(snapshot.observer)
            if differing:
                click.echo(f"warning: resuming despite a different config (--force, recorded in the log): "
                           f"{'; '.join(differing)}", err=True)
            if not quiet:
                click.echo(f"resuming from {checkpoint_path(out)}: round {snapshot.rounds}, training round "
                           f"{snapshot.train_rounds}", err=True)
    writer = _CheckpointWriter(checkpoint_path(out), config, int(algorithm.num_components), size, observer,
                               log) if rank == 0 else None
    checkpoints = loop.Checkpoints(config.runtime.checkpoint_every, writer, stop, snapshot)
    wall_start, cpu_start = time.perf_counter(), _cpu_seconds()
    try:
        loop.run(algorithm, scenario, channels, transport, on_round=observer,
                 groups=loop.Groups(config.runtime.batched, group_size(config.runtime.group_size, algorithm, device)),
                 checkpoints=checkpoints)
    except BaseException as exc:
        if log is not None:
            try:
                log.close()  # leave rank 0's partial log closed cleanly before the job is brought down
            except (OSError, RuntimeError):  # a full disk may refuse the last flush too: the first error counts
                pass
        if isinstance(exc, Stopped):  # every rank alike: a clean, resumable stop
            raise Stopped(exc.rounds, f"stopped by {stop.signal_name or 'a signal'} after round {exc.rounds - 1}: checkpoint "
                          f"{checkpoint_path(out)} written; run the same command with --resume to continue") from None
        if isinstance(exc, (LogWriteError, checkpoint_file.CheckpointWriteError)):
            raise RuntimeError(f"{exc}; {writer.describe_last()}") from exc
        if isinstance(exc, UserError):  # after setup a user error on one rank cannot be agreed on: abort
            raise RuntimeError(str(exc)) from exc
        raise
    usage = _gather_usage(comm, size, time.perf_counter() - wall_start, _cpu_seconds() - cpu_start, device)
    if rank == 0:
        summary = observer.closing_summary()
        summary["rank_wall_s"], summary["rank_cpu_s"], summary["rank_peak_mb"] = usage[:, 0], usage[:, 1], usage[:, 2]
        summary["rank_device"] = ["cpu" if index < 0 else f"cuda:{index:.0f}" for index in usage[:, 3]]
        summary["rank_gpu_peak_mb"] = usage[:, 4]
        final_attrs = {"summary": json_dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                               for k, v in summary.items()}), "finished": _now()}
        path = log.finish(final_attrs)
        if sys.stderr.isatty() and not quiet:
            sys.stderr.write("\n")
        click.echo(format_summary(summary))
        click.echo(f"log written to {path}")

