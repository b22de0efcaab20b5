"""The science end to end: on the default scenario, a shortened default recipe must find the
inherent distributions (the default 150 rounds reach MAE ~0.011 / assignment ~0.96; this run
stops at 60 training rounds to keep the suite short)."""
import json

import h5py

from conftest import run_mpi


def test_fedgmi_recovers_rotations_and_proportions(tmp_path):
    out = tmp_path / "accuracy.h5"
    args = ["run", "--quiet", "--out", str(out)]
    for item in ("algorithm.rounds=60", "algorithm.eval_every=0", "algorithm.eval_samples=32"):
        args += ["--set", item]
    result = run_mpi(3, args, timeout=900)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        summary = json.loads(f.attrs["summary"])
        train_mae = f["train/summary/proportion_mae"][()]
    # Measured 0.0139 / 0.943 / 0.944 with seed 0 on the 2-core dev box; the thresholds are the
    # issue's acceptance bar (MAE <= 0.03 against actual counts, assignment >= 0.90).
    assert summary["proportion_mae"] <= 0.03
    assert summary["assignment_accuracy"] >= 0.90
    assert summary["accuracy"] >= 0.90
    assert summary["proportion_mae_unseen"] <= 0.03  # unseen clients: E-steps alone
    # The E-step phase improves on the warm-up (topic-model) responsibilities.
    assert train_mae[-1] < train_mae[39]
