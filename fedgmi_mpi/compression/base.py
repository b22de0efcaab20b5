"""What a compression method is: a codec that turns the rows of a model, cut into segments (its
parameter tensors), into bytes within a byte budget per (row, segment), and the bytes back into
values exactly as the receiver decodes them.

The channels (``channel.py``) decide the budgets and call the codec once per message with every
segment, so a codec can batch work across segments (the Hadamard rotation does). A codec derives
its parameter (bits, k, fraction of coordinates) from ``(size, budget)`` alone, so the receiver
derives it too and nothing about it is sent. Shared randomness (rotations, rand-k index sets)
comes from ``shared``, drawn in the same order by sender and receiver; the sender's private
randomness (stochastic rounding) from ``private``. A (row, segment) whose budget is below
``min_bytes`` is skipped by both sides and decodes to zeros.

Two modes. *Unbiased* (E[decoded] = x): right where many clients' uploads are averaged and the
errors cancel. *Contractive* (|decoded - x| < |x| always, least-squares scales, nearest rounding):
required wherever the error is fed back - the uplink's error feedback and the downlink's replica -
because feeding back an unbiased error of variance above |x|^2 (1-bit rounding, a 10 % subset)
makes the residual grow every round instead of shrink.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .wire import Reader, Writer


class Codec(Protocol):
    name: str
    biased: bool  # True: converges only with error feedback (top-k), whatever the mode
    unbiased: bool  # the mode this instance encodes in

    def min_bytes(self, size: int) -> int:
        """The smallest budget with which a segment of ``size`` values is sent at all."""
        ...

    def max_bytes(self, size: int) -> int:
        """The most a segment of ``size`` values can use; budget beyond it is given to other segments."""
        ...

    def encode(self, pieces: list[np.ndarray], budgets: np.ndarray, shared: np.random.Generator,
               private: np.random.Generator, out: Writer) -> None:
        """pieces[j]: [rows, size_j] float32; budgets [rows, segments] bytes, each one respected."""
        ...

    def decode(self, sizes: tuple[int, ...], budgets: np.ndarray, shared: np.random.Generator,
               src: Reader) -> list[np.ndarray]:
        """[rows, size_j] float32 per segment, as the receiver reconstructs them."""
        ...

    def describe(self, size: int, budget: int) -> str:
        """The parameter this budget gives a segment of ``size`` values, for logs and tables."""
        ...


class SegmentCodec:
    """A codec that treats each (row, segment) on its own: subclasses say how one row of one
    segment is written and read."""

    def encode(self, pieces: list[np.ndarray], budgets: np.ndarray, shared: np.random.Generator,
               private: np.random.Generator, out: Writer) -> None:
        for j, piece in enumerate(pieces):
            for row, budget in zip(piece, budgets[:, j]):
                if budget >= self.min_bytes(piece.shape[1]):
                    self.encode_row(row, int(budget), shared, private, out)

    def decode(self, sizes: tuple[int, ...], budgets: np.ndarray, shared: np.random.Generator,
               src: Reader) -> list[np.ndarray]:
        pieces = []
        for j, size in enumerate(sizes):
            piece = np.zeros((len(budgets), size), dtype=np.float32)
            for i, budget in enumerate(budgets[:, j]):
                if budget >= self.min_bytes(size):
                    piece[i] = self.decode_row(size, int(budget), shared, src)
            pieces.append(piece)
        return pieces

    def min_bytes(self, size: int) -> int:
        raise NotImplementedError

    def encode_row(self, row: np.ndarray, budget: int, shared: np.random.Generator,
                   private: np.random.Generator, out: Writer) -> None:
        raise NotImplementedError

    def decode_row(self, size: int, budget: int, shared: np.random.Generator, src: Reader) -> np.ndarray:
        raise NotImplementedError
