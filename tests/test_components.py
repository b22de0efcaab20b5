"""K from the data (algorithm.num_components=auto) and runs that fit another K than the truth's."""
import h5py
import numpy as np
import pytest

from conftest import run_cli, run_mpi, small_args
from fedgmi_mpi import config as config_mod
from fedgmi_mpi import scenarios
from fedgmi_mpi.algorithms.components import ComponentSelection
from fedgmi_mpi.algorithms.fedgmi import moving_together
from fedgmi_mpi.analysis import load
from fedgmi_mpi.analysis.metrics import aligned, assignment_accuracy, match_components, proportion_errors
from fedgmi_mpi.compression import build as build_channels
from fedgmi_mpi.runtime import loop


def test_matching_is_rectangular_and_spare_mass_counts_as_error():
    # 2 true components, 3 learned: learned 2 matches true 0, learned 0 true 1, learned 1 is spare
    confusion = np.array([[1.0, 0.0, 9.0], [8.0, 2.0, 0.0]])
    perm = match_components(confusion)
    assert perm.tolist() == [2, 0]
    assert assignment_accuracy(confusion, perm) == pytest.approx(17 / 20)
    estimated = np.array([[0.1, 0.2, 0.7]])  # learned order
    actual = np.array([[0.8, 0.2]])
    matched, reference = aligned(estimated, actual, perm)
    assert matched.tolist() == [[0.7, 0.1, 0.2]] and reference.tolist() == [[0.8, 0.2, 0.0]]
    assert proportion_errors(estimated, actual, perm)["mae"] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
    # fewer learned than true: the unmatched true component is estimated at 0
    perm = match_components(confusion.T)
    assert sorted(perm.tolist()) == [-1, 0, 1]
    errors = proportion_errors(np.array([[0.3, 0.7]]), np.array([[0.25, 0.7, 0.05]]), match_components(
        np.array([[5.0, 0.0], [0.0, 5.0], [1.0, 0.0]])))
    assert errors["mae"] == pytest.approx((0.05 + 0.0 + 0.05) / 3)
    # square: exactly the plain permutation
    square = np.array([[0.0, 3.0], [4.0, 1.0]])
    p = match_components(square)
    est, ref = np.array([[0.6, 0.4]]), np.array([[0.5, 0.5]])
    assert proportion_errors(est, ref, p)["mae"] == np.abs(est[:, p] - ref).mean()


def _summed(proportions: np.ndarray) -> np.ndarray:
    return sum(np.concatenate([p, np.outer(p, p).ravel(), [1.0]]) for p in proportions)


def test_parts_of_one_distribution_move_together():
    rng = np.random.default_rng(0)
    true = rng.dirichlet(np.full(3, 0.4), size=40)
    share = rng.uniform(0.3, 0.7, size=40)  # a spare component took part of true component 0
    learned = np.column_stack([true[:, 0] * share, true[:, 1], true[:, 2], true[:, 0] * (1 - share)])
    groups, correlation = moving_together(_summed(learned), 4)
    assert groups == ((0, 3), (1,), (2,)) and correlation[0, 3] > 0.5
    groups, _ = moving_together(_summed(true), 3)  # distinct components are anti-correlated
    assert groups == ((0,), (1,), (2,))
    # a chain is not a group: 0~1 and 1~2 correlate, 0 and 2 do not
    a, b = rng.normal(size=(2, 4000))
    samples = np.column_stack([a, a + b, b])  # correlations 0.71, 0.71 and 0
    groups, correlation = moving_together(_summed(samples), 3)
    assert correlation[0, 2] < 0.5 and groups in (((0, 1), (2,)), ((0,), (1, 2)))


def _select(overrides: list[str]):
    config = config_mod.load(None, overrides)
    scenario = scenarios.build(config)
    selector = ComponentSelection(config, scenario)
    dense = config_mod.Config(seed=config.seed)
    state = loop.run(selector, scenario, build_channels(dense, selector), loop.SerialTransport())
    return selector.result(state, 0.0), scenario


@pytest.mark.parametrize("true_k", [2, 3])
def test_selection_finds_the_true_number_of_rotations(true_k):
    selection, scenario = _select([f"scenario.num_components={true_k}", "scenario.num_clients=24",
                                   "algorithm.auto_max_components=5", "seed=2"])
    assert selection.chosen == scenario.num_components == true_k
    assert selection.heldout_log_likelihood.shape == (3, 5)
    assert selection.best.max() == true_k and selection.rounds > 10


def test_auto_run_logs_how_k_was_chosen_and_scores_another_k(tmp_path):
    out = tmp_path / "auto.h5"
    result = run_cli(["run", *small_args("algorithm.num_components=auto", "algorithm.auto_max_components=3",
                                         "scenario.num_components=2"), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "chose K=" in result.stderr
    with h5py.File(out, "r") as f:
        chosen = int(f["component_selection/chosen"][()])
        assert f["component_selection/heldout_log_likelihood"].shape == (3, 3)
        assert "held-out" in f["component_selection"].attrs["method"]
        assert f["evaluate/proportions"].shape[2] == chosen
        assert f["evaluate/confusion"].shape[2:] == (2, chosen)
    # a run told to fit more components than there are: scored against the 2 true ones, readable
    out6 = tmp_path / "k4.h5"
    result = run_cli(["run", *small_args("algorithm.num_components=4", "scenario.num_components=2"), "--out", str(out6)])
    assert result.returncode == 0, result.stderr
    run = load(out6)
    final = run.final()
    assert np.isfinite(final.proportion_mae) and 0 < final.assignment_accuracy <= 1
    assert len(run.matching) == 2 and run.proportions().shape == (len(run.clients), 2)
    with h5py.File(out6, "r") as f:
        assert f["evaluate/proportions"].shape[2] == 4 and "component_selection" not in f
        assert f["evaluate/server/component_group"].shape[1] == 4  # which components move together
    # the saved 4-component model infers new clients of the 2-component data, scored rectangularly
    data = tmp_path / "two.npz"
    assert run_cli(["export-scenario", *small_args("scenario.num_components=2"), "--out", str(data)]).returncode == 0
    result = run_cli(["infer", "--log", str(out6), "--data", str(data), "--clients", "8-9", "--draws", "200"])
    assert result.returncode == 0, result.stderr
    assert "proportion MAE vs actual counts" in result.stdout


def test_selection_is_the_same_on_any_number_of_ranks(tmp_path):
    args = small_args("algorithm.num_components=auto", "algorithm.auto_max_components=3", "algorithm.rounds=1",
                      "algorithm.warmup_rounds=1")
    logs = []
    for ranks in (1, 3):
        out = tmp_path / f"n{ranks}.h5"
        result = run_mpi(ranks, ["run", *args, "--out", str(out), "--quiet"])
        assert result.returncode == 0, result.stderr
        with h5py.File(out, "r") as f:
            logs.append({name: f[f"component_selection/{name}"][()] for name in ("heldout_log_likelihood", "chosen")})
    assert np.array_equal(logs[0]["heldout_log_likelihood"], logs[1]["heldout_log_likelihood"])
    assert logs[0]["chosen"] == logs[1]["chosen"]


@pytest.mark.parametrize("override,fragment", [
    ("algorithm.num_components=many", "algorithm.num_components must be scenario, auto or a whole number"),
    ("algorithm.num_components=0", "algorithm.num_components must be scenario, auto or a whole number"),
    ("algorithm.auto_max_components=0", "auto_min_components and auto_max_components"),
])
def test_bad_component_settings_exit_2(tmp_path, override, fragment):
    result = run_cli(["run", "--set", override, "--out", str(tmp_path / "x.h5")])
    assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli(["run", "--set", "algorithm.name=oracle", "--set", "algorithm.num_components=auto",
                      "--out", str(tmp_path / "x.h5")])
    assert result.returncode == 2 and "needs algorithm.name in fedgmi" in result.stderr
    assert not list(tmp_path.iterdir())
