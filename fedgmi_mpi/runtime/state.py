"""Every client's small state, on every rank: what an algorithm declares a client keeps between
its rounds (FedGMI: its proportions and its topic weights), one float64 row per client.

Because every rank holds every row - and every client's data - any rank can run any client in any
round; after a round the rows of the clients that took part are shared with every rank. Memory:
8 bytes per number per client (FedGMI, K = 4, 8 restarts: 288 bytes a client).
"""
from __future__ import annotations

import math

import numpy as np


class StateTable:
    def __init__(self, spec: dict[str, tuple[int, ...]], initial: list[dict[str, np.ndarray]]):
        self.fields = []
        start = 0
        for name, shape in spec.items():
            size = math.prod(shape)
            self.fields.append((name, shape, start, start + size))
            start += size
        self.width = start
        self.values = np.zeros((len(initial), self.width), dtype=np.float64)
        for row, values in zip(self.values, initial):
            for name, _, lo, hi in self.fields:
                row[lo:hi] = np.asarray(values[name], dtype=np.float64).reshape(-1)

    def views(self, client: int) -> dict[str, np.ndarray]:
        """The client's arrays, writable in place."""
        row = self.values[client]
        return {name: row[lo:hi].reshape(shape) for name, shape, lo, hi in self.fields}

    def row(self, client: int) -> np.ndarray:
        return self.values[client]

    def update(self, clients: np.ndarray, rows: np.ndarray) -> None:
        if len(clients):
            self.values[clients] = rows
