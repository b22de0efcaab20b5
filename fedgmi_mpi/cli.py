"""Command line: ``fedgmi run``, ``info``, ``compare``, ``export-scenario``, and the post-analysis
``analyze``, ``report``, ``infer``, ``combine`` and ``watch`` (these read logs on CPU, without MPI), and
``data inspect`` / ``data convert`` for users' files.

Launch across ranks with ``mpiexec -n N python -m mpi4py -m fedgmi_mpi run ...``. With one rank
(plain ``fedgmi run``) the serial runtime runs everything in-process.

Exit codes: 0 success; 2 bad input (one line on stderr, nothing written or overwritten);
3 stopped by SIGUSR1/SIGTERM after writing a checkpoint (continue with ``--resume``);
1 anything else, after which every rank is brought down (MPI_Abort), never left hanging.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from . import __version__
from .errors import Stopped, UserError
from .provenance import mpi_library, versions

if TYPE_CHECKING:
    from .analysis.model import SavedModel


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedgmi")
def cli() -> None:
    """FedGMI over MPI: federated mixtures of VAEs on clusters and laptops."""


@cli.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set algorithm.rounds=50 (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 log to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing log.")
@click.option("--quiet", is_flag=True, help="No progress lines (events and the summary still print).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT's checkpoint (OUT.checkpoint), appending to OUT.partial; same config.")
@click.option("--force", is_flag=True, help="With --resume: continue even if the config differs (the log records it).")
def run(config_file: str | None, overrides: tuple[str, ...], out: str, overwrite: bool, quiet: bool, resume: bool,
        force: bool) -> None:
    """Run FedGMI on a scenario (default: rotated digits) and log to OUT."""
    from .runtime.session import run_session

    if force and not resume:
        raise UserError("--force only applies with --resume")
    run_session(config_file, overrides, Path(out), overwrite=overwrite, quiet=quiet, command=" ".join(sys.argv),
                resume=resume, force=force)


@cli.command()
def info() -> None:
    """MPI library, world size, torch and devices."""
    import torch
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 0:
        for key, value in versions().items():
            click.echo(f"{key:12s} {value}")
        click.echo(f"{'mpi':12s} {mpi_library()}")
        click.echo(f"{'mpi_version':12s} {'.'.join(map(str, MPI.Get_version()))}")
        click.echo(f"{'world_size':12s} {comm.Get_size()}")
        click.echo(f"{'threads':12s} torch intra-op {torch.get_num_threads()}")
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                click.echo(f"{'cuda:' + str(i):12s} {torch.cuda.get_device_name(i)}")
        else:
            click.echo(f"{'devices':12s} cpu (no CUDA device visible)")


@cli.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value for every run.")
@click.option("--algorithms", default="fedgmi,oracle,local,fedavg,fedprox,ifca,fedem,fedgmm", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--ranks", default=3, show_default=True, type=click.IntRange(1), help="MPI ranks per run (1: serial).")
@click.option("--folder", required=True, type=click.Path(file_okay=False), help="One log per run; existing logs are reused.")
def compare(config_file: str | None, overrides: tuple[str, ...], algorithms: str, seeds: str, ranks: int,
            folder: str) -> None:
    """Run several algorithms over several seeds and print one comparison table."""
    from . import compare as compare_mod

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    names = [a.strip() for a in algorithms.split(",") if a.strip()]
    results = compare_mod.run_all(config_file, overrides, names, seed_list, ranks, Path(folder), click.echo)
    click.echo(compare_mod.table(results))


@cli.command("export-scenario")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npz file to write.")
def export_scenario(config_file: str | None, overrides: tuple[str, ...], out: str) -> None:
    """Write the configured scenario as a user-data .npz (an example of the file format)."""
    from . import config as config_mod
    from . import scenarios
    from .atomic import check_new_file, write_atomically
    from .scenarios import npz_file

    config = config_mod.load(config_file, overrides)
    target = check_new_file(Path(out), (".npz",))
    write_atomically(target, lambda temporary: npz_file.save(scenarios.build(config), temporary))
    click.echo(f"wrote {target}")


@cli.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: one object per log, plus the comparison.")
@click.option("--csv", "as_csv", is_flag=True, help="One CSV row per log.")
def analyze(logs: tuple[str, ...], as_json: bool, as_csv: bool) -> None:
    """Summarise run logs (finished, or .partial); several logs give one comparison table."""
    from .analysis import tables
    from .analysis.reader import load

    if as_json and as_csv:
        raise UserError("choose one of --json and --csv")
    heads = [tables.headline(load(path)) for path in logs]
    if as_json:
        click.echo(tables.to_json(heads))
    elif as_csv:
        click.echo(tables.to_csv(heads), nl=False)
    else:
        click.echo("\n\n".join(tables.format_text(h) for h in heads))
        if len(heads) > 1:
            click.echo("\ncomparison (mean ± sd over the logs of each algorithm and budget):")
            click.echo(tables.format_comparison(tables.comparison(heads)))


@cli.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
def report(logs: tuple[str, ...], out: str) -> None:
    """One self-contained HTML report (plots embedded) of one or several logs."""
    from .analysis.report import write_report

    click.echo(f"wrote {write_report(list(logs), Path(out))}")


@cli.command()
@click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False), help="A run log with a saved model.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Clients' samples (.npz, docs/data.md).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the results: .npz or .json.")
@click.option("--clients", default=None, help="Client ids in the file, e.g. 40-47 (default: all).")
@click.option("--level", default=0.9, show_default=True, type=click.FloatRange(0.01, 0.999),
              help="Probability of each credible interval.")
@click.option("--prior", default=0.5, show_default=True, type=click.FloatRange(min=1e-3),
              help="Dirichlet prior on the proportions (0.5: Jeffreys).")
@click.option("--draws", default=2000, show_default=True, type=click.IntRange(100), help="Posterior draws (Gibbs).")
@click.option("--seed", default=None, type=int, help="Noise seed (default: the run's, which reproduces its evaluation).")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
@click.option("--labels/--no-labels", "use_labels", default=None,
              help="Score each sample by p_k(x) p_k(y|x) with its label y (the file's y) instead of p_k(x) alone "
                   "(default: as the run's evaluation did, algorithm.eval_uses_labels).")
def infer(log_path: str, data: str, out: str | None, clients: str | None, level: float, prior: float, draws: int,
          seed: int | None, device: str, use_labels: bool | None) -> None:
    """A new client's proportions from a log's saved model, by E-steps alone, with uncertainty."""
    from .analysis import inference_output
    from .analysis.infer import infer_clients, parse_clients, score
    from .analysis.model import read_model

    target = inference_output.check_target(out)
    model = read_model(log_path)
    arrays = _clients_samples(model, data)
    ids = parse_clients(clients, np.unique(arrays["client"]) if "client" in arrays else np.zeros(1, dtype=np.int64))
    device = _torch_device(device)
    _note_other_device(model, device)
    if use_labels is None:
        use_labels = bool(model.config.get("algorithm", {}).get("eval_uses_labels", False))
    try:  # the checks of the data against the model live in infer_clients; the one line names the file
        results = infer_clients(model, arrays, ids, level=level, prior=prior, draws=draws, seed=seed, device=device,
                                use_labels=use_labels)
    except UserError as error:
        raise UserError(f"{data}: {error}") from None
    scores = score(results, model.matching)
    click.echo(inference_output.format_table(model, results, scores, level, use_labels))
    if target is not None:
        inference_output.write(target, model, results, scores, level, prior, use_labels)
        click.echo(f"wrote {target}")


@cli.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(dir_okay=False),
              help="Clients' samples (.npz, docs/data.md); default: the runs' own clients, rebuilt from their config.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the combined estimate: .npz or .json.")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
def combine(logs: tuple[str, ...], data: str | None, out: str | None, device: str) -> None:
    """One estimate from several training starts (training_seed) of the same run."""
    from .analysis import combine as combine_mod
    from .analysis.model import read_model

    target = None if out is None else combine_mod.check_target(out)  # refused before minutes of E-steps
    first = read_model(logs[0])
    arrays = None if data is None else _clients_samples(first, data)
    device = _torch_device(device)
    _note_other_device(first, device)
    combined = combine_mod.combine(list(logs), arrays, device=device)
    click.echo(combine_mod.format_text(combined))
    if target is not None:
        click.echo(f"wrote {combine_mod.write(combined, target)}")


@cli.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between looks.")
@click.option("--once", is_flag=True, help="Print where the run stands and return.")
@click.option("--timeout", default=None, type=click.FloatRange(0), help="Stop watching after this many seconds.")
@click.option("--give-up", default=1800.0, show_default=True, type=click.FloatRange(0),
              help="Exit 2 after this many seconds without a new round (a dead run).")
def watch(log: str, interval: float, once: bool, timeout: float | None, give_up: float) -> None:
    """Follow a running job's log (LOG.h5 or its .partial) until the run ends, then summarise it."""
    from .analysis import tables
    from .analysis import watch as watch_mod
    from .analysis.reader import load

    if once:
        click.echo(watch_mod.format_snapshot(watch_mod.snapshot(log)))
        return
    state = watch_mod.watch(log, interval, click.echo, timeout=timeout, stale_after=min(300.0, give_up / 2),
                            give_up_after=give_up)
    if state["complete"]:
        click.echo("run complete:")
        click.echo(tables.format_text(tables.headline(load(state["log"]))))


def _clients_samples(model: SavedModel, data: str) -> dict[str, np.ndarray]:
    """A data file's arrays, checked for a log's saved model: a Gaussian-likelihood model takes
    real-valued features, a Bernoulli one needs x in [0, 1]."""
    from .scenarios.npz_file import read_arrays

    true_components = int(model.config.get("scenario", {}).get("num_components", model.num_components))
    return read_arrays(data, required=("x",), num_components=true_components,
                       unit_range=model.description.get("likelihood", "bernoulli") != "gaussian")


def _note_other_device(model, device: str) -> None:
    """A GPU run's E-steps redone on the CPU (or the reverse) draw other noise and round
    differently: fine for new clients, but not the run's own figures to the bit. Say so."""
    run_type = model.device_type
    if run_type is not None and run_type != device.split(":")[0]:
        click.echo(f"note: the run computed its clients on {run_type}; --device {device} gives other noise and "
                   f"rounding than its log (--device {run_type} reproduces its evaluation to the bit)", err=True)


def _torch_device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device visible")
    return str(device)


@cli.group("data")
def data_group() -> None:
    """Users' data files: inspect them; convert IDX or HDF5 to the .npz layout (docs/data.md)."""


@data_group.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
def data_inspect(file: str) -> None:
    """What FILE holds (.npz, HDF5, IDX) and whether it is valid; exit 2 with the first problem."""
    from .data.readers import examine

    report = examine(file)
    click.echo(report.text)
    if report.problem:
        raise UserError(report.problem)


@data_group.command("convert")
@click.option("--images", type=click.Path(dir_okay=False), help="IDX images [N, H, W] (gzipped or not).")
@click.option("--labels", type=click.Path(dir_okay=False), help="IDX labels [N] of those images.")
@click.option("--hdf5", "hdf5_file", type=click.Path(dir_okay=False), help="HDF5 file with the layout's datasets.")
@click.option("--x", "x_name", metavar="NAME", help="HDF5 dataset of the features (default x).")
@click.option("--y", "y_name", metavar="NAME", help="HDF5 dataset of the labels (default y).")
@click.option("--client", "client_name", metavar="NAME", help="HDF5 dataset of the client ids (default client).")
@click.option("--test", "test_name", metavar="NAME", help="HDF5 dataset of the test marks (default test).")
@click.option("--component", "component_name", metavar="NAME", help="HDF5 dataset of the true components.")
@click.option("--proportions", "proportions_name", metavar="NAME", help="HDF5 dataset of the true proportions.")
@click.option("--clients", type=click.IntRange(1), help="Split a file without client ids into N equal contiguous clients.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npz to write (must not exist).")
def data_convert(images: str | None, labels: str | None, hdf5_file: str | None, x_name: str | None,
                 y_name: str | None, client_name: str | None, test_name: str | None, component_name: str | None,
                 proportions_name: str | None, clients: int | None, out: str) -> None:
    """Write the .npz layout from IDX images + labels, or from an HDF5 file (one client unless --clients N)."""
    from .data.readers import convert

    given = {"x": x_name, "y": y_name, "client": client_name, "test": test_name, "component": component_name,
             "proportions": proportions_name}
    names = {key: value for key, value in given.items() if value is not None}
    if hdf5_file is not None:
        if images is not None or labels is not None:
            raise UserError("give either --images and --labels, or --hdf5, not both")
        click.echo(convert([hdf5_file], out, names=names, clients=clients))
        return
    if names:
        raise UserError(f"--{next(iter(names))} names an HDF5 dataset; it needs --hdf5")
    if images is None or labels is None:
        raise UserError("give --images and --labels (IDX files), or --hdf5 FILE")
    click.echo(convert([images, labels], out, clients=clients))


def _world_size() -> int:
    if "mpi4py.MPI" not in sys.modules:
        return 1
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size() if MPI.Is_initialized() and not MPI.Is_finalized() else 1


def _rank() -> int:
    if "mpi4py.MPI" not in sys.modules:
        return 0
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else 0


def main() -> None:
    """Entry point: user errors exit 2 with one line; any other failure aborts every rank."""
    try:
        cli.main(standalone_mode=False)
    except (UserError, click.ClickException, Stopped) as exc:
        # Every rank meets the same error (the same command line; runtime.session agrees on setup
        # errors before any other collective), or the same stop, so all may finalize together:
        # exit 2 (3 for a stop), no MPI_Abort.
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        if _rank() == 0:
            click.echo(f"{'note' if isinstance(exc, Stopped) else 'error'}: {message}{hint}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        if _world_size() > 1:
            from mpi4py import MPI

            if isinstance(exc, Stopped):
                # nobody leaves before rank 0 has written the checkpoint, closed the log and said so:
                # srun --kill-on-bad-exit kills the other tasks when the first one exits with 3
                MPI.COMM_WORLD.Barrier()
            MPI.Finalize()
        sys.exit(3 if isinstance(exc, Stopped) else 2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        _abort_or_exit(130)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - anything else must take the whole job down
        sys.stderr.write(f"rank {_rank()}: fatal error\n")
        traceback.print_exc()
        _abort_or_exit(1)


def _abort_or_exit(code: int) -> None:
    sys.stderr.flush()
    if _world_size() > 1:
        from mpi4py import MPI

        # The launcher forwards a rank's stderr through a pipe; aborting at once can kill the
        # forwarder before the traceback above reaches the user (seen about 1 time in 3 here).
        time.sleep(0.5)
        MPI.COMM_WORLD.Abort(code)
    sys.stdout.flush()
    # No interpreter teardown after a fatal error: an HDF5 file whose disk refused a write can
    # crash the library while it is collected (seen: a segfault after a full disk)
    os._exit(code)
