"""What a scenario is: clients holding train/test samples, plus truth kept for evaluation only."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientData:
    """One client's samples. Pixel features are float32 in [0, 1]; labels are int64.

    ``true_*`` fields are evaluation-only ground truth: algorithms must never read them while
    training or initialising (tests scramble them and check the trained result is unchanged).
    """

    client_id: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    seen: bool = True  # False: an unseen client, which only ever runs E-steps (never trains)
    true_components_train: np.ndarray | None = None
    true_components_test: np.ndarray | None = None
    true_proportions: np.ndarray | None = None  # the Dirichlet draw the client was sampled from
    exact_log_density_train: np.ndarray | None = None  # [n, K] exact log p_k(x) (synthetic scenarios only)

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    def actual_component_counts(self, num_components: int) -> np.ndarray | None:
        """How many training samples the client actually holds from each true component."""
        if self.true_components_train is None:
            return None
        return np.bincount(self.true_components_train, minlength=num_components).astype(np.float64)


@dataclass
class Scenario:
    name: str
    clients: list[ClientData]
    num_components: int  # K: number of inherent distributions the algorithm fits
    num_classes: int
    input_dim: int
    description: str = ""
    metadata: dict = field(default_factory=dict)
    _exact: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)  # computed once

    @property
    def has_truth(self) -> bool:
        return all(c.true_components_train is not None for c in self.clients)

    @property
    def has_exact_densities(self) -> bool:
        return all(c.exact_log_density_train is not None and c.true_proportions is not None for c in self.clients)

    def exact_responsibilities(self) -> np.ndarray | None:
        """[clients, largest client, K] r_ik ∝ pi_ck p_k(x_i) under the true proportions, NaN past
        each client's samples (synthetic scenarios with known densities; evaluation only)."""
        if self._exact is not None or not self.has_exact_densities:
            return self._exact
        from .synthetic import exact_responsibilities

        longest = max(c.num_train for c in self.clients)
        out = np.full((len(self.clients), longest, self.num_components), np.nan)
        for i, c in enumerate(self.clients):
            out[i, : c.num_train] = exact_responsibilities(c.exact_log_density_train, c.true_proportions)
        self._exact = out
        return out

    def true_proportions(self) -> np.ndarray | None:
        if any(c.true_proportions is None for c in self.clients):
            return None
        return np.stack([c.true_proportions for c in self.clients])

    def component_counts(self) -> np.ndarray | None:
        """Per-client training samples from each true component [clients, K]."""
        if not self.has_truth:
            return None
        return np.stack([c.actual_component_counts(self.num_components) for c in self.clients])

    def actual_proportions(self) -> np.ndarray | None:
        """Per-client fraction of training samples from each true component [clients, K]."""
        counts = self.component_counts()
        return None if counts is None else counts / counts.sum(axis=1, keepdims=True)
