"""Saved models scored again with other evaluation settings, beside what their runs logged.

  python benchmarks/rescore_table.py --set algorithm.eval_uses_labels=true runs/iw4/agg4-default-seed*.h5 ...

For every log (FedGMI or oracle), the final evaluation's matched proportion MAE and assignment of
the seen clients (training samples), the unseen clients' MAE and the held-out MAE: its saved
model's evaluation run again as the run had it (the run's own figures: ``fedgmi_mpi.analysis.rescore``
gives them back to the last digit, also for logs written before runs scored the held-out samples),
then again with the settings (``--set``, e.g. the labelled E-step of ``algorithm.eval_uses_labels``).
Training is not rerun: only settings that act in evaluation rounds make sense here. Prints one
Markdown row per log, then the means over the logs of each algorithm.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import yaml

from fedgmi_mpi.analysis.rescore import final_evaluation

COLUMNS = ("proportion_mae", "assignment_accuracy", "proportion_mae_unseen", "proportion_mae_heldout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--set", dest="settings", action="append", default=[], required=True,
                        help="key=value of the evaluation, e.g. algorithm.eval_uses_labels=true")
    args = parser.parse_args()
    settings = {}
    for item in args.settings:
        key, value = item.split("=", 1)
        settings[key.strip()] = yaml.safe_load(value)
    names = " / ".join(COLUMNS)
    print(f"| log | algorithm | as run: {names} | with {', '.join(args.settings)} |")
    print("|---|---|---|---|")
    by_algorithm: dict[str, list[tuple[list[float], list[float]]]] = defaultdict(list)
    for log in args.logs:
        with h5py.File(log, "r") as f:
            algorithm = json.loads(f.attrs["config"]).get("algorithm", {}).get("name", "fedgmi")
        as_run, _ = final_evaluation(log)
        rescored, _ = final_evaluation(log, settings=settings)
        before = [float(as_run[name]) for name in COLUMNS]
        after = [float(rescored[name]) for name in COLUMNS]
        by_algorithm[algorithm].append((before, after))
        print(f"| {log.name} | {algorithm} | {' / '.join(f'{v:.4f}' for v in before)} "
              f"| {' / '.join(f'{v:.4f}' for v in after)} |", flush=True)
    for algorithm, rows in by_algorithm.items():
        before = np.mean([b for b, _ in rows], axis=0)
        after = np.mean([a for _, a in rows], axis=0)
        print(f"| mean of {len(rows)} | {algorithm} | {' / '.join(f'{v:.4f}' for v in before)} "
              f"| {' / '.join(f'{v:.4f}' for v in after)} |")


if __name__ == "__main__":
    main()
