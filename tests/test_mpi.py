"""End to end over real MPI (mpiexec from pip's MPICH): schema, determinism, failures, bad input."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, mpiexec, run_cli, run_mpi, small_args


def _read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


def test_three_ranks_write_a_complete_standard_log(tmp_path):
    out = tmp_path / "run.h5"
    result = run_mpi(3, ["run", *small_args(), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "proportion MAE" in result.stdout and "sample-assignment accuracy" in result.stdout
    assert not (tmp_path / "run.h5.partial").exists()
    with h5py.File(out, "r") as f:
        for key in ("config", "seed", "versions", "mpi_library", "world_size", "git_commit", "summary"):
            assert key in f.attrs, key
        assert f.attrs["world_size"] == 3 and "MPICH" in f.attrs["mpi_library"]
        # which device made the numbers (CPU and GPU round differently): the server is on the CPU
        devices = json.loads(f.attrs["summary"])["rank_device"]
        worker = "cuda:0" if torch.cuda.is_available() else "cpu"
        assert devices == ["cpu", worker, worker], devices
        assert f["status"][0] == 1
        clients, k = 10, 4
        n_rounds = f["rounds/wall_time"].shape[0]
        assert f["rounds/bytes_down"].shape == (n_rounds, clients) and f["rounds/bytes_up"].shape == (n_rounds, clients)
        n_train = f["train/round"].shape[0]
        assert n_train == 4
        assert f["train/proportions"].shape == (n_train, clients, k)
        assert f["train/log_likelihood"].shape == (n_train, clients, k)
        assert f["train/accuracy"].shape == (n_train, clients)
        assert f["train/server/responsibility_mass"].shape == (n_train, k)
        assert f["evaluate/proportions"].shape == (2, clients, k)  # after round 2 and at the end
        assert f["truth/true_proportions"].shape == (clients, k) and f["truth/component_counts"].shape == (clients, k)
        proportions = f["train/proportions"][-1]
        seen = f["clients/seen"][()].astype(bool)
        assert seen.sum() == 8
        assert np.allclose(proportions[seen].sum(1), 1.0)
        assert np.all(np.isnan(proportions[~seen]))  # unseen clients infer at evaluation rounds only
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        took_part = f["rounds/participated"][()].astype(bool)
        assert np.all(took_part[f["rounds/phase"][()] == phases.index("train")] == seen)
        assert np.all(took_part[f["rounds/phase"][()] == phases.index("evaluate")])
        assert np.all(f["rounds/bytes_up"][-2][~seen] == 0)  # unseen clients never upload
        assert np.all((f["rounds/bytes_down"][()] > 0) == took_part)  # whoever takes part downloads, nobody else
        mass = f["train/server/responsibility_mass"][()]
        assert np.allclose(mass.sum(1), f["clients/num_train"][()][seen].sum())
    if shutil.which("h5dump"):  # the file is standard HDF5: the reference tool reads it
        dump = subprocess.run(["h5dump", "-H", str(out)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0, dump.stderr
        assert 'DATASET "proportions"' in dump.stdout and 'GROUP "train"' in dump.stdout
    else:
        print("h5dump not installed: standard-HDF5 check skipped (apt-get install hdf5-tools)")


# Cohorts of 5 of the 8 seen clients, split over the worker ranks afresh every round, so clients
# change ranks and their state must follow them.
COHORTS = ["algorithm.clients_per_round=5"]
# Compressed both ways, with per-client state (top-k error-feedback residuals, which keep a client
# on its home rank) and shared-seed randomness (Hadamard rotations) that must not depend on where a
# client runs.
COMPRESSED = [*COHORTS, "compression.uplink_bits=0.5", "compression.uplink=topk", "compression.downlink_bits=2"]


@pytest.mark.parametrize("budget", [[], COHORTS, COMPRESSED], ids=["dense", "cohorts", "compressed-cohorts"])
def test_results_do_not_depend_on_how_many_ranks_host_the_clients(tmp_path, budget):
    outs = {}
    for ranks in (2, 3):
        outs[ranks] = tmp_path / f"n{ranks}.h5"
        result = run_mpi(ranks, ["run", *small_args(*budget), "--out", str(outs[ranks])])
        assert result.returncode == 0, result.stderr
    outs[1] = tmp_path / "serial.h5"
    result = run_cli(["run", *small_args(*budget), "--out", str(outs[1])])
    assert result.returncode == 0, result.stderr
    for name in ("train/proportions", "train/log_likelihood", "train/server/responsibility_mass",
                 "evaluate/proportions", "evaluate/accuracy", "topics/server/topic_log_likelihood",
                 "rounds/bytes_up", "rounds/bytes_down", "rounds/bytes_catch_up", "rounds/participated"):
        reference = _read(outs[1], name)
        for ranks in (2, 3):  # bitwise: per-client random streams and order-independent exact sums
            assert np.array_equal(_read(outs[ranks], name), reference, equal_nan=True), (name, ranks)


def test_a_compressed_run_keeps_every_cap_and_its_broadcasts_shrink(tmp_path):
    outs = {}
    for label, budget in (("dense", []), ("compressed", ["compression.uplink_bits=0.25", "compression.downlink_bits=1"])):
        outs[label] = tmp_path / f"{label}.h5"
        result = run_mpi(3, ["run", *small_args(*budget), "--out", str(outs[label])])
        assert result.returncode == 0, result.stderr
    with h5py.File(outs["compressed"], "r") as f, h5py.File(outs["dense"], "r") as dense:
        parameters = int(f.attrs["model_parameters"])
        assert f.attrs["uplink_bits"] == 0.25 and f.attrs["downlink_bits"] == 1
        assert f.attrs["uplink_method"] == "hadamard" and f.attrs["downlink_method"] == "hadamard"
        assert f.attrs["uplink_cap_bytes"] == int(np.ceil(0.25 * parameters / 8))
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        train = f["rounds/phase"][()] == phases.index("train")
        up_cap, down_cap = f["rounds/uplink_cap"][()], f["rounds/downlink_cap"][()]
        assert np.all(up_cap[train] == f.attrs["uplink_cap_bytes"]) and np.all(up_cap[~train] == -1)
        assert np.all(f["rounds/bytes_up"][()][train] <= up_cap[train, None])  # what a reader checks
        assert np.all(f["rounds/bytes_down"][()][train] <= down_cap[train, None])
        assert f["rounds/bytes_up"][()][train].max() > 0.9 * f.attrs["uplink_cap_bytes"]  # the budget is used
        # the real MPI broadcast carries the compressed bytes: 2 workers x (the message + a 40-byte
        # header + the cohort's 8 client ids)
        bcast = f["rounds/mpi_broadcast_bytes"][()][train]
        assert np.all(bcast == 2 * (f["rounds/bytes_down"][()][train][:, 0] + 40 + 8 * 8))
        assert np.median(dense["rounds/mpi_broadcast_bytes"][()][train]) > 25 * np.median(bcast)
        # the reduce stays dense: int64 fixed-point sums of the decoded deltas, the K aggregation
        # weights and (aggregation_power != 1) the K responsibility masses, per worker
        assert np.all(f["rounds/mpi_reduce_bytes"][()][train] == 2 * 8 * (parameters + 4 + 4))
        assert np.all(f["rounds/mpi_gather_bytes"][()] > 0)


@pytest.mark.parametrize("fail_rank,phase,launcher", [
    (2, "train", "mpi4py"), (0, "train", "mpi4py"), (1, "topics", "plain"),
])
def test_a_failing_rank_brings_the_job_down(tmp_path, fail_rank, phase, launcher):
    out = tmp_path / "run.h5"
    script = str(REPO / "tests" / "mpi_scripts" / "fail_on_rank.py")
    cmd = [mpiexec(), "-n", "3", sys.executable] + (["-m", "mpi4py"] if launcher == "mpi4py" else [])
    cmd += [script, "run", *small_args(), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), FAIL_RANK=str(fail_rank), FAIL_PHASE=phase)
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert result.returncode != 0
    assert "injected failure" in result.stderr
    assert time.monotonic() - started < 120
    assert not out.exists()  # the final log only appears on success
    partial = tmp_path / "run.h5.partial"
    # What was logged before the failure stays readable (a SWMR reader opens a killed writer's file).
    with h5py.File(partial, "r", libver="latest", swmr=True) as f:
        assert f["status"][0] == 0
        assert f["rounds/wall_time"].shape[0] > 0


def test_an_existing_log_is_refused_on_every_rank_and_left_untouched(tmp_path):
    out = tmp_path / "run.h5"
    out.write_bytes(b"precious results")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    result = run_mpi(3, ["run", *small_args(), "--out", str(out)], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "exists" in result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "run.h5.partial").exists()


def test_bad_config_value_is_one_line_and_exit_2_under_mpi(tmp_path):
    result = run_mpi(3, ["run", "--set", "algorithm.lr=-1", "--out", str(tmp_path / "x.h5")], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: algorithm.lr must be > 0"
