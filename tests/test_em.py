"""EM math on tiny cases with known densities, and the group-invariance the simulator relies on."""
from functools import partial

import numpy as np
import pytest
import torch

from fedgmi_mpi.algorithms import em
from fedgmi_mpi.models import vae


def _all(n: int) -> torch.Tensor:
    return torch.ones(1, n, dtype=torch.bool)


def test_responsibilities_match_bayes_rule():
    densities = torch.tensor([[0.2, 0.6], [0.5, 0.1], [0.3, 0.3]], dtype=torch.float64)
    pi = torch.tensor([0.25, 0.75], dtype=torch.float64)
    r = em.responsibilities(densities.log()[None], pi[None])[0]
    expected = densities * pi / (densities * pi).sum(1, keepdim=True)
    assert torch.allclose(r, expected, atol=1e-12)
    assert torch.allclose(r.sum(1), torch.ones(3, dtype=torch.float64))


def test_mstep_weights_share_ambiguous_samples_by_the_powered_proportions():
    """The M-step's weights (docs/algorithm.md, the drift): a sample whose likelihoods tie is shared
    by pi^prior_power, so the client's dominant component takes more of it; a sample 12 nats clear
    stays with its component whatever the power; tempering instead softens every sample."""
    pi = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    ll = torch.tensor([[[-50.0, -50.0], [-40.0, -52.0], [-52.0, -40.0]]], dtype=torch.float64)
    plain = em.mstep_weights(ll, pi)
    assert torch.allclose(plain, em.responsibilities(ll, pi), atol=1e-12)
    squared = em.mstep_weights(ll, pi, prior_power=2.0)
    assert torch.allclose(squared[0, 0], torch.tensor([0.9, 0.1], dtype=torch.float64), atol=1e-12)  # 0.75^2 : 0.25^2
    assert squared[0, 1, 0] > 0.9999 and squared[0, 2, 1] > 0.9999
    assert torch.allclose(squared.sum(2), torch.ones(1, 3, dtype=torch.float64))
    tempered = em.mstep_weights(ll, pi, tempering=0.5)
    assert tempered[0, 2, 1] < 0.995 < squared[0, 2, 1]
    assert torch.allclose(tempered[0, 0], plain[0, 0])  # a tie stays at pi under tempering


def test_aggregation_mass_favours_clients_that_hold_a_component_confidently():
    """Two clients hold the same responsibility mass of component 0: one as two sure samples, the
    other as four half-shares with its twin. At power 1 they pull component 0 alike; at power 2
    the sure one counts twice as much; hard (0/1) weights, the oracle's, give the same mass at any power."""
    sure = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    halves = torch.full((4, 2), 0.5, dtype=torch.float64)
    weights = torch.stack([sure, halves])  # [G=2, N=4, K=2]
    assert torch.equal(em.aggregation_mass(weights), torch.full((2, 2), 2.0, dtype=torch.float64))
    squared = em.aggregation_mass(weights, 2.0)
    assert torch.equal(squared[0], torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert torch.equal(squared[1], torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(em.aggregation_mass(sure[None], 4.0), em.aggregation_mass(sure[None]))


def test_proportions_are_counts_when_components_do_not_overlap():
    # Each sample has positive density under exactly one component: the MLE is the count fraction.
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 2, 1])
    log_p = torch.full((1, 8, 3), -1e4, dtype=torch.float64)
    log_p[0, torch.arange(8), owner] = 0.0
    pi, r = em.fit_proportions(log_p, _all(8), torch.full((1, 3), 1 / 3, dtype=torch.float64), iterations=50)
    assert torch.allclose(pi[0], torch.tensor([2, 2, 4], dtype=torch.float64) / 8, atol=1e-9)
    assert torch.equal(r[0].argmax(1), owner)


def test_proportions_reach_the_analytic_maximum_likelihood():
    # Two components, densities a_i and b_i: the MLE of pi solves sum_i (a_i - b_i) / (pi a_i + (1-pi) b_i) = 0.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.05, 1.0, 40), rng.uniform(0.05, 1.0, 40)
    score = lambda p: np.sum((a - b) / (p * a + (1 - p) * b))  # noqa: E731 - decreasing in p
    lo, hi = 1e-9, 1 - 1e-9
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if score(mid) > 0 else (lo, mid)
    log_p = torch.tensor(np.log(np.stack([a, b], 1)))[None]
    pi, _ = em.fit_proportions(log_p, _all(40), torch.tensor([[0.5, 0.5]], dtype=torch.float64), iterations=5000, tol=1e-14)
    assert pi[0, 0].item() == pytest.approx((lo + hi) / 2, abs=1e-6)


def test_em_on_proportions_never_lowers_the_likelihood():
    rng = np.random.default_rng(1)
    log_p = torch.tensor(rng.normal(size=(1, 30, 4)) * 3)
    pi = torch.full((1, 4), 0.25, dtype=torch.float64)
    previous = em.mixture_log_likelihood(log_p, pi).sum()
    for _ in range(20):
        pi, _ = em.fit_proportions(log_p, _all(30), pi, iterations=1)
        current = em.mixture_log_likelihood(log_p, pi).sum()
        assert current >= previous - 1e-9
        previous = current


def test_prediction_gates_heads_by_posterior_weight():
    log_p = torch.log(torch.tensor([[[0.9, 0.1]]], dtype=torch.float64))
    pi = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    logits = torch.log(torch.tensor([[[[0.8, 0.2]], [[0.1, 0.9]]]], dtype=torch.float64))  # [G, K, N, C]
    p = em.predict_proba(log_p, logits, pi)
    assert torch.allclose(p[0], torch.tensor([[0.9 * 0.8 + 0.1 * 0.1, 0.9 * 0.2 + 0.1 * 0.9]], dtype=torch.float64))


def test_padding_is_ignored_and_each_client_stops_on_its_own():
    rng = np.random.default_rng(2)
    counts = [30, 12, 25]
    log_p = torch.tensor(rng.normal(size=(3, 30, 4)) * 3)
    log_p[1, 12:] = 1e3  # padding rows of client 1: garbage that must not count
    mask = torch.arange(30)[None] < torch.tensor(counts)[:, None]
    prior = torch.full((3, 4), 0.25, dtype=torch.float64)
    together, resp = em.fit_proportions(log_p, mask, prior, iterations=200, tol=1e-9)
    for g, n in enumerate(counts):
        alone, alone_resp = em.fit_proportions(log_p[g:g + 1, :n], _all(n), prior[g:g + 1], iterations=200, tol=1e-9)
        assert torch.allclose(together[g], alone[0], atol=1e-12)
        assert torch.allclose(resp[g, :n], alone_resp[0], atol=1e-12)


@pytest.mark.parametrize("samples", [1, 4])
def test_the_local_m_step_of_a_client_does_not_depend_on_its_group(samples):
    shape = vae.VAEShape(num_components=3, input_dim=16, num_classes=4, hidden=24, latent=3)
    layout = vae.ParamLayout(shape)
    start = vae.init_matrix(shape, torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(1)
    counts = torch.tensor([30, 17, 24, 30])
    x = torch.rand(4, 30, 16, generator=rng)
    y = torch.randint(0, 4, (4, 30), generator=rng)
    mask = torch.arange(30)[None] < counts[:, None]
    weights = torch.softmax(torch.randn(4, 30, 3, generator=rng), 2) * mask.unsqueeze(2)

    def train(ids):
        generators = [torch.Generator().manual_seed(100 + i) for i in ids]
        objective = vae.elbo if samples == 1 else partial(vae.iw_bound_of, vae.encode, vae.decode)
        return em.local_m_step(layout, start, x[ids], y[ids], counts[ids], weights[ids], 2, 8, 3e-3, 1.0, generators,
                               elbo_fn=objective, samples=samples)

    together = train([0, 1, 2, 3])
    for g in range(4):
        assert torch.equal(train([g])[0], together[g])  # bitwise: a client's steps are its own
    assert not torch.equal(together[0], together[1]) and not torch.equal(together[0], start)
