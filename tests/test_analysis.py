"""Post-analysis: the saved model, ``analysis.load``, ``fedgmi analyze``, ``infer`` and ``watch``."""
import json
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import MPI_TIMEOUT, REPO, mpiexec, run_cli, small_args
from fedgmi_mpi.analysis.infer import posterior
from fedgmi_mpi.analysis.reader import load
from fedgmi_mpi.analysis.metrics import adjusted_rand_index, proportion_errors
from fedgmi_mpi.analysis.watch import snapshot as watch_snapshot


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A tiny FedGMI run, a FedAvg run and the scenario as a user-data file (serial runtime)."""
    folder = tmp_path_factory.mktemp("analysis")
    out = {"folder": folder, "fedgmi": folder / "fedgmi.h5", "fedavg": folder / "fedavg.h5", "data": folder / "data.npz"}
    for name in ("fedgmi", "fedavg"):
        done = run_cli(["run", "--quiet", "--out", str(out[name]), *small_args(f"algorithm.name={name}")])
        assert done.returncode == 0, done.stderr
    done = run_cli(["export-scenario", *small_args(), "--out", str(out["data"])])
    assert done.returncode == 0, done.stderr
    return out


def test_the_log_keeps_the_model_of_the_last_evaluation(logs):
    with h5py.File(logs["fedgmi"]) as f:
        model = f["model"]
        description = json.loads(model.attrs["description"])
        assert description["kind"] == "vae_mixture" and description["num_components"] == 4
        assert int(model["round"][0]) == int(f["evaluate/round"][-1])
        assert int(model["train_round"][0]) == 4
        assert np.isfinite(model["parameters"][()]).all()
        assert model["parameters"].shape[0] == 4
    with h5py.File(logs["fedavg"]) as f:
        assert json.loads(f["model"].attrs["description"])["kind"] == "classifiers"


def test_load_recomputes_the_runs_own_scores(logs):
    run = load(logs["fedgmi"])
    with h5py.File(logs["fedgmi"]) as f:
        logged = {name: f[f"evaluate/summary/{name}"][-1] for name in f["evaluate/summary"]}
    final = run.final()
    for name in ("proportion_mae", "assignment_accuracy", "accuracy", "proportion_mae_unseen",
                 "assignment_accuracy_unseen", "accuracy_unseen"):
        assert final[name] == pytest.approx(logged[name], abs=1e-12), name
    assert list(run.matching) == list(logged["permutation"].astype(int))
    assert run.status == "complete" and run.algorithm == "fedgmi" and run.budget == "dense"
    assert len(run.clients) == 10 and {"estimated_c0", "actual_c3", "dirichlet_c1"} <= set(run.clients.columns)
    assert run.rounds.phase.iloc[-1] == "evaluate" and run.rounds.train_round.iloc[-1] == 4
    assert len(run.components) == 4 and run.components.heldout_log_likelihood.notna().all()
    assert run.confusion.sum() == run.arrays["clients/num_train"][run.seen].sum()
    # each client's matched error is the frame's; their mean is the headline MAE of the seen clients
    assert run.clients.proportion_mae[run.seen].mean() == pytest.approx(final["proportion_mae"], abs=1e-12)


def test_load_reads_a_partial_log_and_baselines(logs, tmp_path):
    partial = tmp_path / "copy.h5.partial"
    shutil.copy(logs["fedgmi"], partial)
    run = load(tmp_path / "copy.h5")  # the name the run would have: the .partial is found beside it
    assert run.status == "incomplete" and run.path == partial
    baseline = load(logs["fedavg"])
    assert np.isnan(baseline.final()["proportion_mae"]) and baseline.final()["accuracy"] >= 0


def test_heldout_scores_are_logged_recomputed_and_rescored_alike(logs, monkeypatch):
    """The test samples' own E-step: the run's summary, the reader's recomputation from the
    per-client arrays and a rescoring of the saved model (in groups of 3 clients) agree; a
    baseline has none."""
    from fedgmi_mpi.analysis import rescore
    from fedgmi_mpi.analysis.rescore import final_evaluation

    monkeypatch.setattr(rescore, "GROUP", 3)

    with h5py.File(logs["fedgmi"]) as f:
        logged = {name: float(f[f"evaluate/summary/{name}"][-1])
                  for name in ("proportion_mae_heldout", "assignment_accuracy_heldout")}
        confusion = f["evaluate/heldout_confusion"][-1]
        num_test = f["clients/num_test"][()]
    assert 0 < logged["proportion_mae_heldout"] < 0.5 and 0.25 < logged["assignment_accuracy_heldout"] <= 1
    assert (confusion.sum((1, 2)) == num_test).all()  # every test sample assigned once, seen or not
    final = load(logs["fedgmi"]).final()
    rescored, left_out = final_evaluation(logs["fedgmi"])
    assert left_out == []
    for name, value in logged.items():
        assert final[name] == pytest.approx(value, abs=1e-12), name
        assert rescored[name] == pytest.approx(value, abs=1e-12), name
    assert rescored["proportion_mae"] == pytest.approx(final["proportion_mae"], abs=1e-12)
    assert np.isnan(load(logs["fedavg"]).final().get("proportion_mae_heldout", np.nan))


def test_an_older_logs_config_is_read_without_the_keys_this_version_lacks():
    """What rescore and combine rebuild a scenario from: unknown keys are refused, or listed."""
    from fedgmi_mpi import config
    from fedgmi_mpi.errors import UserError

    mapping = {"seed": 3, "algorithm": {"rounds": 7, "mstep_weight_power": 1.0}}
    with pytest.raises(UserError, match="mstep_weight_power"):
        config.from_mapping(mapping)
    unknown: list[str] = []
    read = config.from_mapping(mapping, unknown)
    assert unknown == ["algorithm.mstep_weight_power"] and read.seed == 3 and read.algorithm.rounds == 7


def test_heldout_scores_take_the_true_shares_from_the_confusion():
    from fedgmi_mpi.analysis.metrics import heldout_scores

    perm = np.array([1, 0])  # true component t is learned component perm[t]
    # client 0: 3 test samples of true 0 (2 put on learned 1, its match), 1 of true 1; client 1: none
    confusion = np.array([[[1.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    proportions = np.array([[0.5, 0.5], [0.9, 0.1]])
    scores = heldout_scores(proportions, confusion, perm)
    # true shares (0.75, 0.25) against the estimate in true order (0.5, 0.5); client 1 does not count
    assert scores["proportion_mae_heldout"] == pytest.approx(0.25)
    assert scores["assignment_accuracy_heldout"] == pytest.approx(3 / 4)
    assert np.isnan(heldout_scores(proportions[1:], confusion[1:], perm)["proportion_mae_heldout"])


def test_adjusted_rand_index_against_sklearn():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        true, learned = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
        learned[:150] = true[:150] % 3  # partly agreeing
        table = np.zeros((4, 3))
        np.add.at(table, (true, learned), 1)
        assert adjusted_rand_index(table) == pytest.approx(adjusted_rand_score(true, learned), abs=1e-12)
    assert adjusted_rand_index(np.diag([5.0, 7.0, 3.0])[:, [2, 0, 1]]) == pytest.approx(1.0)


def test_proportion_errors_after_matching():
    estimated = np.array([[0.1, 0.9], [0.6, 0.4]])
    reference = np.array([[0.9, 0.1], [0.5, 0.5]])
    errors = proportion_errors(estimated, reference, np.array([1, 0]))  # learned 1 is true 0
    assert errors["mae"] == pytest.approx(0.05) and errors["max_error"] == pytest.approx(0.1)
    assert errors["rmse"] == pytest.approx(np.sqrt(0.005))


def test_analyze_text_json_csv_and_comparison(logs):
    text = run_cli(["analyze", str(logs["fedgmi"])])
    assert text.returncode == 0, text.stderr
    for fragment in ("proportion MAE vs actual counts", "vs Dirichlet draw", "adjusted Rand index", "worst clients",
                     "held-out log-likelihood per true component", "matching (Hungarian", "best round", "wall time"):
        assert fragment in text.stdout, fragment
    as_json = run_cli(["analyze", str(logs["fedgmi"]), str(logs["fedavg"]), "--json"])
    document = json.loads(as_json.stdout)
    assert [d["algorithm"] for d in document["logs"]] == ["fedgmi", "fedavg"]
    assert document["logs"][1]["proportion_mae"] is None  # NaN becomes null: strict JSON
    assert {row["algorithm"] for row in document["comparison"]} == {"fedgmi", "fedavg"}
    head = document["logs"][0]
    assert head["proportion_mae"] == pytest.approx(load(logs["fedgmi"]).final()["proportion_mae"])
    as_csv = run_cli(["analyze", str(logs["fedgmi"]), str(logs["fedavg"]), "--csv"])
    frame = pd.read_csv(__import__("io").StringIO(as_csv.stdout))
    assert len(frame) == 2 and "adjusted_rand_index_unseen" in frame.columns
    compared = run_cli(["analyze", str(logs["fedgmi"]), str(logs["fedgmi"]), str(logs["fedavg"])])
    assert "| fedgmi | dense | 2 |" in compared.stdout and "| fedavg | dense | 1 |" in compared.stdout


def test_analyze_bad_input_exits_2(logs, tmp_path):
    _one_line_error(run_cli(["analyze", str(tmp_path / "missing.h5")]), "no log at")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    _one_line_error(run_cli(["analyze", str(junk)]), "not a readable HDF5 log")
    _one_line_error(run_cli(["analyze", str(logs["fedgmi"]), "--json", "--csv"]), "choose one")


def test_infer_reproduces_the_runs_unseen_clients_bitwise(logs, tmp_path):
    out = tmp_path / "unseen.npz"
    # the device the run's workers used (runtime.device=auto): CPU and GPU round differently
    device = "cuda" if torch.cuda.is_available() else "cpu"
    done = run_cli(["infer", "--log", str(logs["fedgmi"]), "--data", str(logs["data"]), "--clients", "8-9",
                    "--out", str(out), "--device", device])
    assert done.returncode == 0, done.stderr
    assert "intervals of the proportions holding the Dirichlet draw" in done.stdout
    with np.load(out, allow_pickle=False) as result, h5py.File(logs["fedgmi"]) as f:
        assert list(result["client"]) == [8, 9]
        # the run's own evaluation of the unseen clients, from the same model, noise and padding
        np.testing.assert_array_equal(result["proportions"], f["evaluate/proportions"][-1][8:10])
        np.testing.assert_array_equal(result["accuracy"], f["evaluate/accuracy"][-1][8:10])
        np.testing.assert_allclose(result["mixture_log_likelihood"], f["evaluate/mixture_log_likelihood"][-1][8:10],
                                   rtol=1e-6)
        assert (result["lower"] <= result["posterior_mean"]).all() and (result["posterior_mean"] <= result["upper"]).all()
        assert result["responsibilities"].shape == (len(result["sample_index"]), 4)
        np.testing.assert_allclose(result["responsibilities"].sum(1), 1, atol=1e-5)
    as_json = tmp_path / "unseen.json"
    assert run_cli(["infer", "--log", str(logs["fedgmi"]), "--data", str(logs["data"]), "--clients", "9",
                    "--out", str(as_json)]).returncode == 0
    assert json.loads(as_json.read_text())["clients"][0]["client"] == 9


def test_labelled_estep_is_logged_rescored_and_inferred_alike(logs, tmp_path):
    """algorithm.eval_uses_labels changes the evaluation's E-step only: the same trained model, other
    proportions; rescoring the plain log with the setting and ``infer`` (which follows the run's
    setting unless told) give the run's numbers back."""
    from fedgmi_mpi.analysis.rescore import final_evaluation

    labelled = tmp_path / "labelled.h5"
    done = run_cli(["run", "--quiet", "--out", str(labelled), *small_args("algorithm.eval_uses_labels=true")])
    assert done.returncode == 0, done.stderr
    with h5py.File(logs["fedgmi"]) as plain, h5py.File(labelled) as with_labels:
        np.testing.assert_array_equal(plain["model/parameters"][()], with_labels["model/parameters"][()])
        plain_proportions = plain["evaluate/proportions"][-1]
        labelled_proportions = with_labels["evaluate/proportions"][-1]
        np.testing.assert_array_equal(plain["evaluate/heldout_proportions"][-1],
                                      with_labels["evaluate/heldout_proportions"][-1])  # test samples: no labels
        assert np.abs(plain_proportions - labelled_proportions).max() > 1e-3
    final = load(labelled).final()
    rescored, _ = final_evaluation(logs["fedgmi"], settings={"algorithm.eval_uses_labels": True})
    for name in ("proportion_mae", "assignment_accuracy", "proportion_mae_unseen", "accuracy"):
        assert rescored[name] == pytest.approx(final[name], abs=1e-12), name
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for log, flag, expected in ((labelled, [], labelled_proportions), (labelled, ["--no-labels"], plain_proportions),
                                (logs["fedgmi"], ["--labels"], labelled_proportions)):
        out = tmp_path / f"infer-{len(list(tmp_path.iterdir()))}.npz"
        done = run_cli(["infer", "--log", str(log), "--data", str(logs["data"]), "--clients", "8-9", "--out", str(out),
                        "--device", device, *flag])
        assert done.returncode == 0, done.stderr
        with np.load(out, allow_pickle=False) as result:
            np.testing.assert_array_equal(result["proportions"], expected[8:10])
            assert bool(result["used_labels"]) == (flag != ["--no-labels"])
    with np.load(logs["data"], allow_pickle=False) as data:
        unlabelled = tmp_path / "unlabelled.npz"
        np.savez(unlabelled, **{name: data[name] for name in data.files if name != "y"})
    _one_line_error(run_cli(["infer", "--log", str(labelled), "--data", str(unlabelled)]), "needs the samples' labels")
    with np.load(logs["data"], allow_pickle=False) as data:
        foreign = tmp_path / "foreign.npz"
        np.savez(foreign, **{name: data[name] + 10 * (name == "y") for name in data.files})
    _one_line_error(run_cli(["infer", "--log", str(labelled), "--data", str(foreign)]), "the model has 10 classes")
    assert run_cli(["infer", "--log", str(labelled), "--data", str(unlabelled), "--no-labels"]).returncode == 0


def test_infer_says_when_it_runs_on_another_device_than_the_run(logs, tmp_path):
    with h5py.File(logs["fedgmi"]) as f:
        run_device = json.loads(f.attrs["summary"])["rank_device"][-1]
    assert run_device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    same = run_cli(["infer", "--log", str(logs["fedgmi"]), "--data", str(logs["data"]), "--clients", "9",
                    "--device", run_device.split(":")[0]])
    assert same.returncode == 0 and "note:" not in same.stderr, same.stderr
    other = tmp_path / "other-device.h5"
    shutil.copy(logs["fedgmi"], other)
    with h5py.File(other, "r+") as f:  # as if its clients had been computed on the other device type
        summary = json.loads(f.attrs["summary"])
        summary["rank_device"] = ["cpu"] if run_device.startswith("cuda") else ["cuda:0"]
        f.attrs["summary"] = json.dumps(summary)
    done = run_cli(["infer", "--log", str(other), "--data", str(logs["data"]), "--clients", "9"]
                   + (["--device", "cuda"] if run_device.startswith("cuda") else []))
    assert done.returncode == 0, done.stderr
    assert "note: the run computed its clients on" in done.stderr and "reproduces its evaluation" in done.stderr


def test_infer_bad_input_exits_2_and_writes_nothing(logs, tmp_path):
    data, log = str(logs["data"]), str(logs["fedgmi"])
    existing = tmp_path / "exists.npz"
    existing.write_bytes(b"keep me")
    _one_line_error(run_cli(["infer", "--log", log, "--data", data, "--out", str(existing)]), "exists")
    assert existing.read_bytes() == b"keep me"
    _one_line_error(run_cli(["infer", "--log", str(logs["fedavg"]), "--data", data]), "inference needs FedGMI")
    _one_line_error(run_cli(["infer", "--log", log, "--data", str(tmp_path / "none.npz")]), "data file not found")
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.full((5, 10), 0.5))
    _one_line_error(run_cli(["infer", "--log", log, "--data", str(wide)]), "the model expects 64")
    scaled = tmp_path / "scaled.npz"
    np.savez(scaled, x=np.full((5, 64), 16.0))
    _one_line_error(run_cli(["infer", "--log", log, "--data", str(scaled)]), "scaled to [0, 1]")
    _one_line_error(run_cli(["infer", "--log", log, "--data", data, "--clients", "99"]), "no samples for client")
    _one_line_error(run_cli(["infer", "--log", log, "--data", data, "--out", str(tmp_path / "r.txt")]), "must end in")
    with h5py.File(logs["fedgmi"]) as source, h5py.File(tmp_path / "old.h5", "w") as old:
        for name in ("rounds", "clients", "status"):
            source.copy(name, old)
    _one_line_error(run_cli(["infer", "--log", str(tmp_path / "old.h5"), "--data", data]), "holds no saved model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.npz", "old.h5", "scaled.npz", "wide.npz"]


def test_posterior_intervals_cover_at_their_level():
    """With samples whose components are all but certain, the posterior is Dirichlet(prior +
    counts): its 80% intervals must hold the generating proportions about 80% of the time."""
    rng = np.random.default_rng(1)
    hits, total = 0, 0
    for client in range(60):
        truth = rng.dirichlet(np.full(3, 0.5))
        z = rng.choice(3, size=80, p=truth)
        log_likelihood = np.full((80, 3), -40.0)
        log_likelihood[np.arange(80), z] = 0.0
        estimate = np.bincount(z, minlength=3) / 80
        draws, shares = posterior(log_likelihood, estimate, 0.5, 400, 50, np.random.default_rng(client))
        np.testing.assert_allclose(shares, np.broadcast_to(estimate, shares.shape))  # assignments are certain
        low, high = np.quantile(draws, [0.1, 0.9], axis=0)
        hits += int(((low <= truth) & (truth <= high)).sum())
        total += 3
    assert 0.7 <= hits / total <= 0.9, hits / total


def test_watch_follows_a_live_mpi_job(tmp_path):
    log = tmp_path / "live.h5"
    args = small_args("algorithm.rounds=60", "algorithm.eval_every=20")
    # the job's output goes to a file: an undrained pipe that fills up would stall the job itself
    job_output = open(tmp_path / "job.out", "wb")
    job = subprocess.Popen([mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", "-m", "fedgmi_mpi", "run", "--quiet",
                            "--out", str(log), *args], cwd=REPO, stdout=job_output, stderr=subprocess.STDOUT)
    try:
        watched = subprocess.run([sys.executable, "-m", "fedgmi_mpi", "watch", str(log), "--interval", "0.1"],
                                 capture_output=True, text=True, timeout=MPI_TIMEOUT, cwd=REPO)
        job.wait(timeout=MPI_TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
        job_output.close()
    assert job.returncode == 0 and watched.returncode == 0, (watched.stderr, (tmp_path / "job.out").read_text()[-3000:])
    progress = [line for line in watched.stdout.splitlines() if line.startswith("[")]
    assert len(progress) >= 3, watched.stdout
    done_counts = [int(line.split("] train ")[1].split("/")[0]) for line in progress]
    assert done_counts == sorted(done_counts) and min(done_counts) < 60 and done_counts[-1] == 60, watched.stdout
    assert "last evaluation" in watched.stdout and "run complete:" in watched.stdout
    assert "proportion MAE vs actual counts" in watched.stdout


def test_watch_reads_a_log_caught_mid_round(logs, tmp_path):
    # SWMR readers refresh dataset by dataset while the writer extends them one after another:
    # a look mid-round finds some a row longer than others (CI once caught an evaluation's round
    # without its summary row). The snapshot must stop at the last row that every one holds.
    live = tmp_path / "live.h5.partial"
    shutil.copy(logs["fedgmi"], live)
    with h5py.File(live, "r+") as f:
        f["status"][0] = 0
        rounds = len(f["rounds/phase"])
        evaluations = f["evaluate/round"][()]
        f["rounds/wall_time"].resize(rounds - 1, axis=0)
        f["evaluate/summary/proportion_mae"].resize(len(evaluations) - 1, axis=0)
    assert len(evaluations) >= 2
    state = watch_snapshot(tmp_path / "live.h5")
    assert state["rounds"] == rounds - 1 and not state["complete"]
    assert state["evaluate"]["round"] == int(evaluations[-2])


def test_watch_gives_up_on_a_dead_run(logs, tmp_path):
    dead = tmp_path / "dead.h5.partial"
    shutil.copy(logs["fedgmi"], dead)
    with h5py.File(dead, "r+") as f:
        f["status"][0] = 0  # as a run that died mid-way leaves it
    started = time.monotonic()
    result = run_cli(["watch", str(tmp_path / "dead.h5"), "--interval", "0.2", "--give-up", "2"])
    assert result.returncode == 2 and "the run seems to have died" in result.stderr, result.stderr
    assert "train 4/4" in result.stdout and time.monotonic() - started < 60


def test_watch_once_and_a_missing_log(logs, tmp_path):
    once = run_cli(["watch", str(logs["fedgmi"]), "--once"])
    assert once.returncode == 0 and "train 4/4" in once.stdout
    started = time.monotonic()
    _one_line_error(run_cli(["watch", str(tmp_path / "never.h5"), "--once"]), "no log at")
    assert time.monotonic() - started < 60
