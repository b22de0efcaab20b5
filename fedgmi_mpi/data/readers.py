"""Users' data files besides the ``.npz`` layout of docs/data.md (fedgmi_mpi/scenarios/npz_file.py).

* ``read_idx``: the IDX format of MNIST and Fashion-MNIST, gzipped or not (told by the gzip magic
  bytes, not by the name).
* ``read_hdf5``: the layout's arrays (x, y, client, test, component, proportions) from named
  datasets of an HDF5 file.
* ``load_source``: one spec string -> features in [0, 1] and labels (``Source``). Specs:
  ``idx:IMAGES,LABELS``, ``npz:PATH``, ``hdf5:PATH`` and ``hdf5:PATH:x=NAME,y=NAME,...``.
* ``inspect`` / ``examine``: what a file holds and whether it is valid (``fedgmi data inspect``).
* ``convert``: IDX images + labels, or an HDF5 file, -> the ``.npz`` layout (``fedgmi data convert``).

Scaling of x (the Bernoulli likelihood needs [0, 1]): integer pixels must be 0..255 and are divided
by 255; floating-point values must already lie in [0, 1]; booleans are 0/1. Every problem is a
one-line UserError naming the file; nothing is ever unpickled.
"""
from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..atomic import check_new_file, write_atomically
from ..errors import UserError
from ..scenarios import npz_file

LAYOUT = ("x", "y", "client", "test", "component", "proportions")
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: "i2", 0x0C: "i4", 0x0D: "f4", 0x0E: "f8"}
GZIP_MAGIC = b"\x1f\x8b"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
SPEC_FORMS = "idx:IMAGES,LABELS or npz:PATH or hdf5:PATH or hdf5:PATH:x=NAME,y=NAME,..."
TEST_FRACTION = 0.2  # npz_file.load's default share of each client's samples kept for testing


@dataclass(frozen=True)
class Source:
    """Samples of a data file: ``x`` float32 [N, D] in [0, 1], ``y`` int64 [N] labels 0..C-1;
    ``image_shape`` (height, width) when the file stores images [N, H, W], else None."""

    x: np.ndarray
    y: np.ndarray
    image_shape: tuple[int, int] | None
    description: str

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


@dataclass
class Report:
    """What ``examine`` found: ``lines`` of description, and ``problem`` (one line naming the
    file) or None when the file is valid."""

    path: str
    format: str
    lines: list[str] = field(default_factory=list)
    verdict: str = ""
    problem: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def text(self) -> str:
        verdict = f"problem: {self.problem}" if self.problem else f"verdict: {self.verdict}"
        return "\n".join([*self.lines, verdict])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _existing(path: str | Path) -> Path:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"file not found: {path}")
    return file


# ---------------------------------------------------------------------------------------- IDX


def _idx_bytes(path: str | Path) -> tuple[bytes, bool]:
    """The file's bytes, decompressed when they start with the gzip magic; and whether they did."""
    file = _existing(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({_one_line(exc)})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: broken gzip data ({_one_line(exc)})") from None


def _parse_idx(data: bytes, where: str) -> np.ndarray:
    if not data:
        raise UserError(f"{where}: empty file")
    if len(data) < 4:
        raise UserError(f"{where}: {len(data)} bytes, too short for an IDX header")
    if data[:2] != b"\0\0":
        raise UserError(f"{where}: not an IDX file (it starts with bytes {data[:4].hex(' ')}; IDX starts with "
                        "00 00, a type code and the number of dimensions)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise UserError(f"{where}: unknown IDX type code 0x{code:02X} (known: 08 uint8, 09 int8, 0B int16, "
                        "0C int32, 0D float32, 0E float64)")
    if ndim == 0:
        raise UserError(f"{where}: the IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{where}: truncated IDX header ({ndim} dimensions need {header} header bytes, "
                        f"the file has {len(data)})")
    sizes = struct.unpack(f">{ndim}i", data[4:header])
    if min(sizes) < 0:
        raise UserError(f"{where}: negative size in the IDX header {sizes}")
    dtype = np.dtype(">" + IDX_TYPES[code])
    count = math.prod(sizes)
    expected, got = count * dtype.itemsize, len(data) - header
    shape = " x ".join(map(str, sizes))
    if got < expected:
        raise UserError(f"{where}: truncated: sizes {shape} of {dtype.name} need {expected} data bytes, "
                        f"the file holds {got}")
    if got > expected:
        raise UserError(f"{where}: {got - expected} bytes beyond the {expected} data bytes that sizes {shape} "
                        f"of {dtype.name} need (a wrong header or a damaged file)")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(sizes)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an IDX file (gzipped or not), in native byte order. Bad files: UserError."""
    data, _ = _idx_bytes(path)
    return _parse_idx(data, str(path))


# --------------------------------------------------------------------------------------- HDF5


def _hdf5_datasets(handle: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    found: list[tuple[str, h5py.Dataset]] = []
    handle.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return found


def _names_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return shown or "none"


def read_hdf5(path: str | Path, x: str = "x", y: str = "y", client: str | None = "client", test: str | None = "test",
              component: str | None = "component", proportions: str | None = "proportions",
              required: Sequence[str] = ("x", "y")) -> dict[str, np.ndarray]:
    """The layout's arrays (keyed x, y, client, test, component, proportions) from the datasets so
    named (None: not read); an optional one that is absent is missing from the result. Only numeric
    (or boolean) datasets are read; nothing is checked beyond that (``load_source``/``convert`` check)."""
    file = _existing(path)
    names = {"x": x, "y": y, "client": client, "test": test, "component": component, "proportions": proportions}
    for key in required:
        if key not in names:
            raise UserError(f"read_hdf5: unknown required array {key!r} (layout: {', '.join(LAYOUT)})")
    try:
        handle = h5py.File(file, "r")
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({_one_line(exc)})") from None
    arrays: dict[str, np.ndarray] = {}
    with handle:
        for key, name in names.items():
            if name is None:
                continue
            try:
                obj = handle.get(name)
            except (KeyError, OSError, ValueError) as exc:
                raise UserError(f"{path}: dataset {name!r} cannot be opened ({_one_line(exc)})") from None
            if obj is None:
                if key in required:
                    available = [n for n, _ in _hdf5_datasets(handle)]
                    raise UserError(f"{path}: no dataset {name!r} for {key} (datasets in the file: "
                                    f"{_names_list(available)}; name yours with {key}=NAME / --{key} NAME)")
                continue
            if not isinstance(obj, h5py.Dataset):
                raise UserError(f"{path}: {name!r} ({key}) is a group, not a dataset")
            if obj.dtype.kind not in "biuf":
                raise UserError(f"{path}: dataset {name!r} ({key}) has dtype {obj.dtype}; only numeric arrays are read")
            if obj.shape is None or obj.ndim == 0:
                raise UserError(f"{path}: dataset {name!r} ({key}) is a scalar, not an array")
            try:
                arrays[key] = np.asarray(obj[()])
            except (OSError, TypeError, ValueError) as exc:
                raise UserError(f"{path}: dataset {name!r} cannot be read ({_one_line(exc)})") from None
    return arrays


# ---------------------------------------------------------------------------------------- npz


def _npz_arrays(path: str | Path, keys: Sequence[str], required: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of a .npz (allow_pickle=False: object arrays are refused, as npz_file does)."""
    file = _existing(path)
    try:
        data = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable .npz file: {_one_line(exc)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{path} holds one .npy array, not a .npz archive of named arrays (see docs/data.md)")
    arrays: dict[str, np.ndarray] = {}
    with data:
        for key in keys:
            if key not in data.files:
                if key in required:
                    raise UserError(f"{path}: missing array {key!r} (arrays in the file: {_names_list(data.files)})")
                continue
            try:
                value = data[key]
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise UserError(f"{path}: array {key!r} cannot be read without pickle ({_one_line(exc)})") from None
                raise UserError(f"{path}: array {key!r} is damaged ({_one_line(exc)})") from None
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
                raise UserError(f"{path}: array {key!r} is damaged ({_one_line(exc)})") from None
            if not isinstance(value, np.ndarray):
                raise UserError(f"{path}: member {key!r} is not a .npy array")
            arrays[key] = value
    return arrays


# ----------------------------------------------------------------------------------- checking


def _range(a: np.ndarray) -> str:
    return f"{a.min():g}..{a.max():g}" if a.dtype.kind == "f" else f"{a.min()}..{a.max()}"


def _scale_x(x: np.ndarray, who: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """x as float32 [N, D] in [0, 1], and (H, W) when x is images [N, H, W]."""
    if x.ndim not in (2, 3):
        raise UserError(f"{who} must be [samples, features] or images [samples, height, width], got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise UserError(f"{who} must be numeric, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise UserError(f"{who} holds no samples")
    if x.size == 0:
        raise UserError(f"{who} has no features (shape {x.shape})")
    image_shape = (int(x.shape[1]), int(x.shape[2])) if x.ndim == 3 else None
    flat = x.reshape(x.shape[0], -1)
    if x.dtype.kind == "b":
        return flat.astype(np.float32), image_shape
    if x.dtype.kind in "iu":
        if x.dtype != np.uint8 and (flat.min() < 0 or flat.max() > 255):
            raise UserError(f"{who} holds {x.dtype} integers in {_range(flat)}: integer x must be pixel values 0..255 "
                            "(divided by 255); floating-point x must already lie in [0, 1]")
        return flat.astype(np.float32) / np.float32(255), image_shape
    if not np.all(np.isfinite(flat)):
        raise UserError(f"{who} holds NaN or Inf ({int(np.count_nonzero(~np.isfinite(flat)))} values)")
    if flat.min() < 0 or flat.max() > 1:
        raise UserError(f"{who} holds {x.dtype} values in {_range(flat)}: floating-point x must already lie in "
                        "[0, 1] (integer pixels 0..255 are divided by 255)")
    return flat.astype(np.float32), image_shape


def _check_ids(a: np.ndarray, n: int, who: str, what: str) -> np.ndarray:
    """A 1-D array of n non-negative integers (labels, client or component ids), as int64."""
    if a.ndim != 1:
        raise UserError(f"{who} must be 1-D [samples], got shape {a.shape}")
    if len(a) != n:
        raise UserError(f"{who} has {len(a)} entries but x has {n} samples (one per sample is needed)")
    if a.dtype.kind not in "iu":
        raise UserError(f"{who} must hold integer {what}, got dtype {a.dtype}")
    if n and a.min() < 0:
        raise UserError(f"{who} holds negative {what} (min {a.min()}); they must be 0, 1, 2, ...")
    if n and a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise UserError(f"{who} holds {what} beyond int64")
    return a.astype(np.int64)


def _check_layout(arrays: dict[str, np.ndarray], who: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The layout's other arrays checked against x [N, D] (already scaled) and y (already checked),
    as npz_file.read_arrays and npz_file.load (default 20% test split) would; returns them with
    canonical dtypes."""
    n = len(arrays["x"])
    out = dict(arrays)
    for key in ("client", "component"):
        if key in out:
            out[key] = _check_ids(out[key], n, who[key], f"{key} ids")
    if "test" in out:
        test = out["test"]
        if test.shape != (n,):
            raise UserError(f"{who['test']} must have shape ({n},), got {test.shape}")
        if test.dtype.kind not in "biuf" or not np.isin(test, (0, 1)).all():
            raise UserError(f"{who['test']} must be boolean (True marks a test sample)")
        out["test"] = test.astype(bool)
    client = out["client"]
    num_clients = int(client.max()) + 1
    if num_clients > n:
        raise UserError(f"{who['client']} ids reach {num_clients - 1} with {n} samples: ids must be 0..n-1 without gaps")
    counts = np.bincount(client, minlength=num_clients)
    if "test" in out:
        n_test = np.bincount(client[out["test"]], minlength=num_clients)
    else:
        n_test = np.rint(TEST_FRACTION * counts).astype(np.int64)
    short = np.flatnonzero((n_test == 0) | (counts - n_test == 0))
    if short.size:
        c = int(short[0])
        split = "its test marks" if "test" in out else f"the default {TEST_FRACTION:.0%} test split"
        raise UserError(f"{who['client']}: client {c} has {counts[c]} samples; with {split} it lacks a training or "
                        f"a test sample (fedgmi run needs both in every client 0..{num_clients - 1})")
    if "proportions" in out:
        p = out["proportions"]
        if p.ndim != 2 or p.shape[0] != num_clients or p.dtype.kind not in "iuf":
            raise UserError(f"{who['proportions']} must be float [clients={num_clients}, K], got shape {p.shape}")
        if not np.all(np.isfinite(p)) or p.min() < 0:
            raise UserError(f"{who['proportions']} must be finite and non-negative")
        out["proportions"] = p.astype(np.float64)
        if "component" in out and out["component"].max() >= p.shape[1]:
            raise UserError(f"{who['component']} ids reach {out['component'].max()} but proportions have "
                            f"K={p.shape[1]} columns")
    return out


# ------------------------------------------------------------------------------------ sources


@dataclass
class _Raw:
    arrays: dict[str, np.ndarray]
    who: dict[str, str]  # how messages name each array
    description: str
    origin: str  # the (first) file


def _read_idx_pair(images: str | Path, labels: str | Path) -> _Raw:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim not in (2, 3):
        raise UserError(f"{images}: IDX images must be [N, H, W] (or [N, D]), got {x.ndim} dimensions {x.shape}")
    if y.ndim != 1:
        raise UserError(f"{labels}: IDX labels must be 1-D [N], got shape {y.shape} (are --images and --labels swapped?)")
    if len(x) != len(y):
        raise UserError(f"{labels}: {len(y)} labels for the {len(x)} images of {images}")
    shape = " x ".join(map(str, x.shape))
    who = {**{k: f"{images}: {k}" for k in LAYOUT}, "x": f"{images}: images", "y": f"{labels}: labels"}
    return _Raw({"x": x, "y": y}, who,
                f"IDX images {images} ({shape} {x.dtype.name}) with labels {labels}", str(images))


def _read_npz_source(path: str | Path, keys: Sequence[str]) -> _Raw:
    arrays = _npz_arrays(path, keys, required=("x", "y"))
    return _Raw(arrays, {k: f"{path}: {k}" for k in LAYOUT}, f"npz {path}", str(path))


def _read_hdf5_source(path: str | Path, names: Mapping[str, str], keys: Sequence[str]) -> _Raw:
    unknown = sorted(set(names) - set(LAYOUT))
    if unknown:
        raise UserError(f"unknown HDF5 dataset key {unknown[0]!r} (keys: {', '.join(LAYOUT)})")
    full = {k: names.get(k, k) for k in LAYOUT}
    selected = {k: (full[k] if k in keys else None) for k in LAYOUT}  # None: not read
    # A dataset named explicitly must be there; one left at its default name is optional.
    arrays = read_hdf5(path, **selected, required=("x", "y", *(k for k in names if k in keys)))
    who = {k: f"{path}: {k}" if full[k] == k else f"{path}: dataset {full[k]!r} ({k})" for k in LAYOUT}
    renamed = ", ".join(f"{k}={v}" for k, v in names.items() if v != k)
    return _Raw(arrays, who, f"HDF5 {path}" + (f" ({renamed})" if renamed else ""), str(path))


def _parse_spec(spec: str, keys: Sequence[str]) -> _Raw:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in ("idx", "npz", "hdf5"):
        raise UserError(f"unknown data source {spec!r}; valid forms: {SPEC_FORMS}")
    if kind == "idx":
        parts = rest.split(",")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"data source {spec!r}: idx needs two paths, idx:IMAGES,LABELS (paths without commas)")
        return _read_idx_pair(*parts)
    if kind == "npz":
        return _read_npz_source(rest, keys)
    path, sep, tail = rest.rpartition(":")
    names: dict[str, str] = {}
    if sep and "=" in tail:
        for item in tail.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key or not value:
                raise UserError(f"data source {spec!r}: expected KEY=DATASET items after the path, got {item!r}")
            if key in names:
                raise UserError(f"data source {spec!r}: {key} is named twice")
            names[key] = value
    else:
        path = rest
    return _read_hdf5_source(path, names, keys)


def load_source(spec: str) -> Source:
    """Features and labels of a data file named by ``spec``: ``idx:IMAGES,LABELS`` (IDX, gzipped or
    not), ``npz:PATH`` (arrays x, y) or ``hdf5:PATH[:x=NAME,y=NAME]`` (datasets, default x and y).
    x becomes float32 [N, D] in [0, 1] (integers 0..255 / 255; floats must lie in [0, 1]); y int64."""
    raw = _parse_spec(spec, ("x", "y"))
    x, image_shape = _scale_x(raw.arrays["x"], raw.who["x"])
    y = _check_ids(raw.arrays["y"], len(x), raw.who["y"], "class labels")
    return Source(x=x, y=y, image_shape=image_shape, description=raw.description)


def _prepare(raw: _Raw, clients: int | None) -> dict[str, np.ndarray]:
    """The layout's arrays ready to save: x scaled and flattened, every array checked."""
    x, _ = _scale_x(raw.arrays["x"], raw.who["x"])
    arrays = {**raw.arrays, "x": x}
    arrays["y"] = _check_ids(arrays["y"], len(x), raw.who["y"], "class labels")
    if clients is not None:
        if "client" in arrays:
            raise UserError(f"{raw.who['client']}: the file assigns clients itself; --clients N only splits a file "
                            "without a client array")
        if clients < 1 or clients > len(x):
            raise UserError(f"--clients {clients}: needs 1..{len(x)} (the number of samples)")
        arrays["client"] = np.arange(len(x), dtype=np.int64) * clients // len(x)
        who = {**raw.who, "client": f"--clients {clients}"}
    elif "client" not in arrays:
        arrays["client"] = np.zeros(len(x), dtype=np.int64)
        who = {**raw.who, "client": f"{raw.origin} (one client, no --clients)"}
    else:
        who = raw.who
    return _check_layout(arrays, who)


def _summary(arrays: Mapping[str, np.ndarray]) -> list[str]:
    x, y, client = arrays["x"], arrays["y"], arrays["client"]
    counts = np.bincount(client)
    test = arrays.get("test")
    lines = [
        f"samples: {len(x)}, features: {x.shape[1]}",
        f"clients: {len(counts)} (samples per client: min {counts.min()}, median {np.median(counts):g}, "
        f"max {counts.max()})",
        f"classes: {int(y.max()) + 1} (labels 0..{int(y.max())}, {len(np.unique(y))} present)",
        "test split: " + (f"marked ({int(np.count_nonzero(test))} test samples)" if test is not None
                          else f"not marked (fedgmi run holds out a seeded {TEST_FRACTION:.0%} of each client)"),
    ]
    truth = []
    if "component" in arrays:
        truth.append(f"component (ids 0..{int(arrays['component'].max())})")
    if "proportions" in arrays:
        truth.append(f"proportions {arrays['proportions'].shape[0]} x {arrays['proportions'].shape[1]}")
    lines.append("truth: " + (", ".join(truth) + " present" if truth else "none (component and proportions absent)"))
    return lines


def convert(inputs: str | Path | Sequence[str | Path], out: str | Path, *, names: Mapping[str, str] | None = None,
            clients: int | None = None) -> str:
    """Write the .npz layout of docs/data.md to ``out`` (which must not exist; written atomically).
    ``inputs``: [IMAGES, LABELS] (an IDX pair), [FILE.h5] (datasets named by ``names``, default the
    layout's names: x, y, client, test, component, proportions) or [FILE.npz]. A source without a
    client array becomes one client (client 0), or ``clients`` equal contiguous clients in file
    order. Returns a summary of what was written."""
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    target = check_new_file(Path(out), (".npz",))
    if len(paths) == 2:
        if names:
            raise UserError("dataset names apply to an HDF5 input, not to IDX files")
        raw = _read_idx_pair(*paths)
    elif len(paths) == 1:
        file = _existing(paths[0])
        kind = _detect(file, _head(file))
        if kind == "hdf5":
            raw = _read_hdf5_source(file, dict(names or {}), LAYOUT)
        elif kind == "npz":
            if names:
                raise UserError("dataset names apply to an HDF5 input, not to a .npz")
            raw = _read_npz_source(file, LAYOUT)
        elif kind == "idx":
            raise UserError(f"{file}: an IDX file needs its partner: give IMAGES and LABELS")
        else:
            raise UserError(f"{file}: convert reads an IDX pair, an HDF5 file or a .npz (this is {kind})")
    else:
        raise UserError(f"convert needs [IMAGES, LABELS] or [FILE.h5], got {len(paths)} paths")
    arrays = _prepare(raw, clients)
    write_atomically(target, lambda temporary: np.savez_compressed(temporary, **arrays))
    return "\n".join([f"wrote {target} from {raw.description}", *_summary(arrays)])


# ------------------------------------------------------------------------------------- inspect


def _head(file: Path, size: int = 8) -> bytes:
    try:
        with open(file, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise UserError(f"{file}: cannot read ({_one_line(exc)})") from None


def _detect(file: Path, head: bytes) -> str:
    """idx, hdf5, npz, npy or unknown: by magic bytes first, then by the name."""
    if head[:2] == GZIP_MAGIC:
        return "idx"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head[:4] in ZIP_MAGICS:
        return "npz"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in IDX_TYPES:
        return "idx"
    name, suffix = file.name.lower(), file.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".h5", ".hdf5", ".he5", ".hdf") or h5py.is_hdf5(str(file)):
        return "hdf5"
    if suffix == ".idx" or "-ubyte" in name or "idx1" in name or "idx3" in name:
        return "idx"
    return "unknown"


def _describe(name: str, a: np.ndarray) -> str:
    text = f"  {name:<14s} {str(a.dtype):<9s} {str(a.shape):<16s}"
    if a.size == 0 or a.dtype.kind not in "biuf":
        return text + ("empty" if a.size == 0 else "")
    if a.dtype.kind == "b":
        return text + f"{int(np.count_nonzero(a))} True"
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        bad = a.size - int(np.count_nonzero(finite))
        if bad == a.size:
            return text + "all NaN/Inf"
        return text + f"min {a[finite].min():g}  max {a[finite].max():g}" + (f"  ({bad} NaN/Inf)" if bad else "")
    return text + f"min {a.min()}  max {a.max()}"


def _inspect_idx(file: Path, report: Report) -> None:
    report.lines.append("format: IDX" + (" (gzip-compressed)" if _head(file)[:2] == GZIP_MAGIC else ""))
    data, _ = _idx_bytes(file)
    a = _parse_idx(data, str(file))
    report.lines.append(f"type: {a.dtype.name} (code 0x{data[2]:02X}), shape {a.shape}")
    if a.size:
        report.lines.append(_describe("values", a).strip())
    if a.ndim == 1:
        _check_ids(a, len(a), f"{file}: labels", "class labels")
        if not len(a):
            raise UserError(f"{file}: no labels")
        report.verdict = (f"valid IDX labels file: {len(a)} labels, classes 0..{a.max()}; pair it with images: "
                          f"fedgmi data convert --images IMAGES --labels {file} --out OUT.npz")
    elif a.ndim in (2, 3):
        _, image_shape = _scale_x(a, f"{file}: images")
        kind = f"{image_shape[0]}x{image_shape[1]} images" if image_shape else f"samples of {a.shape[1]} features"
        report.verdict = (f"valid IDX images file: {len(a)} {kind}; pair it with labels: "
                          f"fedgmi data convert --images {file} --labels LABELS --out OUT.npz")
    else:
        raise UserError(f"{file}: an IDX array of {a.ndim} dimensions is neither labels [N] nor images [N, H, W]")


def _inspect_npz(file: Path, report: Report) -> None:
    report.lines.append("format: npz (zip of .npy arrays)")
    try:
        data = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{file} is not a readable .npz file: {_one_line(exc)}") from None
    with data:
        report.lines.append("arrays:" if data.files else "arrays: none")
        for name in data.files:
            try:
                value = data[name]
            except ValueError as exc:
                why = "object array, needs pickle (refused)" if "pickle" in str(exc) else f"damaged ({_one_line(exc)})"
                report.lines.append(f"  {name:<14s} {why}")
                continue
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
                report.lines.append(f"  {name:<14s} damaged ({_one_line(exc)})")
                continue
            report.lines.append(_describe(name, value) if isinstance(value, np.ndarray) else f"  {name:<14s} not an array")
    # The verdict is npz_file.read_arrays' (what fedgmi run reads), then the per-client rule of its load.
    arrays = npz_file.read_arrays(str(file))
    arrays["y"] = arrays["y"].astype(np.int64)
    arrays = _check_layout(arrays, {k: f"{file}: {k}" for k in LAYOUT})
    report.lines.append("user-data layout:")
    report.lines += [f"  {line}" for line in _summary(arrays)]
    report.verdict = "valid user-data file"


def _inspect_hdf5(file: Path, report: Report) -> None:
    report.lines.append("format: HDF5")
    try:
        handle = h5py.File(file, "r")
    except OSError as exc:
        raise UserError(f"{file}: not a readable HDF5 file ({_one_line(exc)})") from None
    with handle:
        datasets = _hdf5_datasets(handle)
        report.lines.append("datasets:" if datasets else "datasets: none")
        for name, ds in datasets:
            try:
                value = ds[()]
            except (OSError, TypeError, ValueError) as exc:
                report.lines.append(f"  {name:<14s} unreadable ({_one_line(exc)})")
                continue
            report.lines.append(_describe(name, np.asarray(value)))
    raw = _read_hdf5_source(file, {}, LAYOUT)
    had_client = "client" in raw.arrays
    arrays = _prepare(raw, None)
    report.lines.append("user-data layout:")
    report.lines += [f"  {line}" for line in _summary(arrays)]
    if not had_client:
        report.lines.append("  (no client dataset: convert makes one client, or N with --clients N)")
    report.verdict = (f"valid user-data file (HDF5: fedgmi data convert --hdf5 {file} --out OUT.npz writes the "
                      ".npz that fedgmi run reads)")


def examine(path: str | Path) -> Report:
    """What a file holds and whether it is valid; a missing file raises UserError, every other
    problem is the report's ``problem``."""
    file = _existing(path)
    head = _head(file)
    report = Report(path=str(path), format=_detect(file, head), lines=[f"file: {path} ({file.stat().st_size} bytes)"])
    try:
        if not head:
            raise UserError(f"{path}: empty file")
        if report.format == "idx":
            _inspect_idx(file, report)
        elif report.format == "npz":
            _inspect_npz(file, report)
        elif report.format == "hdf5":
            _inspect_hdf5(file, report)
        elif report.format == "npy":
            report.lines.append("format: npy (one array)")
            raise UserError(f"{path}: one .npy array; the user-data layout is a .npz of named arrays (docs/data.md)")
        else:
            raise UserError(f"{path}: unrecognised format (it starts with bytes {head.hex(' ')}); expected .npz (zip), "
                            "HDF5 or IDX (optionally gzipped)")
    except UserError as exc:
        report.problem = _one_line(exc)
    return report


def inspect(path: str | Path) -> str:
    """Readable text: the format, every array with shape, dtype and range, the user-data summary
    (clients, samples per client, classes, truth) and the verdict or the first problem found."""
    return examine(path).text
