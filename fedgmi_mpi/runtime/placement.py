"""Which worker rank hosts which clients."""
from __future__ import annotations

import heapq

import numpy as np


def assign_clients(workloads: list[int], num_workers: int) -> list[list[int]]:
    """Greedy balance: largest client first onto the least-loaded worker (ties: lowest worker).

    Deterministic, so every rank computes the same placement without communicating. Results do
    not depend on it: each client's randomness is its own stream and sums are exact.
    """
    if num_workers < 1:
        raise ValueError("need at least one worker rank")
    heap = [(0, w) for w in range(num_workers)]
    hosted: list[list[int]] = [[] for _ in range(num_workers)]
    for cid in sorted(range(len(workloads)), key=lambda c: (-workloads[c], c)):
        load, worker = heapq.heappop(heap)
        hosted[worker].append(cid)
        heapq.heappush(heap, (load + workloads[cid], worker))
    return [sorted(h) for h in hosted]


def client_workloads(num_train: list[int], num_test: list[int], seen: list[bool]) -> list[int]:
    """Rough relative cost of a client's round, measured on the default scenario: a training
    client's E-step plus local M-step costs about 1.6x an unseen client's E-step alone, and a
    test sample about a fifth of a training sample (fewer importance samples)."""
    return [int(10 * (n * (1.6 if s else 1.0) + 0.2 * t)) for n, t, s in zip(num_train, num_test, seen)]


def order_of(hosted: list[list[int]]) -> np.ndarray:
    """Client ids in the order a gather over ranks 1..N delivers their rows."""
    return np.array([cid for group in hosted for cid in group], dtype=np.int64)
