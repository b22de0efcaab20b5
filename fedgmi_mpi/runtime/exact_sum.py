"""Order-independent sums: every client's contribution is rounded once to int64 fixed point, and
integer addition is associative, so the total is bitwise the same whatever the number of ranks,
the order of clients on a rank, or the MPI library's reduction tree.

Resolution is 2**-32 (about 2.3e-10) absolute; a contribution must stay below ``limit`` in
magnitude so that the sum over all clients cannot overflow int64.
"""
from __future__ import annotations

import math

import numpy as np

FRACTION_BITS = 32
SCALE = float(2**FRACTION_BITS)


def contribution_limit(num_clients: int) -> float:
    headroom = 62 - FRACTION_BITS - math.ceil(math.log2(max(num_clients, 2)))
    return float(2**headroom)


def encode(values: np.ndarray, limit: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.size and not np.all(np.abs(values) <= limit):
        bad = values[~(np.abs(values) <= limit)][0]
        raise OverflowError(f"a client statistic ({bad!r}) is non-finite or beyond the exact-sum range ±{limit:g}")
    return np.rint(values * SCALE).astype(np.int64)


def decode(total: np.ndarray) -> np.ndarray:
    return total.astype(np.float64) / SCALE
