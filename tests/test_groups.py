"""Client groups and cohorts in one process: a client's numbers do not depend on its group, the
cohort decides who works, and returning clients pay for what they missed."""
import numpy as np
import pytest

from fedgmi_mpi import compression
from fedgmi_mpi import config as config_mod
from fedgmi_mpi.algorithms.fedgmi import FedGMI
from fedgmi_mpi.runtime import loop
from fedgmi_mpi.scenarios import rotated_digits

from conftest import SMALL


def _run(groups: loop.Groups, *extra: str):
    config = config_mod.load(None, [*SMALL, *extra])
    s = config.scenario
    scenario = rotated_digits.build(config.seed, s.num_clients, s.unseen_clients, s.num_components,
                                    s.samples_per_client, s.test_samples_per_client, s.size_spread, s.dirichlet_alpha)
    algorithm = FedGMI(config, scenario)
    records = []
    state = loop.run(algorithm, scenario, compression.build(config, algorithm), loop.SerialTransport(), records.append,
                     groups)
    return state, records


def _same(a, b) -> bool:
    return np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("extra", [[], ["algorithm.clients_per_round=5"]], ids=["everyone", "cohorts"])
def test_batched_groups_and_one_by_one_agree_bitwise_on_every_phase(extra):
    reference_state, reference = _run(loop.Groups(batched=False), *extra)
    for groups in (loop.Groups(True, 1), loop.Groups(True, 3), loop.Groups(True, 64)):
        state, records = _run(groups, *extra)
        assert np.array_equal(state.params, reference_state.params)
        assert [r.broadcast.phase for r in records] == [r.broadcast.phase for r in reference]
        for record, expected in zip(records, reference):
            for name, values in expected.client_metrics.items():
                assert _same(record.client_metrics[name], values), (record.broadcast.phase, name, groups)
            assert _same(record.bytes_up, expected.bytes_up)
    phases = {r.broadcast.phase for r in reference}
    assert phases == {"codebook", "topics", "train", "evaluate"}


def test_a_cohort_trains_and_everybody_else_sits_the_round_out():
    _, records = _run(loop.Groups(), "algorithm.clients_per_round=3", "algorithm.rounds=6", "algorithm.eval_every=0")
    train = [r for r in records if r.broadcast.phase == "train"]
    seen = np.arange(10) < 8
    cohorts = [tuple(np.flatnonzero(r.participants)) for r in train]
    assert all(len(c) == 3 and set(c) <= set(np.flatnonzero(seen)) for c in cohorts)
    assert len(set(cohorts)) > 1  # drawn afresh every round
    for r in train:
        away = ~r.participants
        assert np.all(r.bytes_down[away] == 0) and np.all(r.bytes_up[away] == 0)
        assert np.all(np.isnan(r.client_metrics["proportions"][away]))
        assert np.all(r.bytes_up[r.participants] > 0)
    (final,) = [r for r in records if r.broadcast.phase == "evaluate"]
    assert final.participants.all()  # every client, unseen too, infers at evaluation rounds


def test_evaluation_can_be_limited_to_a_fixed_draw_of_clients():
    _, records = _run(loop.Groups(), "algorithm.eval_clients=4")
    evaluations = [r for r in records if r.broadcast.phase == "evaluate"]
    assert all(r.participants.sum() == 4 for r in evaluations)
    assert len({tuple(np.flatnonzero(r.participants)) for r in evaluations}) == 1


def test_a_returning_client_downloads_what_it_missed_or_the_dense_model():
    downloads = loop.Downloads(num_clients=3, dense_model_bytes=250, compressed=True)
    everyone, first, last = np.ones(3, bool), np.array([True, False, False]), np.array([False, False, True])
    message, catch_up = downloads.round(110, 100, True, True, first)  # round 0: client 0 only
    assert message.tolist() == [110, 0, 0] and catch_up.tolist() == [0, 0, 0]  # the initial model is free
    downloads.round(110, 100, True, True, first)  # round 1
    _, catch_up = downloads.round(110, 100, True, True, last)  # client 2 missed 2 x 100 bytes
    assert catch_up.tolist() == [0, 0, 200]
    downloads.round(110, 100, True, True, first)
    _, catch_up = downloads.round(30, 0, True, False, everyone)  # an evaluation: everyone catches up first
    assert catch_up.tolist() == [0, 250, 100]  # client 1 missed 4 x 100: the dense model is cheaper
    _, catch_up = downloads.round(110, 100, True, True, everyone)
    assert catch_up.tolist() == [0, 0, 0]
    dense = loop.Downloads(num_clients=3, dense_model_bytes=250, compressed=False)
    dense.round(260, 250, True, True, first)
    assert dense.round(260, 250, True, True, last)[1].tolist() == [0, 0, 0]  # a dense broadcast is the model
