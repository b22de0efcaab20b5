"""Rand-k sparsification: each row sends k values at coordinates drawn from the stream sender and
receiver share (a per-client, per-round seed), so no indices travel. Unbiased mode: values
quantised stochastically at ``value_bits`` and scaled by n / k at the receiver. Contractive mode:
nearest rounding, no rescaling (the error is then the unsent coordinates, below |x|)."""
from __future__ import annotations

import numpy as np

from .base import SegmentCodec
from .sparse_values import VALUE_BITS, read_values, value_bytes, write_values
from .wire import Reader, Writer


class RandK(SegmentCodec):
    name = "randk"
    biased = False

    def __init__(self, value_bits: int = 8, unbiased: bool = True):
        if value_bits not in VALUE_BITS or value_bits == 1:  # a sign with a mean-magnitude scale is biased
            raise ValueError("rand-k value_bits must be one of 2, 4, 8, 16, 32")
        self.value_bits = value_bits
        self.unbiased = unbiased

    def k(self, size: int, budget: int) -> int:
        fixed = value_bytes(0, self.value_bits)
        return int(min(size, max(0, 8 * (budget - fixed)) // self.value_bits))

    def min_bytes(self, size: int) -> int:
        return value_bytes(1, self.value_bits)

    def max_bytes(self, size: int) -> int:
        return value_bytes(size, self.value_bits)

    def _indices(self, shared: np.random.Generator, size: int, k: int) -> np.ndarray:
        return np.arange(size) if k == size else shared.choice(size, k, replace=False)

    def encode_row(self, row: np.ndarray, budget: int, shared: np.random.Generator,
                   private: np.random.Generator, out: Writer) -> None:
        chosen = self._indices(shared, len(row), self.k(len(row), budget))
        write_values(out, row[chosen], self.value_bits, private if self.unbiased else None)

    def decode_row(self, size: int, budget: int, shared: np.random.Generator, src: Reader) -> np.ndarray:
        k = self.k(size, budget)
        out = np.zeros(size, dtype=np.float32)
        scale = np.float32(size / k) if self.unbiased else np.float32(1)
        out[self._indices(shared, size, k)] = read_values(src, k, self.value_bits) * scale
        return out

    def describe(self, size: int, budget: int) -> str:
        k = self.k(size, budget)
        return f"rand-k, k = {k} of {size} ({k / max(size, 1):.2%}), {self.value_bits}-bit values"
