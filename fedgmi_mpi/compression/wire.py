"""Bytes on the wire: a writer and a reader over real byte strings, fixed-width bit fields and
Rice-coded index sets. Every compressed payload is serialised with these, so a byte count is
``len()`` of what was actually produced, never a formula."""
from __future__ import annotations

import math

import numpy as np


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def array(self, values: np.ndarray, dtype: type | str) -> None:
        data = np.ascontiguousarray(values, dtype=dtype).tobytes()
        self.parts.append(data)
        self.size += len(data)

    def raw(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def bits(self, values: np.ndarray, width: int) -> None:
        """Unsigned integers < 2**width, ``width`` bits each, packed and padded to a whole byte."""
        self.raw(pack_bits(values, width))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    def __init__(self, data: bytes | memoryview | np.ndarray):
        self.data = memoryview(np.ascontiguousarray(data, dtype=np.uint8) if isinstance(data, np.ndarray) else data)
        self.pos = 0

    def array(self, count: int, dtype: type | str) -> np.ndarray:
        dtype = np.dtype(dtype)
        end = self.pos + count * dtype.itemsize
        if end > len(self.data):
            raise ValueError(f"payload truncated: need {end} bytes, have {len(self.data)}")
        out = np.frombuffer(self.data[self.pos:end], dtype=dtype).copy()
        self.pos = end
        return out

    def bits(self, count: int, width: int) -> np.ndarray:
        raw = self.array(bits_to_bytes(count * width), np.uint8)
        return unpack_bits(raw, count, width)

    def remaining(self) -> int:
        return len(self.data) - self.pos


def bits_to_bytes(bits: int) -> int:
    return (bits + 7) // 8


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Codes < 2**width, most significant bit first, packed back to back."""
    if width == 0 or len(values) == 0:
        return b""
    if 8 % width == 0:  # whole codes per byte: shift and add
        per = 8 // width
        padded = np.zeros(-(-len(values) // per) * per, dtype=np.uint8)
        padded[: len(values)] = values
        shifts = np.arange(8 - width, -1, -width, dtype=np.uint8)
        return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8).tobytes()
    values = np.asarray(values, dtype=np.uint32)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8)).tobytes()


def unpack_bits(raw: np.ndarray, count: int, width: int) -> np.ndarray:
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint32)
    if 8 % width == 0:
        shifts = np.arange(8 - width, -1, -width, dtype=np.uint8)
        codes = (raw[: -(-count * width // 8), None] >> shifts) & np.uint8((1 << width) - 1)
        return codes.ravel()[:count].astype(np.uint32)
    bit_matrix = np.unpackbits(raw, count=count * width).reshape(count, width)
    codes = np.zeros(count, dtype=np.uint32)
    for column in range(width):
        codes = (codes << np.uint32(1)) | bit_matrix[:, column]
    return codes


# ---- Rice-coded sorted index sets ----------------------------------------------------------
# The gaps between sorted indices are split into a quotient (gap >> r, sent in unary) and a
# remainder (r bits). For k indices out of n the best r is about log2(0.69 n / k), costing about
# log2(n / k) + 1.5 bits per index, close to the entropy of a random k-subset. The quotients' sum is
# at most n >> r, so the size has a data-independent bound both sides can compute.

def rice_parameter(count: int, size: int) -> int:
    if count <= 0:
        return 0
    return max(0, int(round(math.log2(max(0.69 * size / count, 1.0)))))


def rice_max_bytes(count: int, size: int) -> int:
    """Largest encoding of ``count`` sorted distinct indices below ``size``."""
    if count <= 0:
        return 0
    r = rice_parameter(count, size)
    return bits_to_bytes(count * r) + bits_to_bytes(count + (size >> r))


def write_rice(writer: Writer, indices: np.ndarray, size: int) -> None:
    """Sorted distinct indices in [0, size)."""
    count = len(indices)
    if count == 0:
        return
    r = rice_parameter(count, size)
    gaps = np.diff(np.asarray(indices, dtype=np.int64), prepend=-1) - 1  # >= 0
    writer.bits(gaps & ((1 << r) - 1), r)
    quotients = gaps >> r
    unary = np.zeros(int(quotients.sum()) + count, dtype=np.uint8)  # q ones then a zero, per index
    ends = np.cumsum(quotients + 1) - 1
    unary[:] = 1
    unary[ends] = 0
    writer.raw(np.packbits(unary).tobytes())


def read_rice(reader: Reader, count: int, size: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    r = rice_parameter(count, size)
    remainders = reader.bits(count, r).astype(np.int64)
    # The unary part is self-delimiting: read until ``count`` zero bits have been seen.
    start = reader.pos
    limit = min(len(reader.data), start + bits_to_bytes(count + (size >> r)))
    bits = np.unpackbits(np.frombuffer(reader.data[start:limit], dtype=np.uint8))
    ends = np.flatnonzero(bits == 0)[:count]
    if len(ends) < count:
        raise ValueError("payload truncated inside a Rice-coded index set")
    reader.pos = start + bits_to_bytes(int(ends[-1]) + 1)
    quotients = np.diff(ends, prepend=-1) - 1
    gaps = (quotients << r) | remainders
    return np.cumsum(gaps + 1) - 1
