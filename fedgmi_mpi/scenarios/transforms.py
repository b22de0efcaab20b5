"""Transforms that turn one base data set into K inherent distributions, described in config.

``scenario.components`` lists the components separated by ``;``; a component is a chain of
transforms joined by ``+``, applied left to right, e.g.::

    identity; rotate(45); flip(h)+invert; shift(2,0)+noise(0.1); blur(1.0)+permute_labels(3)

=====================  ===============================================================
identity               the base samples as they are
rotate(DEGREES)        rotation about the image centre (bilinear, zero fill)
flip(h) / flip(v)      mirror left-right / upside-down
invert                 1 - x
noise(SIGMA)           + Gaussian noise of standard deviation SIGMA, clipped to [0, 1]
blur(SIGMA)            Gaussian blur of SIGMA pixels
shift(DY,DX)           translation by whole pixels (zero fill)
permute_labels(SEED)   labels through a fixed random permutation drawn from SEED
relabel(L0,L1,...)     label y becomes L_y (an explicit permutation or merge)
=====================  ===============================================================

Image transforms need the samples' image shape (the base data set's, e.g. 8x8 for the digits).
Noise is drawn from the client's own stream, so a client's samples do not depend on the others.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import UserError

_CALL = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")
IMAGE_TRANSFORMS = ("rotate", "flip", "blur", "shift")


@dataclass(frozen=True)
class Transform:
    name: str
    args: tuple[float | str, ...]

    def __str__(self) -> str:
        return self.name + (f"({','.join(f'{a:g}' if isinstance(a, float) else a for a in self.args)})" if self.args else "")


def _args(name: str, text: str | None) -> tuple[float | str, ...]:
    if not text:
        return ()
    out: list[float | str] = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(float(part))
        except ValueError:
            out.append(part)
    return tuple(out)


ARITY = {"identity": (0, 0), "rotate": (1, 1), "flip": (1, 1), "invert": (0, 0), "noise": (1, 1), "blur": (1, 1),
         "shift": (2, 2), "permute_labels": (1, 1), "relabel": (1, 10_000)}


def parse_chain(text: str, where: str) -> tuple[Transform, ...]:
    """"flip(h)+noise(0.1)" -> its transforms; a bad one raises UserError naming ``where``."""
    chain = []
    for item in text.split("+"):
        match = _CALL.match(item)
        if not match or match.group(1) not in ARITY:
            raise UserError(f"{where}: unknown transform {item.strip()!r} (known: {', '.join(ARITY)})")
        name, args = match.group(1), _args(match.group(1), match.group(2))
        low, high = ARITY[name]
        if not low <= len(args) <= high:
            raise UserError(f"{where}: {name} takes {low if low == high else f'{low}+'} argument(s), got {item.strip()!r}")
        if name == "flip" and args[0] not in ("h", "v"):
            raise UserError(f"{where}: flip takes h or v, got {item.strip()!r}")
        numeric = [a for a in args if name != "flip"]
        if any(isinstance(a, str) for a in numeric):
            raise UserError(f"{where}: {name} takes numbers, got {item.strip()!r}")
        if name in ("noise", "blur") and args[0] < 0:
            raise UserError(f"{where}: {name} needs a value >= 0, got {item.strip()!r}")
        chain.append(Transform(name, args))
    return tuple(chain)


def parse_components(text: str, where: str = "scenario.components") -> list[tuple[Transform, ...]]:
    parts = [p for p in (part.strip() for part in text.split(";")) if p]
    if not parts:
        raise UserError(f"{where} is empty: list the components separated by ';' (e.g. identity; flip(h))")
    return [parse_chain(part, f"{where} (component {k})") for k, part in enumerate(parts)]


def describe(chain: tuple[Transform, ...]) -> str:
    return "+".join(str(t) for t in chain)


def needs_images(chains: list[tuple[Transform, ...]]) -> bool:
    return any(t.name in IMAGE_TRANSFORMS for chain in chains for t in chain)


def apply_chain(chain: tuple[Transform, ...], x: np.ndarray, y: np.ndarray, image_shape: tuple[int, int] | None,
                num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x [n, D] in [0, 1], y [n] -> the transformed samples and labels."""
    x = x.astype(np.float32, copy=True)
    y = y.copy()
    for transform in chain:
        step = _STEPS[transform.name]
        x, y = step(transform.args, x, y, image_shape, num_classes, rng)
    return np.clip(x, 0.0, 1.0).astype(np.float32), y


def _images(x: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    return x.reshape(len(x), *image_shape)


def _rotate(args, x, y, shape, classes, rng):
    if not len(x):
        return x, y
    turned = ndimage.rotate(_images(x, shape), float(args[0]), axes=(2, 1), reshape=False, order=1, mode="constant")
    return turned.reshape(len(x), -1), y


def _flip(args, x, y, shape, classes, rng):
    return np.flip(_images(x, shape), axis=2 if args[0] == "h" else 1).reshape(len(x), -1), y


def _blur(args, x, y, shape, classes, rng):
    if not len(x):
        return x, y
    return ndimage.gaussian_filter(_images(x, shape), sigma=(0, float(args[0]), float(args[0]))).reshape(len(x), -1), y


def _shift(args, x, y, shape, classes, rng):
    if not len(x):
        return x, y
    moved = ndimage.shift(_images(x, shape), (0, float(args[0]), float(args[1])), order=0, mode="constant")
    return moved.reshape(len(x), -1), y


def _noise(args, x, y, shape, classes, rng):
    return x + float(args[0]) * rng.standard_normal(x.shape).astype(np.float32), y


def _permute(args, x, y, shape, classes, rng):
    permutation = np.random.default_rng(int(args[0])).permutation(classes)
    return x, permutation[y]


def _relabel(args, x, y, shape, classes, rng):
    mapping = np.array([int(a) for a in args], dtype=np.int64)
    if len(mapping) < classes or mapping.min() < 0 or mapping.max() >= classes:
        raise UserError(f"relabel must list {classes} labels in 0..{classes - 1}, got {len(mapping)}: "
                        f"{','.join(map(str, mapping))}")
    return x, mapping[y]


_STEPS: dict[str, Callable] = {
    "identity": lambda args, x, y, shape, classes, rng: (x, y), "rotate": _rotate, "flip": _flip,
    "invert": lambda args, x, y, shape, classes, rng: (1.0 - x, y), "noise": _noise, "blur": _blur, "shift": _shift,
    "permute_labels": _permute, "relabel": _relabel,
}
