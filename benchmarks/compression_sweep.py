"""What the communication budget costs in accuracy: one table from one command.

  python benchmarks/compression_sweep.py [--folder runs/compression-sweep] [--ranks 3] [--set key=value ...]
                                         [--only LABEL ...] [--row LABEL:KEY=VALUE,...] [--list]

Runs the default scenario (or whatever --set says) under ``mpiexec`` once per row below, each
with its own log in --folder (a log that is already there is read, not rerun, so an interrupted
sweep resumes), then prints one table: matched proportion MAE, assignment accuracy and
personalised accuracy of the final evaluation, total bytes up and down per client over the
training rounds (and over the whole run, initialisation included), the largest message against
its cap, the methods ``auto`` chose, and wall time.

Rows: the uplink budget over 32, 8, 4, 2, 1, 0.5, 0.25, 0.1 bits per parameter (downlink dense);
the downlink over 8, 2, 1 at 1 bit up; component selection off at 1 and 0.25 bits up; and
0.25 bits up with 1 bit down, with selection on and off.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent

SWEEP: list[tuple[str, list[str]]] = [
    *[(f"up {bits:g}", [f"compression.uplink_bits={bits}"]) for bits in (32, 8, 4, 2, 1, 0.5, 0.25, 0.1)],
    *[(f"up 1 down {bits:g}", ["compression.uplink_bits=1", f"compression.downlink_bits={bits}"]) for bits in (8, 2, 1)],
    ("up 1 no-select", ["compression.uplink_bits=1", "compression.select_components=false"]),
    ("up 0.25 no-select", ["compression.uplink_bits=0.25", "compression.select_components=false"]),
    ("up 0.25 down 1", ["compression.uplink_bits=0.25", "compression.downlink_bits=1"]),
    ("up 0.25 down 1 no-select", ["compression.uplink_bits=0.25", "compression.downlink_bits=1",
                                  "compression.select_components=false"]),
]


def slug(label: str) -> str:
    return label.replace(" ", "_").replace(".", "p")


def run(label: str, sets: list[str], folder: Path, ranks: int) -> Path:
    out = folder / f"{slug(label)}.h5"
    if out.exists():
        return out
    args = ["-m", "fedgmi_mpi", "run", "--quiet", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py", *args]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stderr[-3000:]}")
    print(f"  ran {label} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        summary = json.loads(f.attrs["summary"])
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        train = f["rounds/phase"][()] == phases.index("train")
        seen = f["clients/seen"][()].astype(bool)
        up, down = f["rounds/bytes_up"][()], f["rounds/bytes_down"][()]
        bcast = f["rounds/mpi_broadcast_bytes"][()]
        return {
            "mae": summary.get("proportion_mae"), "assign": summary.get("assignment_accuracy"),
            "acc": summary.get("accuracy"),
            "up_train": up[train][:, seen].sum(0).mean(), "down_train": down[train][:, seen].sum(0).mean(),
            "up_all": up[:, seen].sum(0).mean(), "down_all": down[:, seen].sum(0).mean(),
            "max_up": int(up[train].max()), "max_down": int(down[train].max()),
            "up_cap": int(f.attrs["uplink_cap_bytes"]), "down_cap": int(f.attrs["downlink_cap_bytes"]),
            "bcast_per_round": float(np.median(bcast[train])) if train.any() else float("nan"),
            "methods": f"{f.attrs['uplink_method']} / {f.attrs['downlink_method']}",
            "wall": summary["wall_time_s"],
            "round_s": float(np.median(f["rounds/wall_time"][()][train])),
        }


def mib(value: float) -> str:
    return f"{value / 2**20:.2f}"


def table(rows: list[tuple[str, dict]]) -> str:
    dense = next((r for label, r in rows if label == "up 32"), None)
    head = ("| run | MAE | assignment | accuracy | up MiB/client (train / all) | down MiB/client (train / all) "
            "| largest upload / cap | MPI bcast per train round | methods up / down | s per train round | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in rows:
        cap = "dense" if r["up_cap"] < 0 else f"{r['max_up']} / {r['up_cap']}"
        lines.append(
            f"| {label} | {r['mae']:.4f} | {r['assign']:.4f} | {r['acc']:.4f} | {mib(r['up_train'])} / {mib(r['up_all'])} "
            f"| {mib(r['down_train'])} / {mib(r['down_all'])} | {cap} | {r['bcast_per_round'] / 1024:.1f} KiB "
            f"| {r['methods']} | {r['round_s']:.2f} | {r['wall']:.0f} |")
    if dense is not None:
        lines.append("")
        lines.append(f"Against `up 32` (dense): margins are MAE - {dense['mae']:.4f} and accuracy - {dense['acc']:.4f}.")
        for label, r in rows:
            if label != "up 32":
                lines.append(f"- {label}: MAE {r['mae'] - dense['mae']:+.4f}, accuracy {100 * (r['acc'] - dense['acc']):+.2f} "
                             f"points, training uplink {dense['up_train'] / max(r['up_train'], 1):.0f}x less, "
                             f"downlink {dense['down_train'] / max(r['down_train'], 1):.0f}x less, "
                             f"{r['round_s'] / dense['round_s']:.2f}x the dense time per training round")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="runs/compression-sweep")
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to every run (e.g. seed=1, or a shorter recipe)")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL", help="run just these rows")
    parser.add_argument("--row", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="a row of your own (repeatable), "
                             "e.g. 'topk 0.25:compression.uplink_bits=0.25,compression.uplink=topk'")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    args = parser.parse_args()
    if args.list:
        for label, sets in SWEEP:
            print(f"{label:28s} {' '.join(sets)}")
        return
    folder = REPO / args.folder
    folder.mkdir(parents=True, exist_ok=True)
    own = [(text.split(":", 1)[0], text.split(":", 1)[1].split(",")) for text in args.row]
    chosen = [(label, sets) for label, sets in SWEEP if (not args.only and not own) or label in args.only] + own
    rows = [(label, read(run(label, [*args.sets, *sets], folder, args.ranks))) for label, sets in chosen]
    print(table(rows))


if __name__ == "__main__":
    main()
