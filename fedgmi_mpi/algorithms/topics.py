"""Federated topic model (probabilistic latent semantic analysis) over codeword histograms.

Why: every client holds all digit classes but in its own mix of inherent distributions, so
which codewords co-occur *across clients* identifies the distributions, while a sample's shape
alone does not (EM from a random start splits by digit shape instead). Clients are documents,
codewords are words; topic k is a distribution T[k] over codewords, client c mixes topics with
weights W[c]. EM runs federated: W[c] never leaves the client, the server only sees the summed
expected counts. Several random restarts run side by side in the same buffer; the restart with
the highest summed log-likelihood wins.
"""
from __future__ import annotations

import numpy as np

SMOOTHING = 1e-3  # pseudo-count per codeword: keeps topics strictly positive


def random_topics(restarts: int, num_topics: int, vocabulary: int, rng: np.random.Generator) -> np.ndarray:
    return rng.dirichlet(np.ones(vocabulary), size=(restarts, num_topics))  # [R, K, M]


def client_step(
    histogram: np.ndarray, topic_weights: np.ndarray, topics: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One EM step for one client.

    histogram [M] counts; topic_weights [R, K] (the client's current W rows, one per restart);
    topics [R, K, M]. Returns new topic_weights, expected counts [R, K, M] for the server, and the
    log-likelihood [R] of the histogram under the current parameters.
    """
    joint = topic_weights[:, :, None] * topics  # [R, K, M]
    word_prob = joint.sum(1, keepdims=True)  # [R, 1, M]
    posterior = joint / np.maximum(word_prob, 1e-300)
    expected = histogram[None, None, :] * posterior
    new_weights = expected.sum(2) / max(histogram.sum(), 1e-12)
    loglik = (histogram[None, :] * np.log(np.maximum(word_prob[:, 0, :], 1e-300))).sum(1)
    return new_weights, expected, loglik


def server_step(expected_counts: np.ndarray) -> np.ndarray:
    counts = expected_counts + SMOOTHING
    return counts / counts.sum(2, keepdims=True)


def initial_responsibilities(words: np.ndarray, topic_weights: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """r_ik ∝ W[c,k] T[k, word(i)] for one restart's topic_weights [K] and topics [K, M]."""
    joint = topic_weights[None, :] * topics[:, words].T  # [N, K]
    return joint / joint.sum(1, keepdims=True)
