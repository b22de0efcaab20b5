"""Example data files in other formats, made from the bundled digits (nothing is downloaded):
``write_digits28(folder)`` writes the 1797 digits upscaled to 28x28 as an IDX pair, the MNIST
file format, for configs/idx_28x28.yaml and the tests."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..atomic import write_atomically

IDX_UBYTE = 0x08


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes (gzipped when the name ends in .gz): magic 0, 0, type, ndim;
    big-endian int32 sizes; the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload += array.tobytes()

    def write(temporary: Path) -> None:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(temporary, "wb") as handle:
            handle.write(payload)

    return write_atomically(path, write)


def digits28() -> tuple[np.ndarray, np.ndarray]:
    """[1797, 28, 28] uint8 images (bilinear upscaling of the 8x8 digits) and their labels."""
    from .rotated_digits import load_base_digits

    images, labels = load_base_digits()
    large = ndimage.zoom(images, (1, 3.5, 3.5), order=1)
    return np.clip(np.round(large * 255), 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_digits28(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digits28()
    return (write_idx(folder / "digits28-images-idx3-ubyte.gz", images),
            write_idx(folder / "digits28-labels-idx1-ubyte.gz", labels))
