from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Small enough for seconds per run on 2 cores, big enough to exercise every phase.
SMALL = [
    "scenario.num_clients=8", "scenario.unseen_clients=2", "scenario.samples_per_client=40",
    "scenario.test_samples_per_client=10", "algorithm.rounds=4", "algorithm.warmup_rounds=2",
    "algorithm.topic_iterations=15", "algorithm.codebook_size=16", "algorithm.codebook_lloyd_iterations=2",
    "algorithm.topic_restarts=2", "algorithm.eval_every=2", "algorithm.estep_samples=2",
    "algorithm.eval_samples=4", "algorithm.test_samples=2", "model.hidden=32",
]
MPI_TIMEOUT = 240  # seconds: every test that launches MPI has a hard limit


def mpiexec() -> str:
    candidate = Path(sys.executable).parent / "mpiexec"
    found = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec on this machine")
    return found


def run_mpi(ranks: int, args: list[str], timeout: int = MPI_TIMEOUT, module: bool = True, env: dict | None = None):
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py"]
    cmd += (["-m", "fedgmi_mpi"] if module else []) + args
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"MPI job hung: {' '.join(cmd)} did not finish in {timeout}s\n{exc.stdout}\n{exc.stderr}")


def run_cli(args: list[str], timeout: int = MPI_TIMEOUT):
    return subprocess.run([sys.executable, "-m", "fedgmi_mpi", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)


def small_args(*extra: str) -> list[str]:
    out = []
    for item in [*SMALL, *extra]:
        out += ["--set", item]
    return out


@pytest.fixture
def small_config():
    from fedgmi_mpi import config

    return config.load(None, [*SMALL])


# What may differ between two runs of the same seed: how long things took and what MPI moved
# between ranks (which depends on how many there are).
RUN_DEPENDENT = ("rounds/wall_time", "rounds/compute_time", "rounds/mpi_broadcast_bytes", "rounds/mpi_reduce_bytes",
                 "rounds/mpi_gather_bytes")


def differing_datasets(first, second) -> list[str]:
    """Datasets of two logs that are not bitwise equal (NaN equal to NaN), or present in one only."""
    import h5py
    import numpy as np

    def names(f):
        found = []
        f.visititems(lambda name, node: found.append(name) if isinstance(node, h5py.Dataset) else None)
        return set(found)

    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        differ = sorted(names(a) ^ names(b))
        for name in sorted(names(a) & names(b)):
            if name in RUN_DEPENDENT:
                continue
            x, y = a[name][()], b[name][()]
            floats = getattr(x, "dtype", None) is not None and x.dtype.kind == "f"
            if np.shape(x) != np.shape(y) or not np.array_equal(x, y, equal_nan=floats):
                differ.append(name)
    return differ
