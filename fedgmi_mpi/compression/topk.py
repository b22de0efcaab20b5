"""Top-k sparsification: each row sends its k largest-magnitude values and where they are.

Indices are Rice-coded gaps (about log2(n/k) + 1.5 bits each); values go at ``value_bits`` each
(8 by default: top-k values sent in 8 bits). k is the largest whose worst-case size fits the
budget. Biased: it needs error feedback, which the channel applies (the residual of what was not
sent is added to the next round's row).
"""
from __future__ import annotations

import numpy as np

from .base import SegmentCodec
from .sparse_values import VALUE_BITS, read_values, value_bytes, write_values
from .wire import Reader, Writer, read_rice, rice_max_bytes, write_rice


class TopK(SegmentCodec):
    name = "topk"
    biased = True

    unbiased = False  # in either mode: it keeps the largest values and drops the rest

    def __init__(self, value_bits: int = 8, unbiased: bool = True):
        if value_bits not in VALUE_BITS:
            raise ValueError(f"value_bits must be one of {VALUE_BITS}")
        self.value_bits = value_bits

    def _bytes(self, k: int, size: int) -> int:
        return value_bytes(k, self.value_bits) + rice_max_bytes(k, size)

    def k(self, size: int, budget: int) -> int:
        low, high = 0, size  # largest k with _bytes(k) <= budget (monotone in k)
        while low < high:
            mid = (low + high + 1) // 2
            if self._bytes(mid, size) <= budget:
                low = mid
            else:
                high = mid - 1
        return low

    def min_bytes(self, size: int) -> int:
        return self._bytes(1, size)

    def max_bytes(self, size: int) -> int:
        return self._bytes(size, size)

    def encode_row(self, row: np.ndarray, budget: int, shared: np.random.Generator,
                   private: np.random.Generator, out: Writer) -> None:
        size, k = len(row), self.k(len(row), budget)
        largest = np.sort(np.argpartition(np.abs(row), size - k)[size - k:]) if k < size else np.arange(size)
        write_values(out, row[largest], self.value_bits, None)
        write_rice(out, largest, size)

    def decode_row(self, size: int, budget: int, shared: np.random.Generator, src: Reader) -> np.ndarray:
        k = self.k(size, budget)
        out = np.zeros(size, dtype=np.float32)
        values = read_values(src, k, self.value_bits)
        out[read_rice(src, k, size)] = values
        return out

    def describe(self, size: int, budget: int) -> str:
        k = self.k(size, budget)
        return f"top-k, k = {k} of {size} ({k / max(size, 1):.2%}), {self.value_bits}-bit values"
