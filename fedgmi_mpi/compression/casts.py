"""Fixed-rate casts: float32 as it is (``none``, exact), fp16 and bf16 (round to nearest; relative
error at most 2**-11 and 2**-8). No parameter, no randomness; a segment either fits whole or is
skipped, so under a cap these must carry every row (see compression.build). The rounding is
deterministic, hence slightly biased, but far below the other methods' error: no error feedback."""
from __future__ import annotations

import numpy as np

from .base import SegmentCodec
from .wire import Reader, Writer

FP16_MAX = 65504.0


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits, rounded to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    rounded = ((bits.astype(np.uint64) + rounding) >> np.uint64(16)).astype(np.uint16)
    rounded[np.isnan(values)] = np.uint16(0x7FC0)
    return rounded


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


class _Cast(SegmentCodec):
    name = ""
    width = 4  # bytes per value
    biased = False

    def __init__(self, unbiased: bool = True):
        self.unbiased = unbiased  # both modes are the same cast

    def min_bytes(self, size: int) -> int:
        return self.width * size

    def max_bytes(self, size: int) -> int:
        return self.width * size

    def describe(self, size: int, budget: int) -> str:
        return f"{self.name} ({8 * self.width} bits per value)"


class Float32(_Cast):
    name = "none"
    width = 4

    def encode_row(self, row, budget, shared, private, out: Writer) -> None:
        out.array(row, np.float32)

    def decode_row(self, size, budget, shared, src: Reader) -> np.ndarray:
        return src.array(size, np.float32)


class Float16(_Cast):
    name = "fp16"
    width = 2

    def encode_row(self, row, budget, shared, private, out: Writer) -> None:
        out.array(np.clip(row, -FP16_MAX, FP16_MAX), np.float16)  # no overflow to inf

    def decode_row(self, size, budget, shared, src: Reader) -> np.ndarray:
        return src.array(size, np.float16).astype(np.float32)


class BFloat16(_Cast):
    name = "bf16"
    width = 2

    def encode_row(self, row, budget, shared, private, out: Writer) -> None:
        out.raw(to_bfloat16_bits(row).tobytes())

    def decode_row(self, size, budget, shared, src: Reader) -> np.ndarray:
        return from_bfloat16_bits(src.array(size, np.uint16))
