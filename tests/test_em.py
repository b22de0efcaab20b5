"""EM math on tiny cases with known densities."""
import numpy as np
import pytest
import torch

from fedgmi_mpi.algorithms import em


def test_responsibilities_match_bayes_rule():
    densities = torch.tensor([[0.2, 0.6], [0.5, 0.1], [0.3, 0.3]], dtype=torch.float64)
    pi = torch.tensor([0.25, 0.75], dtype=torch.float64)
    r = em.responsibilities(densities.log(), pi)
    expected = densities * pi / (densities * pi).sum(1, keepdim=True)
    assert torch.allclose(r, expected, atol=1e-12)
    assert torch.allclose(r.sum(1), torch.ones(3, dtype=torch.float64))


def test_proportions_are_counts_when_components_do_not_overlap():
    # Each sample has positive density under exactly one component: the MLE is the count fraction.
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 2, 1])
    log_p = torch.full((8, 3), -1e4, dtype=torch.float64)
    log_p[torch.arange(8), owner] = 0.0
    pi, r = em.fit_proportions(log_p, torch.full((3,), 1 / 3, dtype=torch.float64), iterations=50)
    assert torch.allclose(pi, torch.tensor([2, 2, 4], dtype=torch.float64) / 8, atol=1e-9)
    assert torch.equal(r.argmax(1), owner)


def test_proportions_reach_the_analytic_maximum_likelihood():
    # Two components, densities a_i and b_i: the MLE of pi solves sum_i (a_i - b_i) / (pi a_i + (1-pi) b_i) = 0.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.05, 1.0, 40), rng.uniform(0.05, 1.0, 40)
    score = lambda p: np.sum((a - b) / (p * a + (1 - p) * b))  # noqa: E731 - decreasing in p
    lo, hi = 1e-9, 1 - 1e-9
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if score(mid) > 0 else (lo, mid)
    log_p = torch.tensor(np.log(np.stack([a, b], 1)))
    pi, _ = em.fit_proportions(log_p, torch.tensor([0.5, 0.5], dtype=torch.float64), iterations=5000, tol=1e-14)
    assert pi[0].item() == pytest.approx((lo + hi) / 2, abs=1e-6)


def test_em_on_proportions_never_lowers_the_likelihood():
    rng = np.random.default_rng(1)
    log_p = torch.tensor(rng.normal(size=(30, 4)) * 3)
    pi = torch.full((4,), 0.25, dtype=torch.float64)
    previous = em.mixture_log_likelihood(log_p, pi).sum()
    for _ in range(20):
        pi, _ = em.fit_proportions(log_p, pi, iterations=1)
        current = em.mixture_log_likelihood(log_p, pi).sum()
        assert current >= previous - 1e-9
        previous = current


def test_prediction_gates_heads_by_posterior_weight():
    log_p = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    pi = torch.tensor([0.5, 0.5], dtype=torch.float64)
    logits = torch.log(torch.tensor([[[0.8, 0.2]], [[0.1, 0.9]]], dtype=torch.float64))  # [K, N, C]
    p = em.predict_proba(log_p, logits, pi)
    assert torch.allclose(p, torch.tensor([[0.9 * 0.8 + 0.1 * 0.1, 0.9 * 0.2 + 0.1 * 0.9]], dtype=torch.float64))
