"""The command line in one process: config files, user data, bad input (exit 2, one line)."""
import hashlib

import h5py
import numpy as np
import pytest

from conftest import run_cli, small_args


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


@pytest.mark.parametrize("override,fragment", [
    ("algorithm.rounds=zero", "algorithm.rounds: expected an integer"),
    ("algorithm.nonsense=1", "unknown config key 'algorithm.nonsense'"),
    ("scenario.dirichlet_alpha=0", "scenario.dirichlet_alpha must be > 0"),
    ("runtime.device=tpu", "runtime.device"),
    ("scenario.name=npz", "scenario.path"),
    ("compression.uplink_bits=0.0001", "the smallest budget that works is"),
    ("compression.downlink_bits=64", "compression.downlink_bits must be in (0, 32]"),
    ("compression.uplink=gzip", "compression.uplink must be auto or one of"),
])
def test_bad_values_exit_2_with_one_line(tmp_path, override, fragment):
    _one_line_error(run_cli(["run", "--set", override, "--out", str(tmp_path / "x.h5")]), fragment)
    assert not list(tmp_path.iterdir())


def test_yaml_config_file_and_existing_log(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("seed: 3\nalgorithm:\n  rounds: 2\n  warmup_rounds: 1\nscenario:\n  num_clients: 6\n")
    out = tmp_path / "run.h5"
    result = run_cli(["run", str(cfg), *small_args("algorithm.rounds=2", "scenario.num_clients=6"), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert '"seed": 3' in f.attrs["config"] and f["train/round"].shape[0] == 2
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    _one_line_error(run_cli(["run", str(cfg), "--out", str(out)]), "exists")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: [1, 2\n")
    _one_line_error(run_cli(["run", str(bad), "--out", str(tmp_path / "y.h5")]), "not valid YAML")
    _one_line_error(run_cli(["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "y.h5")]), "not found")


def test_user_npz_data_round_trips_and_pickles_are_refused(tmp_path):
    data = tmp_path / "digits.npz"
    result = run_cli(["export-scenario", *small_args(), "--out", str(data)])
    assert result.returncode == 0, result.stderr
    _one_line_error(run_cli(["export-scenario", "--out", str(data)]), "exists")
    out = tmp_path / "run.h5"
    result = run_cli(["run", *small_args("scenario.name=npz", f"scenario.path={data}"), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "proportion MAE" in result.stdout
    with np.load(data) as arrays:
        fields = dict(arrays)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**fields, "y": np.array([object()] * len(fields["y"]), dtype=object)})
    _one_line_error(run_cli(["run", *small_args("scenario.name=npz", f"scenario.path={pickled}"),
                             "--out", str(tmp_path / "p.h5")]), "without pickle")
    unscaled = tmp_path / "unscaled.npz"
    np.savez(unscaled, **{**fields, "x": fields["x"] * 16})
    _one_line_error(run_cli(["run", *small_args("scenario.name=npz", f"scenario.path={unscaled}"),
                             "--out", str(tmp_path / "u.h5")]), "[0, 1]")
    not_npz = tmp_path / "junk.npz"
    not_npz.write_text("hello")
    _one_line_error(run_cli(["run", *small_args("scenario.name=npz", f"scenario.path={not_npz}"),
                             "--out", str(tmp_path / "j.h5")]), "not a readable .npz")


def test_info_reports_mpi_and_devices():
    result = run_cli(["info"])
    assert result.returncode == 0
    assert "MPICH" in result.stdout or "Open MPI" in result.stdout
    assert "world_size" in result.stdout and "torch" in result.stdout
