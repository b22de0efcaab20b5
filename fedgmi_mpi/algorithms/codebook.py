"""Federated vector quantisation (Linde-Buzo-Gray): a codebook learned from per-cluster sums only.

The server never sees a sample. Each round it broadcasts the current centroids; every client
returns, per centroid, the count, the sum of its nearest samples and their squared error. The
server moves centroids to the means (Lloyd) and, between Lloyd sweeps, splits the clusters with
the largest squared error until the codebook has the requested size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)
    return np.argmin(d2, axis=1)


def cluster_statistics(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Flat float64 [M + M*D + M]: counts, sums and squared errors of each centroid's samples."""
    m, d = centroids.shape
    words = nearest(x, centroids)
    counts = np.bincount(words, minlength=m).astype(np.float64)
    sums = np.zeros((m, d))
    np.add.at(sums, words, x)
    sq_err = np.bincount(words, weights=((x - centroids[words]) ** 2).sum(1), minlength=m)
    return np.concatenate([counts, sums.ravel(), sq_err])


@dataclass
class CodebookState:
    centroids: np.ndarray  # [M, D]
    target_size: int
    lloyd_iterations: int  # Lloyd sweeps after each split
    sweeps_left: int
    done: bool = False
    settled: np.ndarray | None = None  # the last codebook whose Lloyd sweeps are over (before a split, or final)


def start(input_dim: int, target_size: int, lloyd_iterations: int) -> CodebookState:
    # One centroid anywhere: the first Lloyd sweep moves it to the global mean.
    return CodebookState(np.zeros((1, input_dim)), target_size, lloyd_iterations, sweeps_left=1)


def update(state: CodebookState, summed: np.ndarray, rng: np.random.Generator) -> CodebookState:
    m, d = state.centroids.shape
    counts, sums, sq_err = summed[:m], summed[m : m + m * d].reshape(m, d), summed[m + m * d :]
    occupied = counts > 0
    centroids = state.centroids.copy()
    centroids[occupied] = sums[occupied] / counts[occupied, None]
    sweeps_left = state.sweeps_left - 1
    if sweeps_left > 0:
        return CodebookState(centroids, state.target_size, state.lloyd_iterations, sweeps_left)
    # Drop clusters nobody uses, then split the worst ones until the codebook is full.
    centroids, counts, sq_err = centroids[occupied], counts[occupied], sq_err[occupied]
    if len(centroids) >= state.target_size or len(centroids) == 0:
        return CodebookState(centroids, state.target_size, state.lloyd_iterations, 0, done=True, settled=centroids)
    settled = centroids.copy()
    n_split = min(len(centroids), state.target_size - len(centroids))
    worst = np.argsort(-sq_err, kind="stable")[:n_split]
    spread = np.sqrt(sq_err[worst] / np.maximum(counts[worst], 1) / d)  # per-coordinate RMS error
    direction = rng.standard_normal((n_split, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) / np.sqrt(d)
    offset = 0.5 * spread[:, None] * direction
    children = centroids[worst] + offset
    centroids[worst] -= offset
    return CodebookState(
        np.concatenate([centroids, children]), state.target_size, state.lloyd_iterations, state.lloyd_iterations,
        settled=settled,
    )
