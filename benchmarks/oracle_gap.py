"""How far FedGMI is from the oracle: one table from one command.

  python benchmarks/oracle_gap.py [--folder runs/oracle-gap] [--ranks 3] [--seeds 0 1 2 3]
                                  [--families default flips label_groups synthetic idx]
                                  [--set key=value ...] [--fedgmi-set key=value ...] [--label NAME]
                                  [--serial] [--parallel N]

For every seed on the default scenario and for each shipped scenario family (seed 0), runs the
oracle (FedGMI's model and rounds, trained on the true components) and FedGMI with the same
config, under ``mpiexec`` (or in one process with --serial; the logs are the same bit for bit),
each with its own log in --folder (a log already there is read, not rerun, so an interrupted
table resumes and the oracle runs once for several FedGMI variants: --fedgmi-set and --label
name a variant, e.g. ``--fedgmi-set algorithm.mstep_tempering=1 --label plain-em``, or ``--fedgmi-set
algorithm.mstep_prior_power=2 --fedgmi-set algorithm.mstep_tempering=1 --label prior2``). Prints, per
row, FedGMI's and the oracle's final matched proportion MAE and assignment accuracy, the MAE
ratio (target <= 1.2 on the default scenario, <= 1.5 on a family), the assignment gap in points
(target <= 1 on the default scenario), and FedGMI's wall time against the oracle's. Then the same
on the seen clients' held-out test samples, which neither method trained on (a log written before
runs scored them is rescored from its saved model, once: ``<log>.heldout.json``).

``--parallel N`` runs N of the missing logs at a time before the table is printed (with
--serial, about one per core; on a GPU, ``--set runtime.device=cuda`` and several per GPU).

``--restarts R`` trains each row R times on the same data (``training_seed`` -1, i.e. the seed
itself, then 100*seed+1 .. 100*seed+R-1), oracle and FedGMI alike, and prints the means over
the starts with each one's range: training's own randomness moves a single run's MAE by up to
0.0036 on seed 1 (docs/algorithm.md, "Restarts"), as much as the gap being measured. It also
prints FedGMI's starts combined into one estimate (``fedgmi combine``: matched, averaged).

The idx family needs its files first: ``python benchmarks/make_idx.py --out examples/idx``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parent.parent
FAMILIES = {"default": None, "flips": "configs/flips.yaml", "label_groups": "configs/label_groups.yaml",
            "synthetic": "configs/synthetic.yaml", "idx": "configs/idx_28x28.yaml"}


def run(config: str | None, overrides: list[str], out: Path, ranks: int, serial: bool) -> dict:
    if not out.exists():
        launcher = [sys.executable] if serial else [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks),
                                                    sys.executable, "-m", "mpi4py"]
        command = [*launcher, "-m", "fedgmi_mpi", "run", "--quiet", "--out", str(out)]
        command += [config] if config else []
        for item in overrides:
            command += ["--set", item]
        print("running", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, cwd=REPO, timeout=7200)
    with h5py.File(out, "r") as f:
        summary = json.loads(f.attrs["summary"])
    if "proportion_mae_heldout" not in summary:
        summary.update(heldout_scores(out))
    return summary


def heldout_scores(log: Path) -> dict:
    """The held-out scores of a log written before runs logged them: its saved model's evaluation
    run again (``fedgmi_mpi.analysis.rescore``, the same numbers a run logs now), kept beside the
    log in ``<log>.heldout.json`` so the next table reads them."""
    kept = log.with_name(log.name + ".heldout.json")
    if not kept.exists():
        from fedgmi_mpi.analysis.rescore import final_evaluation

        print("rescoring", log, file=sys.stderr, flush=True)
        summary, ignored = final_evaluation(log)
        scores = {name: float(summary[name]) for name in ("proportion_mae_heldout", "assignment_accuracy_heldout")}
        kept.write_text(json.dumps(dict(scores, config_keys_left_out=ignored)))
    return {k: v for k, v in json.loads(kept.read_text()).items() if k != "config_keys_left_out"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="runs/oracle-gap")
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--serial", action="store_true", help="one process per run (same logs, one core each)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--set", dest="shared_set", action="append", default=[],
                        help="config override for the oracle and FedGMI alike (e.g. model.hidden=256)")
    parser.add_argument("--fedgmi-set", action="append", default=[], help="config override for FedGMI only")
    parser.add_argument("--label", default="fedgmi", help="name of the FedGMI variant (its logs' prefix)")
    parser.add_argument("--restarts", type=int, default=1, help="training starts per row (means are printed)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at a time (e.g. one per core with --serial, or several on one GPU)")
    args = parser.parse_args()
    folder = REPO / args.folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("default", seed) for seed in args.seeds] + [(family, 0) for family in args.families if family != "default"]
    combined_header = " FedGMI combined MAE / assignment | ratio | gap (points) |" if args.restarts > 1 else ""
    print("| scenario | seed | starts | FedGMI MAE | oracle MAE | ratio | FedGMI assignment | oracle assignment "
          "| gap (points) | FedGMI wall s | oracle wall s | held out: FedGMI MAE / assignment | oracle | ratio | gap |"
          + combined_header)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|---|" * (args.restarts > 1))
    cells = {row: row_runs(*row, args, folder) for row in rows}
    pending = [job for jobs in cells.values() for pair in jobs for job in pair if not job[2].exists()]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        # a failed run raises here, after the others have finished
        list(pool.map(lambda job: run(*job, args.ranks, args.serial), pending))
    for (family, seed), jobs in cells.items():
        oracle = [run(*job, args.ranks, args.serial) for job, _ in jobs]
        fedgmi = [run(*job, args.ranks, args.serial) for _, job in jobs]
        fedgmi_logs = [job[2] for _, job in jobs]
        oracle_mae, fedgmi_mae = mean(oracle, "proportion_mae"), mean(fedgmi, "proportion_mae")
        # an oracle that is exact (idx: transforms that never look alike) leaves no finite ratio
        ratio = f"{fedgmi_mae / oracle_mae:.2f}" if oracle_mae > 1e-6 else "n/a (oracle exact)"
        gap = 100 * (mean(oracle, "assignment_accuracy") - mean(fedgmi, "assignment_accuracy"))
        print(f"| {family} | {seed} | {args.restarts} | {cell(fedgmi, 'proportion_mae')} | {cell(oracle, 'proportion_mae')} "
              f"| {ratio} | {cell(fedgmi, 'assignment_accuracy')} | {cell(oracle, 'assignment_accuracy')} | {gap:+.1f} "
              f"| {mean(fedgmi, 'wall_time_s'):.0f} | {mean(oracle, 'wall_time_s'):.0f} |" + heldout_cells(fedgmi, oracle)
              + (combined_cells(fedgmi_logs, oracle) if args.restarts > 1 else ""), flush=True)


Job = tuple[str | None, list[str], Path]


def row_runs(family: str, seed: int, args: argparse.Namespace, folder: Path) -> list[tuple[Job, Job]]:
    """(oracle, FedGMI) runs of one table row, one pair per training start."""
    config = FAMILIES[family]
    pairs = []
    for start in training_seeds(seed, args.restarts):
        base = [f"seed={seed}"] + ([f"training_seed={start}"] if start >= 0 else []) + args.shared_set
        suffix = "" if start < 0 else f"-start{start}"  # the first start keeps the old log names
        pairs.append(((config, base + ["algorithm.name=oracle"], folder / f"oracle-{family}-seed{seed}{suffix}.h5"),
                      (config, base + args.fedgmi_set, folder / f"{args.label}-{family}-seed{seed}{suffix}.h5")))
    return pairs


def heldout_cells(fedgmi: list[dict], oracle: list[dict]) -> str:
    """The seen clients' test samples, which neither method trained on, scored by their own E-step."""
    mae, oracle_mae = mean(fedgmi, "proportion_mae_heldout"), mean(oracle, "proportion_mae_heldout")
    ratio = f"{mae / oracle_mae:.2f}" if oracle_mae > 1e-6 else "n/a"
    gap = 100 * (mean(oracle, "assignment_accuracy_heldout") - mean(fedgmi, "assignment_accuracy_heldout"))
    return (f" {mae:.4f} / {mean(fedgmi, 'assignment_accuracy_heldout'):.4f} | {oracle_mae:.4f} / "
            f"{mean(oracle, 'assignment_accuracy_heldout'):.4f} | {ratio} | {gap:+.1f} |")


def combined_cells(logs: list[Path], oracle: list[dict]) -> str:
    """FedGMI's starts combined into one estimate (``fedgmi combine``), against the oracle's mean."""
    from fedgmi_mpi.analysis.combine import combine

    scores = combine(logs).scores["combined"]
    mae, assignment = scores["proportion_mae_seen"], scores["assignment_accuracy_seen"]
    oracle_mae = mean(oracle, "proportion_mae")
    ratio = f"{mae / oracle_mae:.2f}" if oracle_mae > 1e-6 else "n/a"
    return f" {mae:.4f} / {assignment:.4f} | {ratio} | {100 * (mean(oracle, 'assignment_accuracy') - assignment):+.1f} |"


def training_seeds(seed: int, restarts: int) -> list[int]:
    """-1 (training's streams from the seed itself, the default run), then 100*seed+1, ..."""
    return [-1] + [100 * seed + start for start in range(1, restarts)]


def mean(summaries: list[dict], key: str) -> float:
    return sum(s.get(key, float("nan")) for s in summaries) / len(summaries)


def cell(summaries: list[dict], key: str) -> str:
    """The mean, and with several starts their range."""
    values = [s[key] for s in summaries]
    text = f"{mean(summaries, key):.4f}"
    return text if len(values) == 1 else f"{text} ({min(values):.4f}-{max(values):.4f})"


if __name__ == "__main__":
    main()
