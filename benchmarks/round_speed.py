"""Per-round speed of the runtimes on the default scenario; prints ratios, asserts nothing.

  python benchmarks/round_speed.py [--rounds 10] [--ranks 3]

Compares (median wall seconds per training round, from each run's HDF5 log):
  serial (one process)  vs  MPI with N ranks   -> what using several cores buys
  MPI with 1 worker rank  vs  N - 1 worker ranks   -> rank scaling (the server rank only waits)
  MPI, blocking waits (MPICH busy-polls)  vs  MPI, polite waits (default)  -> what idle ranks cost
and reports each rank's CPU-busy share (how much a waiting rank burns).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def run(label: str, ranks: int, rounds: int, extra: list[str], folder: Path) -> dict:
    out = folder / f"{label}.h5"
    sets = [f"algorithm.rounds={rounds}", f"algorithm.warmup_rounds={rounds // 2}", "algorithm.topic_iterations=30",
            "algorithm.eval_every=0", *extra]
    args = ["-m", "fedgmi_mpi", "run", "--quiet", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    if ranks == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stderr}")
    with h5py.File(out, "r") as f:
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        train = f["rounds/phase"][()] == phases.index("train")
        per_round = float(np.median(f["rounds/wall_time"][()][train]))
        compute = float(np.median(f["rounds/compute_time"][()][train]))
        summary = json.loads(f.attrs["summary"])
    busy = [cpu / wall for wall, cpu in zip(summary["rank_wall_s"], summary["rank_cpu_s"])]
    print(f"{label:28s} {per_round:7.3f} s/round  total {summary['wall_time_s']:6.1f} s  "
          f"busiest rank computing {compute:6.3f} s ({1 - compute / per_round:4.0%} framework)  "
          f"CPU busy per rank {', '.join(f'{b:.0%}' for b in busy)}", flush=True)
    return {"per_round": per_round, "compute": compute, "total": summary["wall_time_s"], "busy": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        serial = run("serial (1 process)", 1, args.rounds, [], folder)
        one_worker = run("mpi n=2 (1 worker), polite", 2, args.rounds, [], folder)
        polite = run(f"mpi n={args.ranks}, polite wait", args.ranks, args.rounds, [], folder)
        busy = run(f"mpi n={args.ranks}, busy wait", args.ranks, args.rounds, ["runtime.poll_interval_ms=0"], folder)
    print(f"speed-up of MPI n={args.ranks} over serial, per training round: "
          f"{serial['per_round'] / polite['per_round']:.2f}x")
    print(f"rank scaling, 1 -> {args.ranks - 1} worker ranks, per training round: "
          f"{one_worker['per_round'] / polite['per_round']:.2f}x (compute of the busiest rank alone: "
          f"{one_worker['compute'] / polite['compute']:.2f}x; group_speed.py --corun 2 gives the machine's ceiling)")
    print(f"busy-wait / polite-wait time per training round: {busy['per_round'] / polite['per_round']:.2f}x "
          f"(server CPU busy {busy['busy'][0]:.0%} vs {polite['busy'][0]:.0%})")


if __name__ == "__main__":
    main()
