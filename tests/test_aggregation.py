"""Server aggregation weights each component by responsibility mass; sums are exact."""
import numpy as np
import pytest

from fedgmi_mpi import compression
from fedgmi_mpi.algorithms.base import Aggregated, Broadcast, ClientUpload, ModelLayout, UploadLayout, Summed, pack
from fedgmi_mpi.algorithms.fedgmi import FedGMI, ServerState
from fedgmi_mpi.config import Config
from fedgmi_mpi.runtime import exact_sum, loop
from fedgmi_mpi.scenarios import rotated_digits


def test_fedgmi_moves_each_component_by_its_mass_weighted_mean_delta(small_config):
    scenario = rotated_digits.build(0, num_clients=2, unseen_clients=0, samples_per_client=10, test_samples_per_client=2)
    algorithm = FedGMI(small_config, scenario)
    k, p = algorithm.num_components, algorithm.layout.per_component
    params = np.zeros((k, p), dtype=np.float32)
    state = ServerState(params=params.copy(), phase="train", train_round=5)
    deltas = [np.full((k, p), 1.0), np.full((k, p), 3.0)]
    masses = [np.array([1.0, 3.0, 0.0, 2.0]), np.array([3.0, 1.0, 0.0, 0.0])]
    summed = Summed(weighted_delta=sum(m[:, None] * d for m, d in zip(masses, deltas)),
                    weights=sum(masses), statistics=np.zeros(0))
    result = algorithm.aggregate(state, Broadcast("train", 0, np.zeros(1, np.float32)), summed)
    new = result.state.params
    assert new[0] == pytest.approx(np.full(p, (1 * 1 + 3 * 3) / 4))
    assert new[1] == pytest.approx(np.full(p, (3 * 1 + 1 * 3) / 4))
    assert np.all(new[2] == 0.0)  # no mass anywhere: the component stays where it was
    assert new[3] == pytest.approx(np.full(p, 1.0))
    assert result.metrics["responsibility_mass"].tolist() == [4.0, 4.0, 0.0, 2.0]
    assert any("component 2" in e and "collapsing" in e for e in result.events)


class _Recorder:
    """A toy algorithm: one round, each client uploads a known delta, weight and statistic."""

    name = "recorder"

    def __init__(self, deltas, weights, stats):
        self.deltas, self.weights, self.stats = deltas, weights, stats
        self.summed = None

    def metric_specs(self):
        return {"only": {"value": ()}}

    def server_metric_specs(self):
        return {"only": {}}

    def model_layout(self):
        return ModelLayout(rows=2, row_size=3, segments=(3,), control_bytes=0)

    def initial_model(self):
        return np.zeros((2, 3), dtype=np.float32)

    def init_server(self):
        return 0

    def configure(self, state):
        return Broadcast("only", 0, pack([np.zeros(3)])) if state == 0 else None

    def upload_layout(self, broadcast):
        return UploadLayout(rows=2, row_size=3, statistics=1)

    def client_state_spec(self):
        return {}

    def init_client(self, client):
        return {}

    def client_update(self, broadcast, client, state):
        cid = client.client_id
        if cid == 2:  # a client that sends nothing
            return ClientUpload(None, np.zeros(0), np.zeros(0), {"value": np.array(cid)}, sends=False)
        return ClientUpload(self.deltas[cid], self.weights[cid], self.stats[cid], {"value": np.array(cid * 10.0)})

    def aggregate(self, state, broadcast, summed):
        self.summed = summed
        return Aggregated(1, {})


def test_round_loop_sums_weighted_deltas_exactly_and_counts_bytes():
    scenario = rotated_digits.build(0, num_clients=3, unseen_clients=0, samples_per_client=5, test_samples_per_client=2)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3)]
    weights = [np.array([1.5, 0.25]), np.array([2.0, 4.0]), None]
    stats = [np.array([7.0]), np.array([-2.5]), None]
    algorithm = _Recorder(deltas, weights, stats)
    records = []
    loop.run(algorithm, scenario, compression.build(Config(), algorithm), loop.SerialTransport(),
             on_round=records.append)
    expected = weights[0][:, None] * deltas[0].astype(np.float64) + weights[1][:, None] * deltas[1].astype(np.float64)
    assert np.allclose(algorithm.summed.weighted_delta, expected, atol=1e-9)
    assert algorithm.summed.weights.tolist() == [3.5, 4.25]
    assert algorithm.summed.statistics.tolist() == [4.5]
    (record,) = records
    assert record.client_metrics["value"].tolist() == [0.0, 10.0, 2.0]
    payload_bytes = 5 + 4 * len(pack([np.zeros(3)]))  # flags and length, then the float32 control values
    assert record.bytes_down.tolist() == [payload_bytes] * 3
    assert record.bytes_up.tolist() == [2 * 3 * 4 + 8 * 3] * 2 + [0]


def test_exact_sum_does_not_depend_on_order():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=1000) * 10 ** rng.uniform(-6, 3) for _ in range(30)]
    limit = exact_sum.contribution_limit(30)
    forward = sum(exact_sum.encode(p, limit) for p in parts)
    backward = sum(exact_sum.encode(p, limit) for p in reversed(parts))
    halves = sum(exact_sum.encode(p, limit) for p in parts[::2]) + sum(exact_sum.encode(p, limit) for p in parts[1::2])
    assert np.array_equal(forward, backward) and np.array_equal(forward, halves)
    assert np.allclose(exact_sum.decode(forward), np.sum(parts, axis=0), atol=1e-8)
    with pytest.raises(OverflowError):
        exact_sum.encode(np.array([np.inf]), limit)
