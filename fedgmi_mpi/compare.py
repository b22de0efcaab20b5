"""``fedgmi compare``: several algorithms over several seeds on one scenario, one table.

Each (algorithm, seed) runs as its own job (``mpiexec -n RANKS ... fedgmi_mpi run``, or the serial
runtime for one rank) with its own log in the folder; a log already there is read instead of run
again, so an interrupted comparison resumes. The table: personalised test accuracy of the final
evaluation (mean over seen clients, and its 10th-percentile client), matched proportion MAE and
assignment accuracy where the algorithm has proportions, training uplink per client, wall time;
mean ± standard deviation over seeds.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from . import config as config_mod
from .errors import UserError

COLUMNS = ("accuracy", "accuracy_p10", "proportion_mae", "assignment_accuracy", "uplink_mib", "wall_s")


def command(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "fedgmi_mpi", *args]
    candidate = Path(sys.executable).parent / "mpiexec"
    launcher = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if launcher is None:
        raise UserError("no mpiexec found (install the mpich wheel, or use --ranks 1)")
    return [launcher, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "fedgmi_mpi", *args]


def scores(log: Path) -> dict[str, float]:
    with h5py.File(log, "r") as f:
        if f["status"][0] != 1:
            raise UserError(f"{log} is not a complete run; remove it to run it again")
        summary = json.loads(f.attrs["summary"])
        seen = f["clients/seen"][()].astype(bool)
        accuracy = f["evaluate/accuracy"][-1][seen]
        accuracy = accuracy[~np.isnan(accuracy)]
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        train = f["rounds/phase"][()] == phases.index("train")
        uplink = f["rounds/bytes_up"][()][train].sum() / max(int(seen.sum()), 1) / 2**20
    return {"accuracy": summary.get("accuracy", np.nan), "accuracy_p10": float(np.percentile(accuracy, 10)),
            "proportion_mae": summary.get("proportion_mae", np.nan),
            "assignment_accuracy": summary.get("assignment_accuracy", np.nan),
            "uplink_mib": float(uplink), "wall_s": summary.get("wall_time_s", np.nan)}


def run_all(config_file: str | None, overrides: tuple[str, ...], algorithms: list[str], seeds: list[int],
            ranks: int, folder: Path, echo) -> dict[str, list[dict[str, float]]]:
    for name in algorithms:  # refuse bad input before any job runs
        config_mod.load(config_file, [*overrides, f"algorithm.name={name}"])
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in algorithms}
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
            results[name].append(scores(log))
    return results


def table(results: dict[str, list[dict[str, float]]]) -> str:
    def cell(values: list[float], digits: int) -> str:
        values = [v for v in values if v is not None and not np.isnan(v)]
        if not values:
            return "n/a"
        return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"

    header = ("| algorithm | seeds | accuracy | 10th-pct client acc. | proportion MAE | assignment | "
              "uplink MiB/client | wall s |")
    lines = [header, "|" + "---|" * 8]
    for name, runs in results.items():
        columns = [cell([r[c] for r in runs], 1 if c in ("uplink_mib", "wall_s") else 4) for c in COLUMNS]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(columns) + " |")
    return "\n".join(lines)
