"""The science end to end: on the default scenario, a shortened default recipe must find the
inherent distributions (the default 150 rounds reach MAE ~0.011 / assignment ~0.96; this run
stops at 60 training rounds to keep the suite short)."""
import json

import h5py

from conftest import run_mpi


def _run(out, *overrides: str) -> tuple[dict, list]:
    """A default-scenario run under mpiexec -n 3: its closing summary and training MAE per round."""
    args = ["run", "--quiet", "--out", str(out)]
    for item in ("algorithm.eval_every=0", "algorithm.eval_samples=32", *overrides):
        args += ["--set", item]
    result = run_mpi(3, args, timeout=900)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        return json.loads(f.attrs["summary"]), f["train/summary/proportion_mae"][()]


def test_fedgmi_recovers_rotations_and_proportions(tmp_path):
    summary, train_mae = _run(tmp_path / "accuracy.h5", "algorithm.rounds=60")
    # Measured 0.0139 / 0.943 / 0.944 with seed 0 on the 2-core dev box; the thresholds are the
    # issue's acceptance bar (MAE <= 0.03 against actual counts, assignment >= 0.90).
    assert summary["proportion_mae"] <= 0.03
    assert summary["assignment_accuracy"] >= 0.90
    assert summary["accuracy"] >= 0.90
    assert summary["proportion_mae_unseen"] <= 0.03  # unseen clients: E-steps alone
    # The E-step phase improves on the warm-up (topic-model) responsibilities.
    assert train_mae[-1] < train_mae[39]


def test_short_recipe_does_not_drift(tmp_path):
    """The drift of docs/algorithm.md: on seed 1 with 25 warm-up rounds of 50, plain EM (M-step
    weights = responsibilities) went from MAE 0.020 after the first E-steps to 0.041 in training
    (0.048 at the final evaluation) as one rotation's component took over its 180-degree partner's
    0s, 1s and 8s. With tempered M-step weights it must hold."""
    summary, train_mae = _run(tmp_path / "short.h5", "seed=1", "algorithm.warmup_rounds=25", "algorithm.rounds=50")
    after_warmup = train_mae[25:30].min()
    assert train_mae[-1] <= after_warmup + 0.005, (after_warmup, train_mae[-5:])
    assert summary["proportion_mae"] <= 0.03 and summary["assignment_accuracy"] >= 0.90
