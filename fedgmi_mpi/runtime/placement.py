"""Which worker rank runs which clients: the cohort of each round, split by workload."""
from __future__ import annotations

import heapq


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
    """Relative cost of a client's round. Every client is computed at the run's canonical shapes
    (padded to the largest client), so every client costs the same: the split is by count."""
    return [1] * len(num_train)
