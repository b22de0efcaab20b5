"""The simulator at scale: many clients, cohorts per round; prints figures, asserts nothing.

  python benchmarks/scale.py [--clients 1000,10000] [--cohort 100] [--rounds 20] [--ranks 3]

Runs FedGMI under ``mpiexec`` on the rotated-digits scenario with each number of clients, a cohort
of ``--cohort`` clients per training round, evaluation of a fixed draw of 200 clients at the end
only, and prints for each run: seconds per training round (median), the initialisation's wall
time (codebook and topic model, which involve every seen client), peak memory per rank, and from
two runs the memory each extra (idle) client costs a rank. The time per training round should
depend on the cohort, not on how many clients exist.
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


def run(clients: int, cohort: int, rounds: int, ranks: int, folder: Path, extra: list[str]) -> dict:
    out = folder / f"scale-{clients}.h5"
    sets = [f"scenario.num_clients={clients}", "scenario.unseen_clients=0", f"algorithm.clients_per_round={cohort}",
            f"algorithm.rounds={rounds}", f"algorithm.warmup_rounds={rounds // 2}", "algorithm.eval_every=0",
            "algorithm.eval_clients=200", *extra]
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py",
           "-m", "fedgmi_mpi", "run", "--quiet", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{clients} clients failed:\n{result.stderr[-3000:]}")
    with h5py.File(out, "r") as f:
        summary = json.loads(f.attrs["summary"])
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        phase = f["rounds/phase"][()]
        wall = f["rounds/wall_time"][()]
        train = phase == phases.index("train")
        init = np.isin(phase, [phases.index("codebook"), phases.index("topics")])
        participated = f["rounds/participated"][()][train].sum(1)
        size_mb = out.stat().st_size / 2**20
    return {"clients": clients, "round_s": float(np.median(wall[train])), "init_s": float(wall[init].sum()),
            "init_rounds": int(init.sum()), "cohort": int(participated.max()), "peak_mb": summary["rank_peak_mb"],
            "wall_s": summary["wall_time_s"], "mae": summary["proportion_mae"], "log_mb": size_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1000,10000")
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for clients in [int(c) for c in args.clients.split(",")]:
            r = run(clients, args.cohort, args.rounds, args.ranks, Path(tmp), args.sets)
            results.append(r)
            print(f"{clients:6d} clients, cohort {r['cohort']}: {r['round_s']:.2f} s per training round; "
                  f"initialisation {r['init_s']:.0f} s ({r['init_rounds']} rounds); "
                  f"peak memory per rank {', '.join(f'{m:.0f}' for m in r['peak_mb'])} MiB; "
                  f"log {r['log_mb']:.0f} MiB; whole run {r['wall_s']:.0f} s", flush=True)
    if len(results) >= 2:
        small, large = results[0], results[-1]
        extra = large["clients"] - small["clients"]
        worker_mb = max(large["peak_mb"][1:]) - max(small["peak_mb"][1:])
        print(f"per training round, {large['clients']} against {small['clients']} clients: "
              f"{large['round_s'] / small['round_s']:.2f}x the time for {extra / small['clients'] + 1:.0f}x the clients")
        print(f"memory per idle client on a worker rank: {worker_mb * 2**20 / extra / 1024:.1f} KiB "
              f"(server rank: {(large['peak_mb'][0] - small['peak_mb'][0]) * 2**20 / extra / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
