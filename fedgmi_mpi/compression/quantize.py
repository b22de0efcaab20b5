"""Scalar quantisers shared by the codecs.

``uniform``: 2**bits levels evenly spaced on [-scale, scale]; stochastic rounding to a
neighbouring level is unbiased for |v| <= scale, nearest rounding is not (use it with error
feedback). ``gaussian_levels``: the Lloyd-Max quantiser of a standard normal, which is what
coordinates look like after a random rotation (EDEN, Vargaftik et al. 2022).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.special import erf, ndtri


def uniform_codes(values: np.ndarray, scale: float | np.ndarray, bits: int,
                  rng: np.random.Generator | None) -> np.ndarray:
    """Codes in [0, 2**bits) of values on the grid -scale + 2 scale j / (2**bits - 1); ``scale``
    broadcasts against ``values`` (one per block). rng given: stochastic (unbiased) rounding;
    None: nearest. Where scale is 0 every code decodes to 0."""
    top = (1 << bits) - 1
    scale = np.asarray(scale, dtype=np.float64)
    ratio = np.divide(values.astype(np.float64), scale, out=np.zeros(np.broadcast(values, scale).shape),
                      where=scale > 0)
    position = (np.clip(ratio, -1.0, 1.0) + 1.0) * (top / 2.0)
    if rng is None:
        codes = np.rint(position)
    else:
        low = np.floor(position)
        codes = low + (rng.random(position.shape) < (position - low))
    return np.clip(codes, 0, top).astype(np.uint32)


def uniform_values(codes: np.ndarray, scale: float | np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return (codes.astype(np.float64) * (2.0 / top) - 1.0) * np.asarray(scale, dtype=np.float64)


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + erf(x / np.sqrt(2)))


def _cell_moments(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell [edges_j, edges_j+1] of N(0, 1): probability, first and second moment."""
    cdf, pdf = _normal_cdf(edges), _normal_pdf(edges)
    with np.errstate(invalid="ignore"):  # inf * 0 at the outer edges
        edge_pdf = np.nan_to_num(edges * pdf)
    mass = cdf[1:] - cdf[:-1]
    return mass, pdf[:-1] - pdf[1:], mass - (edge_pdf[1:] - edge_pdf[:-1])


@functools.lru_cache(maxsize=None)
def gaussian_levels(bits: int) -> np.ndarray:
    """Lloyd-Max centroids (ascending, symmetric) of N(0, 1) with 2**bits levels."""
    count = 1 << bits
    levels = _normal_quantiles((np.arange(count) + 0.5) / count)  # a start close to the optimum
    for _ in range(5000):
        edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
        mass, first, _ = _cell_moments(edges)
        new = first / np.maximum(mass, 1e-300)
        done = np.max(np.abs(new - levels)) < 1e-13
        levels = new
        if done:
            break
    return (levels - levels[::-1]) / 2  # exactly symmetric


def _normal_quantiles(p: np.ndarray) -> np.ndarray:
    return ndtri(p)


@functools.lru_cache(maxsize=None)
def gaussian_error(bits: int) -> float:
    """Normalised squared error of the Lloyd-Max quantiser of N(0, 1) once rescaled to be unbiased:
    with distortion D (and E[y q] = E[q^2] = 1 - D at the centroids) the scale 1 / (1 - D) gives
    D / (1 - D); 1 bit: pi/2 - 1."""
    levels = gaussian_levels(bits)
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    mass, first, second = _cell_moments(edges)
    distortion = float(np.sum(second - 2 * levels * first + levels**2 * mass))
    return distortion / (1.0 - distortion)


def gaussian_codes(standardised: np.ndarray, bits: int) -> np.ndarray:
    if bits == 1:
        return (standardised > 0).astype(np.uint32)
    levels = gaussian_levels(bits)
    edges = (levels[1:] + levels[:-1]) / 2
    return np.searchsorted(edges, standardised).astype(np.uint32)
