"""Stochastic b-bit quantisation with one scale per block (QSGD-like, Alistarh et al. 2017).

Each block of ``block`` values sends a float32 scale and every value as a b-bit code on the
uniform grid over [-max, max] (max: the block's largest magnitude). Unbiased mode: stochastic
rounding, scale = max. Contractive mode: nearest rounding, and the scale that fits the block best
in least squares (never worse than sending zeros). b is the largest of 1..8 that fits the budget.
"""
from __future__ import annotations

import numpy as np

from . import quantize
from .base import SegmentCodec
from .wire import Reader, Writer, bits_to_bytes

MAX_BITS = 8


class StochasticQuantiser(SegmentCodec):
    name = "qsgd"
    biased = False

    def __init__(self, block: int = 512, unbiased: bool = True):
        self.block = block
        self.unbiased = unbiased

    def _blocks(self, size: int) -> int:
        return -(-size // self.block)

    def bits(self, size: int, budget: int) -> int:
        spare = 8 * (budget - 4 * self._blocks(size))
        return min(MAX_BITS, max(0, spare // size)) if size else 0

    def min_bytes(self, size: int) -> int:
        return 4 * self._blocks(size) + bits_to_bytes(size)

    def max_bytes(self, size: int) -> int:
        return 4 * self._blocks(size) + size * MAX_BITS // 8

    def encode_row(self, row: np.ndarray, budget: int, shared: np.random.Generator,
                   private: np.random.Generator, out: Writer) -> None:
        size, bits = len(row), self.bits(len(row), budget)
        blocks = np.zeros(self._blocks(size) * self.block, dtype=np.float32)
        blocks[:size] = row
        blocks = blocks.reshape(-1, self.block)
        scales = np.abs(blocks).max(1).astype(np.float32)
        codes = quantize.uniform_codes(blocks, scales[:, None], bits, private if self.unbiased else None)
        if not self.unbiased:
            grid = quantize.uniform_values(codes, 1.0, bits)
            grid.ravel()[size:] = 0  # the padding of the last block is not sent: keep it out of the fit
            fit = np.einsum("ij,ij->i", grid, blocks.astype(np.float64))
            scales = np.divide(fit, np.einsum("ij,ij->i", grid, grid), out=np.zeros(len(grid)), where=fit > 0)
        out.array(scales, np.float32)
        out.bits(codes.ravel()[:size], bits)

    def decode_row(self, size: int, budget: int, shared: np.random.Generator, src: Reader) -> np.ndarray:
        bits = self.bits(size, budget)
        scales = src.array(self._blocks(size), np.float32)
        codes = np.zeros(len(scales) * self.block, dtype=np.uint32)
        codes[:size] = src.bits(size, bits)
        values = quantize.uniform_values(codes.reshape(len(scales), -1), scales[:, None], bits)
        return values.ravel()[:size].astype(np.float32)

    def describe(self, size: int, budget: int) -> str:
        return f"qsgd {self.bits(size, budget)}-bit, blocks of {self.block}"
