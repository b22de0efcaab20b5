"""Rotation-based quantisation (DRIVE, Vargaftik et al. 2021; EDEN, 2022).

Each segment (parameter tensor) of a row is padded to a multiple of 64 and cut into power-of-two
chunks (its binary expansion, at most 2**14 each). Each chunk is rotated by a randomised Hadamard
transform, y = H D x / sqrt(m): random signs D drawn from the stream sender and receiver share
(nothing is sent for them), then the fast Walsh-Hadamard transform, done as small matrix products
(H_m = H_a kron H_b [kron H_c]), one batch per chunk size for the whole message. The rotated
coordinates are close to Gaussian whatever x looked like, so one Lloyd-Max quantiser for N(0, 1)
suits them all. Per chunk the sender sends one float32 scale S and b-bit codes of n_s of its
rotated coordinates y_s; the receiver puts S * levels there, zeros elsewhere, and rotates back (H
is its own inverse up to 1/m). Unbiased mode: S = |y_s|^2 / <y_s, levels> * m / n_s (EDEN's
scale); with n_s < m the subset is a fixed, evenly strided one, which the random signs already
make unbiased (E_D[D H^T P H D] = (n_s / m) I for any coordinate subset P). Contractive mode:
S = <y_s, levels> / |levels|^2, the least-squares fit (DRIVE's biased scale), whose error is below
|x| whatever the budget.

The plan for a row - b and how many coordinates - minimises the predicted error over b = 1..8
(see ``plan``): in practice 1 bit on a subset below 1 bit per coordinate, and above it the whole
row at b bits or a large subset at b+1 bits, whichever is predicted better.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from . import quantize
from .wire import Reader, Writer, bits_to_bytes

ALIGN = 64
MAX_CHUNK = 2**14
MAX_BITS = 8


def chunk_sizes(size: int) -> list[int]:
    padded = -(-size // ALIGN) * ALIGN
    sizes = [MAX_CHUNK] * (padded // MAX_CHUNK)
    rest = padded % MAX_CHUNK
    bit = MAX_CHUNK // 2
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit //= 2
    return sizes


@functools.lru_cache(maxsize=None)
def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform of each row of x [r, m], m a power of two: H_m is a
    Kronecker product of small Hadamard matrices, applied one axis at a time (two factors below
    4096, three above, which halves the arithmetic for the largest chunks)."""
    r, m = x.shape
    k = m.bit_length() - 1
    factors = [k // 2, k - k // 2] if m < 4096 else [k // 3, (k - k // 3) // 2, k - k // 3 - (k - k // 3) // 2]
    sizes = [1 << f for f in factors]
    # torch's allocator aligns every buffer to 64 bytes: BLAS results then do not depend on where
    # numpy happened to place the input (MKL can take other code paths for other alignments).
    t = torch.empty((r, m), dtype=torch.float32)
    t.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    t = t.reshape(r, *sizes)
    if len(sizes) == 2:
        t = torch.matmul(torch.matmul(_hadamard(sizes[0]), t), _hadamard(sizes[1]))
    else:
        a, b, c = sizes
        t = torch.matmul(_hadamard(a), t.reshape(r, a, b * c)).reshape(r, a, b, c)
        t = torch.matmul(torch.matmul(_hadamard(b), t), _hadamard(c))
    return t.reshape(r, m).numpy()


def _signs(shared: np.random.Generator, rows: int, padded: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(shared.bytes(bits_to_bytes(rows * padded)), dtype=np.uint8))
    return (bits[: rows * padded].astype(np.float32) * 2 - 1).reshape(rows, padded)


@functools.lru_cache(maxsize=4096)
def plan(size: int, budget: int, unbiased: bool = True) -> tuple[int, tuple[int, ...]]:
    """(bits per sent coordinate, coordinates sent in each chunk) for a row of ``size`` values,
    the one with the least predicted error: (1 + e_b) / p - 1 unbiased, 1 - p + p D_b contractive
    (e_b = D_b / (1 - D_b), D_b the Lloyd-Max distortion, p the fraction of coordinates sent)."""
    chunks = chunk_sizes(size)
    total = sum(chunks)
    spare = 8 * (budget - 4 * len(chunks))
    best = (np.inf, 1, 0)
    for bits in range(1, MAX_BITS + 1):
        count = min(total, spare // bits)
        if count > 0:
            unbiased_error = quantize.gaussian_error(bits)
            if unbiased:
                error = (1 + unbiased_error) * total / count - 1
            else:
                error = 1 - count / total * (1 - unbiased_error / (1 + unbiased_error))
            best = min(best, (error, bits, count))
    _, bits, count = best
    if count == total:
        return bits, tuple(chunks)
    # Spread the coordinates over the chunks by size, largest remainders first, so none are lost to
    # rounding and every chunk gets some where the budget allows (a chunk sent nothing would be a
    # biased zero).
    exact = [count * m / total for m in chunks]
    counts = [max(1, int(e)) if count >= len(chunks) else int(e) for e in exact]
    order = sorted(range(len(chunks)), key=lambda j: (-(exact[j] - int(exact[j])), j))
    for j in order[: max(0, count - sum(counts))]:
        counts[j] += 1
    while sum(counts) > count:  # the floor of 1 overshot: take back from the largest
        counts[max(range(len(chunks)), key=lambda j: (counts[j], -j))] -= 1
    return bits, tuple(min(c, m) for c, m in zip(counts, chunks))


@functools.lru_cache(maxsize=256)
def _selection(size: int, budget: int, unbiased: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where a row's sent coordinates lie: (positions in the padded row, active-chunk index of each,
    the active chunks, their m / count factors). The subset of each chunk is evenly strided."""
    chunks = chunk_sizes(size)
    _, counts = plan(size, budget, unbiased)
    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]])
    active = np.array([j for j, c in enumerate(counts) if c], dtype=np.int64)
    positions = np.concatenate([starts[j] + (np.arange(counts[j], dtype=np.int64) * chunks[j]) // counts[j]
                                for j in active]).astype(np.int32)
    owner = np.repeat(np.arange(len(active), dtype=np.int32), [counts[j] for j in active])
    factor = np.array([chunks[j] / counts[j] for j in active])
    return positions, owner, active, factor


@dataclass(frozen=True)
class _Layout:
    """Where a message's values sit once padded and cut into chunks. Chunks are stored grouped by
    size (largest first), so each size is one contiguous block for the transform."""

    total: int  # padded length of the message
    places: list[np.ndarray]  # per segment: padded position of each of its padded coordinates
    values: np.ndarray  # padded position of each value of the concatenated segments
    blocks: list[tuple[int, int, int]]  # (chunk size, first column, last column + 1)


@functools.lru_cache(maxsize=64)
def _layout(sizes: tuple[int, ...]) -> _Layout:
    chunks = [(m, j, c) for j, n in enumerate(sizes) for c, m in enumerate(chunk_sizes(n))]
    order = sorted(chunks, key=lambda item: (-item[0], item[1], item[2]))
    start_of, column, blocks = {}, 0, []
    for m, j, c in order:
        if not blocks or blocks[-1][0] != m:
            blocks.append((m, column, column))
        start_of[(j, c)] = column
        column += m
        blocks[-1] = (m, blocks[-1][1], column)
    places = [np.concatenate([start_of[(j, c)] + np.arange(m) for c, m in enumerate(chunk_sizes(n))])
              for j, n in enumerate(sizes)]
    values = np.concatenate([place[:n] for place, n in zip(places, sizes)])
    return _Layout(column, places, values, blocks)


def _rotate(padded: np.ndarray, layout: _Layout) -> np.ndarray:
    """Every chunk through H / sqrt(m) (its own inverse), one transform per chunk size."""
    out = np.empty_like(padded)
    rows = padded.shape[0]
    for m, lo, hi in layout.blocks:
        block = padded[:, lo:hi].reshape(-1, m)
        out[:, lo:hi] = (fwht(block) / np.float32(np.sqrt(m))).reshape(rows, -1)
    return out


@functools.lru_cache(maxsize=256)
def _min_bytes(size: int, unbiased: bool) -> int:
    """Enough for at least one coordinate of the largest chunk."""
    chunks = chunk_sizes(size)
    return next(b for b in range(4 * len(chunks), 12 * len(chunks) + 2) if plan(size, b, unbiased)[1][0] > 0)


@dataclass
class _Sent:
    """The coordinates a message sends, grouped by bits per coordinate: flat positions in the
    rotated [rows, total] array, and for each the index of its chunk among all sent chunks."""

    chunks: int  # sent chunks, over every (segment, row) in wire order
    factor: np.ndarray  # [chunks] m / coordinates sent, for the unbiased scale
    groups: list[tuple[int, np.ndarray, np.ndarray]]  # (bits, positions, chunk index), bits ascending


class RotationQuantiser:
    name = "hadamard"
    biased = False

    def __init__(self, unbiased: bool = True):
        self.unbiased = unbiased

    def min_bytes(self, size: int) -> int:
        return _min_bytes(size, self.unbiased)

    def max_bytes(self, size: int) -> int:
        chunks = chunk_sizes(size)
        return 4 * len(chunks) + sum(chunks) * MAX_BITS // 8

    def _sent(self, sizes: tuple[int, ...], budgets: np.ndarray, layout: _Layout) -> _Sent:
        by_bits: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        factors, chunks = [], 0
        for j, size in enumerate(sizes):  # wire order: segment by segment, row by row
            for i, budget in enumerate(budgets[:, j]):
                if budget < self.min_bytes(size):
                    continue
                bits, _ = plan(size, int(budget), self.unbiased)
                positions, owner, active, factor = _selection(size, int(budget), self.unbiased)
                group = by_bits.setdefault(bits, ([], []))
                group[0].append(i * layout.total + layout.places[j][positions])
                group[1].append(owner + chunks)
                factors.append(factor)
                chunks += len(active)
        groups = [(bits, np.concatenate(p), np.concatenate(o)) for bits, (p, o) in sorted(by_bits.items())]
        return _Sent(chunks, np.concatenate(factors) if factors else np.zeros(0), groups)

    def encode(self, pieces: list[np.ndarray], budgets: np.ndarray, shared: np.random.Generator,
               private: np.random.Generator, out: Writer) -> None:
        """Wire: one float32 scale per sent chunk (wire order), then the codes of each bit width."""
        sizes = tuple(piece.shape[1] for piece in pieces)
        layout = _layout(sizes)
        padded = np.zeros((len(budgets), layout.total), dtype=np.float32)
        padded[:, layout.values] = np.concatenate(pieces, axis=1)
        rotated = _rotate(padded * _signs(shared, len(budgets), layout.total), layout).ravel()
        sent = self._sent(sizes, budgets, layout)
        scales, codes = np.zeros(sent.chunks), []
        for bits, positions, chunk in sent.groups:
            y = rotated[positions].astype(np.float64)
            norm2 = np.bincount(chunk, weights=y * y, minlength=sent.chunks)
            count = np.bincount(chunk, minlength=sent.chunks)
            sigma = np.sqrt(np.divide(norm2, count, out=np.zeros(sent.chunks), where=count > 0))
            code = quantize.gaussian_codes(y / np.where(sigma > 0, sigma, 1.0)[chunk], bits)
            levels = quantize.gaussian_levels(bits)[code]
            projection = np.bincount(chunk, weights=y * levels, minlength=sent.chunks)
            if self.unbiased:
                fitted = np.divide(norm2 * sent.factor, projection, out=np.zeros(sent.chunks), where=projection > 0)
            else:
                energy = np.bincount(chunk, weights=levels * levels, minlength=sent.chunks)
                fitted = np.divide(projection, energy, out=np.zeros(sent.chunks), where=projection > 0)
            scales[count > 0] = fitted[count > 0]
            codes.append((code, bits))
        out.array(scales, np.float32)
        for code, bits in codes:
            out.bits(code, bits)

    def decode(self, sizes: tuple[int, ...], budgets: np.ndarray, shared: np.random.Generator,
               src: Reader) -> list[np.ndarray]:
        layout = _layout(sizes)
        signs = _signs(shared, len(budgets), layout.total)
        sent = self._sent(sizes, budgets, layout)
        scales = src.array(sent.chunks, np.float32).astype(np.float64)
        rotated = np.zeros(len(budgets) * layout.total, dtype=np.float32)
        for bits, positions, chunk in sent.groups:
            rotated[positions] = scales[chunk] * quantize.gaussian_levels(bits)[src.bits(len(positions), bits)]
        restored = (_rotate(rotated.reshape(len(budgets), -1), layout) * signs)[:, layout.values]
        return np.split(restored, np.cumsum(sizes)[:-1], axis=1)

    def describe(self, size: int, budget: int) -> str:
        bits, counts = plan(size, budget, self.unbiased)
        total = sum(chunk_sizes(size))
        if sum(counts) == total:
            return f"hadamard rotation, {bits}-bit"
        return f"hadamard rotation, {bits}-bit on {sum(counts) / total:.1%} of rotated coordinates"
