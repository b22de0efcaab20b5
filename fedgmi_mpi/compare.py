"""``fedgmi compare``: several algorithms over several seeds on one scenario, one table.

Each (algorithm, seed) runs as its own job (``mpiexec -n RANKS ... fedgmi_mpi run``, or the serial
runtime for one rank) with its own log in the folder; a log already there is read instead of run
again, so an interrupted comparison resumes. The table is ``fedgmi analyze``'s over those logs
(analysis/tables.py): matched proportion errors, assignment accuracy and adjusted Rand index where
the algorithm has proportions, personalised accuracy (mean and 10th-percentile client), held-out
log-likelihood, training uplink per client, wall time; mean ± standard deviation over seeds.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from typing import Any

from . import config as config_mod
from .analysis import tables
from .analysis.reader import load
from .errors import UserError


def command(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "fedgmi_mpi", *args]
    candidate = Path(sys.executable).parent / "mpiexec"
    launcher = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if launcher is None:
        raise UserError("no mpiexec found (install the mpich wheel, or use --ranks 1)")
    return [launcher, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "fedgmi_mpi", *args]


def scores(log: Path) -> dict[str, Any]:
    """The log's headline numbers (``fedgmi analyze``); a run that did not finish is refused."""
    run = load(log)
    if run.status != "complete":
        raise UserError(f"{log} is not a complete run; remove it to run it again")
    return tables.headline(run)


def run_all(config_file: str | None, overrides: tuple[str, ...], algorithms: list[str], seeds: list[int],
            ranks: int, folder: Path, echo) -> list[dict[str, Any]]:
    for name in algorithms:  # refuse bad input before any job runs
        config_mod.load(config_file, [*overrides, f"algorithm.name={name}"])
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:
        for name in algorithms:
            log = folder / f"{name}-seed{seed}.h5"
            if not log.exists():
                sets = [*overrides, f"algorithm.name={name}", f"seed={seed}"]
                args = ["run", *([config_file] if config_file else []), "--quiet", "--out", str(log)]
                args += [a for s in sets for a in ("--set", s)]
                echo(f"running {name}, seed {seed} -> {log}")
                done = subprocess.run(command(ranks, args), capture_output=True, text=True)
                if done.returncode != 0:
                    raise UserError(f"{name}, seed {seed} failed (exit {done.returncode}): "
                                    f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
            results.append(scores(log))
    return results


def table(results: list[dict[str, Any]]) -> str:
    """One row per algorithm (and budget): mean ± standard deviation over the seeds."""
    return tables.format_comparison(tables.comparison(results))
