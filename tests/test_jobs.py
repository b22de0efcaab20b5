"""jobs/fedgmi-long.sbatch's decisions, with stand-ins for srun and scontrol (a real Slurm run is
in docs/slurm.md): when it resumes, when it requeues, and that it holds an early signal until
the ranks can handle it."""
import os
import signal
import subprocess
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "jobs" / "fedgmi-long.sbatch"
# srun's stand-in: records its arguments; handles USR1 like a run (checkpoint, exit 3) once it has
# "started" (after STARTED seconds a signal would have killed a real rank that early), else exits
# with FAKE_RC after FAKE_SECONDS.
FAKE_SRUN = r'''#!/bin/bash
echo "$@" > "$FAKE_DIR/srun.args"
started=$SECONDS
trap 'echo "$((SECONDS - started))" > "$FAKE_DIR/signalled_after"; touch "$FEDGMI_OUT.checkpoint"; exit 3' USR1 TERM
for i in $(seq 1 "$FAKE_SECONDS"); do sleep 1; done
exit "$FAKE_RC"
'''


def _run(tmp_path, rc, seconds=1, signal_after=None, existing=(), restarts=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$FAKE_DIR/scontrol.args"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    out = tmp_path / "run.h5"
    for suffix in existing:
        (tmp_path / f"run.h5{suffix}").write_bytes(b"x")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path), FAKE_RC=str(rc),
               FAKE_SECONDS=str(seconds), FEDGMI_OUT=str(out), FEDGMI_SIGNAL_STARTUP="3", SLURM_JOB_ID="42",
               SLURM_RESTART_COUNT=str(restarts), SLURM_SUBMIT_DIR=str(REPO))
    job = subprocess.Popen(["bash", str(SCRIPT), "--set", "algorithm.rounds=5"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signal_after is not None:
        time.sleep(signal_after)
        job.send_signal(signal.SIGUSR1)  # what Slurm's --signal=B:USR1@... sends the batch script
    output, _ = job.communicate(timeout=60)
    requeued = (tmp_path / "scontrol.args").exists()
    return job.returncode, output, requeued, (tmp_path / "srun.args").read_text()


def test_a_signal_is_held_until_the_ranks_can_handle_it_then_the_job_requeues(tmp_path):
    rc, output, requeued, args = _run(tmp_path, rc=0, seconds=20, signal_after=0.5)
    assert int((tmp_path / "signalled_after").read_text()) >= 3  # held for FEDGMI_SIGNAL_STARTUP seconds
    assert rc == 0 and requeued and "requeueing job 42" in output
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "42"]
    assert "--resume" not in args and "--set algorithm.rounds=5" in args


def test_a_checkpoint_of_an_unfinished_log_is_resumed(tmp_path):
    rc, output, requeued, args = _run(tmp_path, rc=0, existing=(".partial", ".checkpoint"), restarts=1)
    assert rc == 0 and not requeued and "--resume" in args.split()


def test_a_partial_log_without_checkpoint_is_kept_aside_and_the_run_starts_afresh(tmp_path):
    rc, output, requeued, args = _run(tmp_path, rc=0, existing=(".partial",), restarts=1)
    assert "--resume" not in args.split() and (tmp_path / "run.h5.partial.attempt-1").exists()


@pytest.mark.parametrize("code", [1, 2, 137])
def test_bad_input_and_failures_never_requeue_even_after_a_signal(tmp_path, code):
    rc, output, requeued, _ = _run(tmp_path, rc=code, seconds=1, signal_after=0.2, existing=(".partial", ".checkpoint"))
    assert rc == code and not requeued


def test_requeues_are_bounded(tmp_path):
    rc, output, requeued, _ = _run(tmp_path, rc=3, existing=(".partial", ".checkpoint"), restarts=20)
    assert rc == 3 and not requeued
