"""Checkpoints in one process: the state codec, atomic writes, and what a checkpoint refuses."""
import numpy as np
import pytest

from fedgmi_mpi.algorithms.codebook import CodebookState
from fedgmi_mpi.algorithms.fedgmi import ServerState
from fedgmi_mpi.errors import UserError
from fedgmi_mpi.logs import checkpoint
from fedgmi_mpi.logs.checkpoint import Header, Snapshot


def _snapshot(state) -> Snapshot:
    return Snapshot(rounds=7, train_rounds=3, server_state=state, client_table=np.arange(6.0).reshape(3, 2),
                    held_model=np.ones((2, 5), np.float32), downloads_sent=12, downloads_synced=np.array([1, 2, 3]),
                    pinned=np.zeros((3, 4)), has_pinned=np.array([1, 0, 3], np.int8),
                    observed={"codebook": np.eye(3)},
                    observer={"rounds": 7, "last_evaluation": {"accuracy": np.float64(0.5), "permutation": np.arange(2),
                                                               "note": None}, "last_phase": "train", "elapsed": 1.5},
                    log_rows={"rounds/phase": 7, "train/round": 3}, log_model={"round": np.array([5])})


def _header(**changes) -> Header:
    values = dict(config={"seed": 0, "runtime": {"device": "cpu"}}, num_components=2, package_version="0.1.0",
                  git_commit="abc", world_size=3, complete=False)
    values.update(changes)
    return Header(**values)


def test_a_server_state_survives_the_file_exactly(tmp_path):
    state = ServerState(params=np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32), phase="train",
                        round=41, codebook=CodebookState(np.ones((4, 3)), 16, 2, 0, done=True, settled=None),
                        topics=np.full((2, 2, 4), 0.25), topic_loglik=np.array([-1.5, -2.5]), best_restart=1,
                        train_round=3, collapsed={2, 0}, groups=((0,), (1, 2)))
    path = tmp_path / "run.h5.checkpoint"
    checkpoint.write(path, _header(), _snapshot(state))
    header, snapshot = checkpoint.parse(path.read_bytes(), path)
    restored = snapshot.server_state
    assert type(restored) is ServerState and type(restored.codebook) is CodebookState
    assert restored.params.dtype == np.float32 and np.array_equal(restored.params, state.params)
    assert restored.collapsed == {0, 2} and restored.groups == ((0,), (1, 2)) and restored.codebook.settled is None
    assert (restored.phase, restored.round, restored.best_restart, restored.codebook.done) == ("train", 41, 1, True)
    assert snapshot.observer["last_evaluation"]["accuracy"] == 0.5 and snapshot.observer["last_evaluation"]["note"] is None
    assert snapshot.log_rows == {"rounds/phase": 7, "train/round": 3} and snapshot.downloads_sent == 12
    assert header.num_components == 2 and header.config["runtime"]["device"] == "cpu"


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "run.h5.checkpoint"
    checkpoint.write(path, _header(), _snapshot(ServerState(params=np.zeros((1, 1), np.float32))))
    before = path.read_bytes()
    with pytest.raises(TypeError):  # a value the format cannot hold fails half-way through the write
        checkpoint.write(path, _header(), _snapshot(ServerState(params=np.zeros((1, 1), np.float32), phase=object())))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_a_checkpoint_cannot_name_a_class_outside_the_package(tmp_path):
    import h5py

    path = tmp_path / "run.h5.checkpoint"
    checkpoint.write(path, _header(), _snapshot(ServerState(params=np.zeros((1, 1), np.float32))))
    for spec, message in (("subprocess:Popen", "outside fedgmi_mpi"), ("fedgmi_mpi.__main__:main", "outside fedgmi_mpi"),
                          ("fedgmi_mpi.algorithms.fedgmi:FedGMI", "not a server-state dataclass"),
                          ("fedgmi_mpi.algorithms.fedgmi:np.ndarray", "not a server-state dataclass")):
        with h5py.File(path, "r+") as f:
            f["server_state"].attrs["type"] = spec
        with pytest.raises(UserError, match=message):
            checkpoint.parse(path.read_bytes(), path)


def test_only_keys_that_change_results_must_match():
    saved = {"seed": 0, "algorithm": {"rounds": 10}, "runtime": {"device": "cpu", "checkpoint_every": 5}}
    current = {"seed": 0, "algorithm": {"rounds": 20}, "runtime": {"device": "cuda", "checkpoint_every": 1}}
    assert checkpoint.differing_keys(saved, current) == ["algorithm.rounds (checkpoint 10, now 20)"]


# ---- the loop stopped in any phase, through the file, and continued ----------------------------
def _loop_run(config, stop_at=None, resume=None, saved=None):
    """The serial loop (a fresh scenario, algorithm and channels, as a new process would build
    them); ``stop_at``: stop before that communication round and keep the snapshot, through the file."""
    from fedgmi_mpi import compression, scenarios
    from fedgmi_mpi.algorithms import build as build_algorithm
    from fedgmi_mpi.runtime import loop

    scenario = scenarios.build(config)
    algorithm = build_algorithm(config, scenario, "cpu")
    records = []

    def write(snapshot, final):
        path = saved / "run.h5.checkpoint"
        checkpoint.write(path, _header(), snapshot)
        saved_snapshots.append(checkpoint.parse(path.read_bytes(), path)[1])

    saved_snapshots = []
    checkpoints = loop.Checkpoints(every=0, write=write, stop_requested=lambda: stop_at is not None and len(records) == stop_at,
                                   resume=resume)
    try:
        state = loop.run(algorithm, scenario, compression.build(config, algorithm), loop.SerialTransport(),
                         records.append, loop.Groups(), checkpoints)
    except loop.Stopped:
        return None, records, saved_snapshots[-1]
    return state, records, None


@pytest.mark.parametrize("algorithm,stop_at", [("fedgmi", 5), ("fedgmi", 15), ("fedgmi", 26), ("fedgmm", 3),
                                               ("fedem", 2), ("local", 3)],
                         ids=["fedgmi-codebook", "fedgmi-topics", "fedgmi-train", "fedgmm", "fedem", "local"])
def test_a_run_stopped_in_any_phase_continues_exactly(tmp_path, algorithm, stop_at):
    from fedgmi_mpi import config as config_mod

    from conftest import SMALL

    extra = ["compression.uplink_bits=0.5", "compression.uplink=topk", "algorithm.clients_per_round=5"]
    config = config_mod.load(None, [*SMALL, f"algorithm.name={algorithm}", *(extra if algorithm != "local" else [])])
    reference_state, reference, _ = _loop_run(config)
    _, before, snapshot = _loop_run(config, stop_at=stop_at, saved=tmp_path)
    assert len(before) == stop_at and snapshot.rounds == stop_at
    state, after, _ = _loop_run(config, resume=snapshot)
    records = before + after
    assert [r.broadcast.round for r in records] == [r.broadcast.round for r in reference]
    assert np.array_equal(state.params, reference_state.params)
    for record, expected in zip(records, reference):
        assert np.array_equal(record.bytes_up, expected.bytes_up)
        for name, values in expected.client_metrics.items():
            assert np.array_equal(record.client_metrics[name], values, equal_nan=True), (record.broadcast.round, name)


@pytest.mark.parametrize("name", ["fedgmi", "oracle", "local", "fedavg", "fedprox", "ifca", "fedem", "fedgmm"])
def test_every_algorithms_server_state_can_be_checkpointed(tmp_path, name, small_config):
    import dataclasses

    from fedgmi_mpi import scenarios
    from fedgmi_mpi.algorithms import build as build_algorithm

    config = dataclasses.replace(small_config, algorithm=dataclasses.replace(small_config.algorithm, name=name))
    state = build_algorithm(config, scenarios.build(config), "cpu").init_server()
    path = tmp_path / "run.h5.checkpoint"
    checkpoint.write(path, _header(), _snapshot(state))
    restored = checkpoint.parse(path.read_bytes(), path)[1].server_state
    assert type(restored) is type(state) and np.array_equal(restored.params, state.params)
