"""Command line: ``fedgmi run``, ``fedgmi info``, ``fedgmi export-scenario``.

Launch across ranks with ``mpiexec -n N python -m mpi4py -m fedgmi_mpi run ...``. With one rank
(plain ``fedgmi run``) the serial runtime runs everything in-process.

Exit codes: 0 success; 2 bad input (one line on stderr, nothing written or overwritten);
1 anything else, after which every rank is brought down (MPI_Abort), never left hanging.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import UserError
from .provenance import mpi_library, versions


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
def run(config_file: str | None, overrides: tuple[str, ...], out: str, overwrite: bool, quiet: bool) -> None:
    """Run FedGMI on a scenario (default: rotated digits) and log to OUT."""
    from .runtime.session import run_session

    run_session(config_file, overrides, Path(out), overwrite=overwrite, quiet=quiet, command=" ".join(sys.argv))


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
    import os

    from . import config as config_mod
    from . import scenarios
    from .scenarios import npz_file

    config = config_mod.load(config_file, overrides)
    target = Path(out)
    if target.suffix != ".npz":
        raise UserError(f"--out must end in .npz, got {out}")
    if target.exists():
        raise UserError(f"{target} exists; choose another --out")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp.npz")
    npz_file.save(scenarios.build(config), temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    click.echo(f"wrote {target}")


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
    except (UserError, click.ClickException) as exc:
        # Every rank meets the same error (the same command line; runtime.session agrees on setup
        # errors before any other collective), so all may finalize together: exit 2, no MPI_Abort.
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        if _rank() == 0:
            click.echo(f"error: {message}{hint}", err=True)
        sys.stdout.flush()
        if _world_size() > 1:
            from mpi4py import MPI

            MPI.Finalize()
        sys.exit(2)
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
    sys.exit(code)
