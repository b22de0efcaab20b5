"""The federated initialisation: codebook, topic model, placement."""
import numpy as np

from fedgmi_mpi import rng as rngs
from fedgmi_mpi.algorithms import codebook, topics
from fedgmi_mpi.runtime.placement import assign_clients


def test_lbg_codebook_reaches_its_size_from_sums_only():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 3)) * 10
    clients = [centres[rng.integers(0, 5, 50)] + rng.normal(size=(50, 3)) * 0.1 for _ in range(4)]
    state = codebook.start(3, target_size=5, lloyd_iterations=5)
    while not state.done:
        summed = sum(codebook.cluster_statistics(x, state.centroids) for x in clients)
        state = codebook.update(state, summed, rngs.numpy_rng(0, rngs.SERVER))
    assert len(state.centroids) == 5
    # Every true centre has a codeword near it.
    distance = np.linalg.norm(centres[:, None] - state.centroids[None], axis=2).min(1)
    assert distance.max() < 1.0


def test_topic_model_recovers_planted_mixtures_and_likelihood_never_falls():
    rng = np.random.default_rng(1)
    true_topics = np.array([[0.45, 0.45, 0.05, 0.05], [0.05, 0.05, 0.45, 0.45]])
    weights = rng.dirichlet([0.5, 0.5], size=30)
    histograms = [rng.multinomial(400, w @ true_topics).astype(float) for w in weights]
    topic_words = topics.random_topics(3, 2, 4, rng)
    client_weights = [np.full((3, 2), 0.5) for _ in histograms]
    previous = -np.inf
    for _ in range(200):
        expected_sum, loglik_sum = 0, 0
        for i, h in enumerate(histograms):
            client_weights[i], expected, loglik = topics.client_step(h, client_weights[i], topic_words)
            expected_sum, loglik_sum = expected_sum + expected, loglik_sum + loglik
        assert np.all(loglik_sum >= previous - 1e-6)
        previous = loglik_sum
        topic_words = topics.server_step(expected_sum)
    best = int(np.argmax(previous))
    learned = np.stack([w[best] for w in client_weights])
    error = min(np.abs(learned - weights).mean(), np.abs(learned[:, ::-1] - weights).mean())
    assert error < 0.06
    r = topics.initial_responsibilities(np.array([0, 2, 3]), learned[0], topic_words[best])
    assert np.allclose(r.sum(1), 1.0)


def test_placement_balances_load_and_is_deterministic():
    loads = [100, 90, 80, 70, 60, 50, 40, 30]
    placement = assign_clients(loads, 3)
    assert sorted(c for group in placement for c in group) == list(range(8))
    totals = [sum(loads[c] for c in group) for group in placement]
    assert max(totals) - min(totals) <= max(loads)
    assert placement == assign_clients(loads, 3)
