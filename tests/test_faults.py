"""Faults under real mpiexec (every launch with a timeout): a rank killed, raising or stalled,
a NaN update, a full disk; and a stop by signal. Each ends the job within seconds, leaves the log
readable up to the last finished round and the last checkpoint intact, and a resumed run (on
another number of ranks, too) ends with a log bitwise equal to an uninterrupted one.

Faults are injected with FEDGMI_FAULT=<kind>:<rank>:<round> (fedgmi_mpi/runtime/faults.py)."""
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest

from conftest import MPI_TIMEOUT, REPO, differing_datasets, mpiexec, run_cli, run_mpi, small_args

FAULT_ROUND = 28  # the 4th (last) training round of the small run; checkpoints after every training round
# Cohorts and a compressed uplink with error feedback: the residuals live on home ranks and must
# travel through the checkpoint.
BUDGET = ["algorithm.clients_per_round=5", "compression.uplink_bits=0.5", "compression.uplink=topk",
          "compression.downlink_bits=2", "runtime.checkpoint_every=1", "runtime.round_timeout_s=5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, serial."""
    out = tmp_path_factory.mktemp("reference") / "run.h5"
    result = run_cli(["run", *small_args(*BUDGET), "--out", str(out), "--quiet"])
    assert result.returncode == 0, result.stderr
    return out


def _resume_matches(out, reference, ranks):
    result = run_mpi(ranks, ["run", *small_args(*BUDGET), "--out", str(out), "--resume", "--quiet"])
    assert result.returncode == 0, result.stderr
    assert differing_datasets(out, reference) == []
    with h5py.File(out, "r") as f:
        assert f["status"][0] == 1 and '"world_size": %d' % ranks in f.attrs["resumes"]


# (kind, rank, what stderr must say)
FAULTS = [
    ("kill", 2, "kills itself in round 28"),
    ("raise", 1, "rank 1 raises in round 28"),
    ("raise", 0, "the server raises in round 28"),
    ("stall", 1, "waited 5 s in the"),  # the other ranks' watchdog, not the stalled rank, ends it
    ("nan", 2, "train round 28, client"),
    ("disk_full", 0, "run.h5.partial: No space left on device; the last checkpoint"),
]


@pytest.mark.parametrize("kind,rank,message", FAULTS, ids=[f"{k}-rank{r}" for k, r, _ in FAULTS])
def test_a_fault_ends_the_job_fast_and_loses_nothing(tmp_path, reference, kind, rank, message):
    out = tmp_path / "run.h5"
    started = time.monotonic()
    result = run_mpi(3, ["run", *small_args(*BUDGET), "--out", str(out), "--quiet"],
                     env={"FEDGMI_FAULT": f"{kind}:{rank}:{FAULT_ROUND}"}, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode not in (0, 2, 3), result.stderr
    assert message in result.stderr, result.stderr
    if kind == "nan":
        assert "component(s) 0" in result.stderr
    assert elapsed < 45, elapsed  # ~10 s of run before the fault, then seconds (the watchdog: 5)
    assert not out.exists()
    with h5py.File(tmp_path / "run.h5.partial", "r", libver="latest", swmr=True) as f:  # readable, every finished round
        assert f["rounds/phase"].shape[0] == FAULT_ROUND and f["status"][0] == 0
    from fedgmi_mpi.logs import checkpoint

    path = tmp_path / "run.h5.checkpoint"
    _, snapshot = checkpoint.parse(path.read_bytes(), path)
    assert snapshot.rounds == FAULT_ROUND  # the last one, after round 27, intact
    if kind in ("kill", "stall"):
        _resume_matches(out, reference, ranks=2)


def test_a_signal_stops_the_run_with_a_checkpoint_and_it_resumes_exactly(tmp_path):
    budget = [*BUDGET, "algorithm.rounds=40", "runtime.checkpoint_every=0"]  # only the stop writes one
    reference = tmp_path / "reference.h5"
    assert run_cli(["run", *small_args(*budget), "--out", str(reference), "--quiet"]).returncode == 0
    out = tmp_path / "run.h5"
    command = [mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", "-m", "fedgmi_mpi", "run", *small_args(*budget),
               "--out", str(out), "--quiet"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:  # wait for the training rounds
            try:
                with h5py.File(tmp_path / "run.h5.partial", "r", libver="latest", swmr=True) as f:
                    if f["train/round"].shape[0] >= 5:
                        break
            except (OSError, KeyError):
                pass
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # what Slurm's --signal sends before a time limit
        _, stderr = job.communicate(timeout=MPI_TIMEOUT)
    finally:
        job.kill()
    assert job.returncode == 3, stderr
    assert "stopped by SIGUSR1 after round" in stderr and "--resume" in stderr
    assert not out.exists() and (tmp_path / "run.h5.checkpoint").exists()
    result = run_mpi(3, ["run", *small_args(*budget), "--out", str(out), "--resume", "--quiet"])
    assert result.returncode == 0, result.stderr
    assert differing_datasets(out, reference) == []
