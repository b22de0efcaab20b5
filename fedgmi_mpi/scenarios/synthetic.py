"""Synthetic inherent distributions with exact densities (``scenario.name=synthetic``).

Component k is a Gaussian mixture in D = ``synthetic_dim`` real dimensions with M =
``synthetic_modes`` equally weighted modes; mode means are drawn N(0, separation^2 I) and each
mode has its own diagonal standard deviations in [0.5, 1]. A sample's label is its mode (so
p_k(y | x) is a real classification task, different in every component). Because p_k(x) is known
in closed form, so are the exact responsibilities r_ik ∝ pi_ck p_k(x_i) under the client's true
proportions: the scenario keeps log p_k(x_i) of every training sample (evaluation only), the log
stores the exact responsibilities in ``/truth`` and FedGMI's evaluation rounds log their own, so
the two can be compared sample by sample. Real-valued features: use ``model.likelihood=gaussian``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import rng as rngs
from ..config import ScenarioConfig
from ..errors import UserError
from .base import Scenario
from .mixture import draw_clients


def mixture_parameters(s: ScenarioConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(means [K, M, D], standard deviations [K, M, D]) from the scenario's own stream."""
    rng = rngs.numpy_rng(seed, rngs.SCENARIO, 2**31 - 2)
    k, m, d = s.num_components, s.synthetic_modes, s.synthetic_dim
    means = s.synthetic_separation * rng.standard_normal((k, m, d))
    scales = rng.uniform(0.5, 1.0, size=(k, m, d))
    return means, scales


def log_densities(x: np.ndarray, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Exact log p_k(x) [n, K] of samples x [n, D] (equal mode weights)."""
    diff = (x[:, None, None, :] - means[None]) / scales[None]  # [n, K, M, D]
    log_normal = -0.5 * (diff**2).sum(-1) - np.log(scales).sum(-1)[None] - 0.5 * x.shape[1] * math.log(2 * math.pi)
    peak = log_normal.max(2, keepdims=True)
    return (peak[..., 0] + np.log(np.exp(log_normal - peak).mean(2))).astype(np.float64)


def exact_responsibilities(log_density: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """r_ik ∝ pi_k p_k(x_i) [n, K] under the true proportions."""
    logits = log_density + np.log(np.clip(proportions, 1e-300, None))[None]
    logits -= logits.max(1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(1, keepdims=True)


def _samples(rng: np.random.Generator, z: np.ndarray, means: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    modes = rng.integers(0, means.shape[1], size=len(z))
    x = means[z, modes] + scales[z, modes] * rng.standard_normal((len(z), means.shape[2]))
    return x.astype(np.float32), modes.astype(np.int64)


def build(s: ScenarioConfig, seed: int) -> Scenario:
    if s.synthetic_dim < 1 or s.synthetic_modes < 2:
        raise UserError("scenario.synthetic_dim must be >= 1 and scenario.synthetic_modes >= 2 (labels are the modes)")
    means, scales = mixture_parameters(s, seed)
    k = s.num_components
    clients, mixing = draw_clients(s, seed, k, lambda rng, z, part: _samples(rng, z, means, scales))
    for client in clients:  # evaluation only, like every true_* field
        client.exact_log_density_train = log_densities(client.x_train.astype(np.float64), means, scales)
    return Scenario(name="synthetic", clients=clients, num_components=k, num_classes=s.synthetic_modes,
                    input_dim=s.synthetic_dim,
                    description=(f"synthetic: {k} Gaussian mixtures of {s.synthetic_modes} modes in {s.synthetic_dim} "
                                 f"dimensions (separation {s.synthetic_separation}), {mixing}"))
