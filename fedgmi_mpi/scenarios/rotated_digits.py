"""The default scenario: scikit-learn's bundled 8x8 digits under K rotations.

Inherent distribution k is "a digit rotated by k quarter turns" (K <= 4). Each client draws its
mixture proportions from Dirichlet(alpha), then the true component of every sample from them.
Base images are split into a train pool and a test pool *before* any rotation, so no test
image is a rotated copy of a training image.
"""
from __future__ import annotations

import numpy as np

from .. import rng as rngs
from ..errors import UserError
from .base import ClientData, Scenario


def load_base_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
    return images, digits.target.astype(np.int64)


def rotate(images: np.ndarray, quarter_turns: np.ndarray) -> np.ndarray:
    out = np.empty_like(images)
    for k in range(4):
        sel = quarter_turns == k
        out[sel] = np.rot90(images[sel], k=k, axes=(1, 2))
    return out


def build(
    seed: int,
    num_clients: int = 40,
    unseen_clients: int = 8,
    num_components: int = 4,
    samples_per_client: int = 100,
    test_samples_per_client: int = 50,
    size_spread: float = 0.25,
    dirichlet_alpha: float = 0.4,
    test_fraction: float = 0.2,
) -> Scenario:
    if not 1 <= num_components <= 4:
        raise UserError(f"scenario.num_components must be 1..4 for rotated_digits (got {num_components})")
    if num_clients < 1 or unseen_clients < 0:
        raise UserError("scenario.num_clients must be >= 1 and scenario.unseen_clients >= 0")
    if not 0.0 <= size_spread < 1.0:
        raise UserError(f"scenario.size_spread must be in [0, 1) (got {size_spread})")
    if dirichlet_alpha <= 0:
        raise UserError(f"scenario.dirichlet_alpha must be > 0 (got {dirichlet_alpha})")
    images, labels = load_base_digits()
    gen = rngs.numpy_rng(seed, rngs.SCENARIO)
    order = gen.permutation(len(images))
    n_test_pool = int(round(test_fraction * len(images)))
    test_pool, train_pool = order[:n_test_pool], order[n_test_pool:]
    lo = max(1, int(round(samples_per_client * (1 - size_spread))))
    hi = max(lo, int(round(samples_per_client * (1 + size_spread))))
    if hi > len(train_pool) or test_samples_per_client > len(test_pool):
        raise UserError(
            f"rotated_digits has {len(train_pool)} train / {len(test_pool)} test base images per client at most"
        )

    clients = []
    total = num_clients + unseen_clients
    for cid in range(total):
        cgen = rngs.numpy_rng(seed, rngs.SCENARIO, cid)
        proportions = cgen.dirichlet(np.full(num_components, dirichlet_alpha))
        n_train = int(cgen.integers(lo, hi + 1))
        train_idx = cgen.choice(train_pool, size=n_train, replace=False)
        test_idx = cgen.choice(test_pool, size=test_samples_per_client, replace=False)
        z_train = cgen.choice(num_components, size=n_train, p=proportions)
        z_test = cgen.choice(num_components, size=test_samples_per_client, p=proportions)
        clients.append(
            ClientData(
                client_id=cid,
                x_train=rotate(images[train_idx], z_train).reshape(n_train, -1),
                y_train=labels[train_idx],
                x_test=rotate(images[test_idx], z_test).reshape(test_samples_per_client, -1),
                y_test=labels[test_idx],
                seen=cid < num_clients,
                true_components_train=z_train.astype(np.int64),
                true_components_test=z_test.astype(np.int64),
                true_proportions=proportions,
            )
        )
    return Scenario(
        name="rotated_digits",
        clients=clients,
        num_components=num_components,
        num_classes=10,
        input_dim=64,
        description=f"load_digits under {num_components} rotations, Dirichlet({dirichlet_alpha}) mixtures",
        metadata={"image_shape": (8, 8)},
    )
