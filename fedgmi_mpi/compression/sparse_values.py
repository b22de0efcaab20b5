"""The values of a sparse row (top-k or rand-k) on the wire: ``bits`` per value with one float32
scale for the row. 32: float32 as they are; 16: fp16; 2-8: codes on the uniform grid over
[-max, max]; 1: the sign (a ternary row, as in sparse ternary compression).
With an rng (unbiased): stochastic rounding, scale = max. Without (contractive): nearest
rounding and the least-squares scale <grid, values> / <grid, grid> - for signs that is the mean
magnitude - so the values sent are never further from the true ones than zeros would be."""
from __future__ import annotations

import numpy as np

from . import quantize
from .casts import FP16_MAX
from .wire import Reader, Writer, bits_to_bytes

VALUE_BITS = (1, 2, 4, 8, 16, 32)


def value_bytes(count: int, bits: int) -> int:
    return (0 if bits >= 16 else 4) + bits_to_bytes(count * bits)


def write_values(out: Writer, values: np.ndarray, bits: int, rng: np.random.Generator | None) -> None:
    if bits == 32:
        out.array(values, np.float32)
    elif bits == 16:
        out.array(np.clip(values, -FP16_MAX, FP16_MAX), np.float16)
    elif bits == 1:
        magnitude = np.float32(np.abs(values).mean()) if len(values) else np.float32(0)
        out.array(np.array([magnitude]), np.float32)
        out.bits((values > 0).astype(np.uint32), 1)
    else:
        scale = float(np.abs(values).max()) if len(values) else 0.0
        codes = quantize.uniform_codes(values, scale, bits, rng)
        if rng is None:
            grid = quantize.uniform_values(codes, 1.0, bits)
            fit, energy = float(grid @ values.astype(np.float64)), float(grid @ grid)
            scale = fit / energy if fit > 0 else 0.0
        out.array(np.array([scale]), np.float32)
        out.bits(codes, bits)


def read_values(src: Reader, count: int, bits: int) -> np.ndarray:
    if bits == 32:
        return src.array(count, np.float32)
    if bits == 16:
        return src.array(count, np.float16).astype(np.float32)
    scale = float(src.array(1, np.float32)[0])
    codes = src.bits(count, bits)
    if bits == 1:
        return np.where(codes > 0, scale, -scale).astype(np.float32)
    return quantize.uniform_values(codes, scale, bits).astype(np.float32)
