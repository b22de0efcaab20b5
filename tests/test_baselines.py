"""The baselines: tiny cases with known answers, truth isolation, and rank-count determinism."""
import h5py
import numpy as np
import pytest
import torch

from fedgmi_mpi import compression, config as config_mod, scenarios
from fedgmi_mpi.algorithms import ALGORITHMS, build
from fedgmi_mpi.algorithms.common import Batch
from fedgmi_mpi.runtime import loop

from conftest import SMALL, run_cli, run_mpi, small_args

BASELINES = ["local", "fedavg", "fedprox", "ifca", "fedem", "fedgmm", "oracle"]


def _config(*extra: str):
    return config_mod.load(None, [*SMALL, *extra])


def _run(config, scenario=None):
    """The whole run in one process (serial transport): the server's final state and every
    training round's per-client metrics."""
    scenario = scenario or scenarios.build(config)
    algorithm = build(config, scenario, torch.device("cpu"))
    rounds = []
    state = loop.run(algorithm, scenario, compression.build(config, algorithm), loop.SerialTransport(),
                     lambda r: rounds.append(r) if r.broadcast.phase == "train" else None)
    return algorithm, scenario, state, rounds


def test_fedavg_with_one_client_is_local_training_on_it():
    config = _config("scenario.num_clients=1", "scenario.unseen_clients=0", "algorithm.eval_every=0",
                     "algorithm.name=fedavg")
    _, _, fedavg, _ = _run(config)
    scenario = scenarios.build(config)
    local = build(_config("scenario.num_clients=1", "scenario.unseen_clients=0", "algorithm.eval_every=0",
                          "algorithm.name=local"), scenario, torch.device("cpu"))
    client_state = {**local.init_client(scenario.clients[0]), **local.init_private(scenario.clients[0])}
    server = local.init_server()
    while (broadcast := local.configure(server)) is not None and broadcast.phase == "train":
        local.client_update(broadcast, scenario.clients[0], client_state)
        server.round += 1
        server.train_round += 1
    # the server's mean of one delta is that delta (up to the fixed-point sum's 2**-32 resolution)
    assert np.allclose(fedavg.params[0], client_state["params"], atol=1e-6)
    assert not np.allclose(fedavg.params[0], local.initial_model()[0], atol=1e-3)  # it did train


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_towards_the_global_model():
    _, _, fedavg, _ = _run(_config("algorithm.name=fedavg", "algorithm.eval_every=0"))
    _, _, prox0, _ = _run(_config("algorithm.name=fedprox", "algorithm.prox_mu=0", "algorithm.eval_every=0"))
    assert np.array_equal(fedavg.params, prox0.params)
    start = build(_config("algorithm.name=fedavg"), scenarios.build(_config()), torch.device("cpu")).initial_model()
    _, _, strong, _ = _run(_config("algorithm.name=fedprox", "algorithm.prox_mu=100", "algorithm.eval_every=0"))
    assert np.linalg.norm(strong.params - start) < 0.5 * np.linalg.norm(fedavg.params - start)


def _batch(counts):
    clients = []
    for c, n in enumerate(counts):
        from fedgmi_mpi.scenarios.base import ClientData
        clients.append(ClientData(c, np.zeros((n, 4), np.float32), np.zeros(n, np.int64),
                                  np.zeros((2, 4), np.float32), np.zeros(2, np.int64)))
    return Batch.of(clients, max(counts), 2, torch.device("cpu"))


def test_ifca_picks_the_model_with_the_lowest_loss():
    ifca = build(_config("algorithm.name=ifca"), scenarios.build(_config()), torch.device("cpu"))
    batch = _batch([5, 3])
    nll = torch.rand(2, 4, 5) + 1.0
    nll[0, 2] -= 0.9  # client 0: model 2 is best on average
    nll[1, 1, :3] -= 0.9  # client 1: model 1 on its 3 real samples...
    nll[1, 3, 3:] -= 5.0  # ... whatever its padding says
    mixing, resp = ifca.responsibilities({}, nll, batch, [{}, {}], training=True)
    assert mixing.argmax(1).tolist() == [2, 1] and torch.all(mixing.sum(1) == 1)
    assert torch.all(resp[0, :, 2] == 1) and torch.all(resp[1, :, 1] == 1)


def test_fedem_recovers_the_proportions_of_two_well_separated_components():
    fedem = build(_config("algorithm.name=fedem", "scenario.num_components=2"),
                  scenarios.build(_config("scenario.num_components=2")), torch.device("cpu"))
    batch = _batch([100])
    nll = torch.full((1, 2, 100), 8.0)
    nll[0, 0, :30] = 0.01  # 30 samples that model 0 explains, 70 that model 1 does
    nll[0, 1, 30:] = 0.01
    proportions, resp = fedem.responsibilities({}, nll, batch, [{"proportions": np.full(2, 0.5)}], training=False)
    assert np.allclose(proportions[0].numpy(), [0.3, 0.7], atol=1e-3)
    assert resp[0, :30, 0].min() > 0.99 and resp[0, 30:, 1].min() > 0.99
    # a training round takes one E-step from the client's own proportions
    proportions, _ = fedem.responsibilities({}, nll, batch, [{"proportions": np.array([0.5, 0.5])}], training=True)
    assert np.allclose(proportions[0].numpy(), [0.3, 0.7], atol=1e-3)


def test_the_oracle_trains_on_the_true_responsibilities():
    algorithm, scenario, _, rounds = _run(_config("algorithm.name=oracle"))
    assert algorithm.reads_truth
    actual = scenario.actual_proportions()
    for record in rounds:
        reported = ~np.isnan(record.client_metrics["accuracy"])
        assert np.allclose(record.client_metrics["proportions"][reported], actual[reported], atol=1e-6)


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "oracle"])
def test_baselines_never_read_the_truth(name):
    config = _config(f"algorithm.name={name}")
    _, _, plain, _ = _run(config)
    scenario = scenarios.build(config)
    rng = np.random.default_rng(5)
    for client in scenario.clients:
        client.true_components_train = rng.integers(0, 4, client.num_train)
        client.true_proportions = rng.dirichlet(np.ones(4))
    _, _, scrambled, _ = _run(config, scenario)
    assert np.array_equal(plain.params, scrambled.params)


def test_every_algorithm_is_registered_and_bad_names_are_refused():
    assert set(BASELINES) | {"fedgmi"} == set(ALGORITHMS)
    result = run_cli(["run", "--set", "algorithm.name=fedsomething", "--out", "never.h5"])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_do_not_depend_on_how_many_ranks_host_the_clients(tmp_path, name):
    args = small_args(f"algorithm.name={name}", "algorithm.clients_per_round=5")
    serial, parallel = tmp_path / "serial.h5", tmp_path / "n3.h5"
    assert run_cli(["run", *args, "--out", str(serial)]).returncode == 0
    result = run_mpi(3, ["run", *args, "--out", str(parallel)])
    assert result.returncode == 0, result.stderr
    with h5py.File(serial, "r") as a, h5py.File(parallel, "r") as b:
        assert a.attrs["algorithm_reads_truth"] == (name == "oracle")
        for key in ("train/proportions", "train/accuracy", "evaluate/accuracy", "evaluate/proportions",
                    "rounds/bytes_up", "rounds/participated"):
            assert np.array_equal(a[key][()], b[key][()], equal_nan=True), key
        if name in ("fedavg", "fedprox", "local"):  # a single model has no proportions: NaN, not 0
            assert np.isnan(a["evaluate/proportions"][()]).all()


def test_fedgmm_pools_the_gaussians_in_closed_form_and_predicts_in_log_space():
    from fedgmi_mpi.algorithms.base import Summed
    from fedgmi_mpi.algorithms.classifiers import class_logits, sample_nll

    config = _config("algorithm.name=fedgmm")
    scenario = scenarios.build(config)
    algorithm = build(config, scenario, torch.device("cpu"))
    server = algorithm.init_server()
    broadcast = algorithm.configure(server)
    clients = [scenario.clients[c] for c in broadcast.cohort]
    states = [algorithm.init_client(c) for c in clients]
    start = [dict(s, proportions=s["proportions"].copy()) for s in states]
    uploads = algorithm.group_update(broadcast, clients, states)
    weighted = sum(u.weights[:, None] * u.delta.astype(np.float64) for u in uploads)
    weights = sum(u.weights for u in uploads)
    algorithm.aggregate(server, broadcast, Summed(weighted, weights, sum(u.statistics for u in uploads)))
    # the pooled r-weighted mean of every client's codes under the model the round started from
    model = torch.as_tensor(broadcast.model).unsqueeze(0)
    algorithm.group_update(broadcast, clients[:1], [algorithm.init_client(clients[0])])  # sets the round's Gaussians
    params = algorithm.unflatten(model.expand(len(clients), *model.shape[1:]))
    batch = Batch.of(clients, algorithm.max_train, algorithm.max_test, torch.device("cpu"))
    nll = sample_nll(class_logits(params, batch.x), batch.y)
    _, resp = algorithm.responsibilities(params, nll, batch, start, training=True)
    r = (resp * batch.mask.unsqueeze(2)).double()
    codes = algorithm.codes(params, batch.x).double()
    pooled = torch.einsum("gnk,gnz->kz", r, codes) / r.sum((0, 1))[:, None]
    assert np.allclose(server.gmm_mean, pooled.numpy(), atol=1e-9)  # exact statistics, no codec, no float32
    k = algorithm.models
    assert np.allclose(weights[:k], r.sum((0, 1)).numpy()) and weights[k] == sum(c.num_train for c in clients)
    # prediction: a proper distribution, and exactly sum_k w_k(x) p_k(y|x) with w ∝ pi_k N(e(x))
    mixing = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(len(clients), -1)
    probabilities = algorithm.predict(params, batch.x_test, mixing)
    assert torch.allclose(probabilities.sum(2), torch.ones(probabilities.shape[:2]), atol=1e-5)
    gate = torch.softmax(algorithm.log_density(params, algorithm.codes(params, batch.x_test)) + mixing.log().unsqueeze(1), 2)
    direct = torch.einsum("gbk,gkbc->gbc", gate, torch.softmax(class_logits(params, batch.x_test), -1))
    assert torch.allclose(probabilities, direct, atol=1e-5)
