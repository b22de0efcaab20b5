"""``fedgmi combine``: several training starts of one run into one estimate."""
import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from conftest import run_cli, small_args
from fedgmi_mpi.analysis.combine import combine, match_to_first


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    """Two starts of a tiny FedGMI run (serial), another scenario's run and a FedAvg run."""
    folder = tmp_path_factory.mktemp("combine")
    out = {name: folder / f"{name}.h5" for name in ("first", "second", "other_data", "fedavg")}
    for name, extra in (("first", []), ("second", ["training_seed=7"]), ("other_data", ["seed=5"]),
                        ("fedavg", ["algorithm.name=fedavg"])):
        done = run_cli(["run", "--quiet", "--out", str(out[name]), *small_args(*extra)])
        assert done.returncode == 0, done.stderr
    return out


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


def test_matching_undoes_a_relabelling():
    rng = np.random.default_rng(0)
    first = [SimpleNamespace(responsibilities=rng.dirichlet(np.full(4, 0.3), size=n)) for n in (30, 50)]
    order = np.array([2, 0, 3, 1])  # the other start calls first's component j by order[j]
    other = []
    for client in first:
        relabelled = np.empty_like(client.responsibilities)
        relabelled[:, order] = client.responsibilities
        other.append(SimpleNamespace(responsibilities=relabelled))
    np.testing.assert_array_equal(match_to_first(first, other), order)


def test_combine_reproduces_each_start_and_averages_them(starts):
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the device the runs used: they round differently
    combined = combine([starts["first"], starts["second"]], device=device)
    assert combined.training_seeds == [0, 7] and combined.seen.sum() == 8 and len(combined.clients) == 10
    for path, own in zip((starts["first"], starts["second"]), combined.scores["starts"]):
        with h5py.File(path) as f:  # each start's E-steps are its final evaluation's, noise and all
            summary = {name: f[f"evaluate/summary/{name}"][-1] for name in f["evaluate/summary"]}
        for name in ("proportion_mae", "assignment_accuracy"):
            assert own[f"{name}_seen"] == pytest.approx(summary[name], abs=1e-9), name
            assert own[f"{name}_unseen"] == pytest.approx(summary[f"{name}_unseen"], abs=1e-9), name
    with h5py.File(starts["second"]) as f:
        second = f["evaluate/proportions"][-1]
    np.testing.assert_allclose(combined.start_proportions[1], second[:, combined.matchings[1]], atol=1e-9)
    np.testing.assert_allclose(combined.proportions, combined.start_proportions.mean(0))
    # a client's proportions are the mean of its responsibilities, each start's and so the mean's too
    np.testing.assert_allclose(combined.proportions, [r.mean(0) for r in combined.responsibilities], atol=1e-5)
    assert (combined.spread >= 0).all() and sorted(combined.matchings[1]) == [0, 1, 2, 3]
    mean_of_starts = np.mean([s["proportion_mae_seen"] for s in combined.scores["starts"]])
    # |mean of errors| <= mean of |errors| when the matchings to the truth agree; a tiny run may differ
    assert combined.scores["combined"]["proportion_mae_seen"] <= mean_of_starts + 0.02


def test_combine_cli_writes_npz_and_json(starts, tmp_path):
    logs = [str(starts["first"]), str(starts["second"])]
    npz = tmp_path / "combined.npz"
    done = run_cli(["combine", *logs, "--out", str(npz)])
    assert done.returncode == 0, done.stderr
    for fragment in ("2 starts (training_seed 0, 7)", "spread over the starts", "mean of the starts", "combined",
                     "MAE seen"):
        assert fragment in done.stdout, fragment
    with np.load(npz, allow_pickle=False) as result:
        assert result["proportions"].shape == (10, 4) and result["start_proportions"].shape == (2, 10, 4)
        assert result["responsibilities"].shape == (len(result["sample_index"]), 4)
        assert list(result["training_seed"]) == [0, 7]
    data = tmp_path / "data.npz"
    assert run_cli(["export-scenario", *small_args(), "--out", str(data)]).returncode == 0
    as_json = tmp_path / "combined.json"
    done = run_cli(["combine", *logs, "--data", str(data), "--out", str(as_json)])
    assert done.returncode == 0, done.stderr
    document = json.loads(as_json.read_text())
    with np.load(npz, allow_pickle=False) as result:  # a file of the same clients: the same estimate
        np.testing.assert_allclose(document["proportions"], result["proportions"], atol=1e-12)
    assert "MAE" in done.stdout and document["scores"]["combined"]["proportion_mae_all"] >= 0


def test_combine_bad_input_exits_2(starts, tmp_path):
    first, second = str(starts["first"]), str(starts["second"])
    _one_line_error(run_cli(["combine", first]), "at least two logs")
    _one_line_error(run_cli(["combine", first, first]), "the same start twice")
    _one_line_error(run_cli(["combine", first, str(starts["other_data"])]), "differ in seed")
    _one_line_error(run_cli(["combine", first, str(starts["fedavg"])]), "differ in algorithm.name")
    _one_line_error(run_cli(["combine", first, str(tmp_path / "missing.h5")]), "no log at")
    existing = tmp_path / "exists.json"
    existing.write_text("keep me")
    _one_line_error(run_cli(["combine", first, second, "--out", str(existing)]), "exists")
    assert existing.read_text() == "keep me"
    _one_line_error(run_cli(["combine", first, second, "--out", str(tmp_path / "c.txt")]), "must end in")
