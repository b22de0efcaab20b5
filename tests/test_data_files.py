"""Users' data files: IDX and HDF5 readers, load_source specs, `fedgmi data inspect` and `convert`."""
from __future__ import annotations

import gzip
import hashlib
import struct

import h5py
import numpy as np
import pytest

from fedgmi_mpi.data import convert, inspect, load_source, read_hdf5, read_idx
from fedgmi_mpi.errors import UserError
from fedgmi_mpi.scenarios.npz_file import read_arrays

from conftest import run_cli, small_args

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
             np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def idx_pair(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60).astype(np.uint8)
    images_path, labels_path = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte.gz"
    images_path.write_bytes(idx_bytes(images))
    labels_path.write_bytes(gzip.compress(idx_bytes(labels)))
    return images, labels, images_path, labels_path


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip_exact(tmp_path, dtype):
    array = (np.random.default_rng(1).normal(size=(3, 5, 7)) * 50).astype(dtype)
    plain, zipped = tmp_path / "a.idx", tmp_path / "b.bin"  # gzip is told by its magic bytes, not the name
    plain.write_bytes(idx_bytes(array))
    zipped.write_bytes(gzip.compress(idx_bytes(array)))
    for path in (plain, zipped):
        back = read_idx(path)
        assert back.dtype == array.dtype and back.dtype.isnative and back.shape == array.shape
        assert np.array_equal(back, array)


def test_load_source_scales_and_keeps_image_shape(tmp_path, idx_pair):
    images, labels, images_path, labels_path = idx_pair
    source = load_source(f"idx:{images_path},{labels_path}")
    assert source.x.dtype == np.float32 and source.x.shape == (60, 784) and source.y.dtype == np.int64
    assert source.image_shape == (28, 28) and 0 <= source.x.min() and source.x.max() <= 1
    np.testing.assert_allclose(source.x, images.reshape(60, -1) / 255, rtol=1e-6)
    assert np.array_equal(source.y, labels) and source.num_classes == int(labels.max()) + 1

    h5 = tmp_path / "images.h5"
    with h5py.File(h5, "w") as f:
        f["train/images"], f["train/labels"] = images, labels
        f["flat"] = images.reshape(60, -1).astype(np.float64) / 255
    named = load_source(f"hdf5:{h5}:x=train/images,y=train/labels")
    assert named.image_shape == (28, 28) and np.array_equal(named.x, source.x) and np.array_equal(named.y, source.y)
    flat = load_source(f"hdf5:{h5}:x=flat,y=train/labels")
    assert flat.image_shape is None and np.allclose(flat.x, source.x)
    assert read_hdf5(h5, x="train/images", y="train/labels").keys() == {"x", "y"}

    npz = tmp_path / "plain.npz"
    np.savez(npz, x=images.reshape(60, -1).astype(np.float32) / 255, y=labels.astype(np.int64))
    assert load_source(f"npz:{npz}").image_shape is None

    with pytest.raises(UserError, match="valid forms: idx:IMAGES,LABELS"):
        load_source(f"csv:{npz}")
    with pytest.raises(UserError, match="no dataset 'x' .*train/images"):
        load_source(f"hdf5:{h5}")
    with pytest.raises(UserError, match="floating-point x must already lie in"):
        np.savez(tmp_path / "big.npz", x=np.full((4, 3), 2.0), y=np.zeros(4, int))
        load_source(f"npz:{tmp_path / 'big.npz'}")
    with pytest.raises(UserError, match="integer x must be pixel values 0..255"):
        np.savez(tmp_path / "int.npz", x=np.full((4, 3), 300), y=np.zeros(4, int))
        load_source(f"npz:{tmp_path / 'int.npz'}")


def test_bad_files_are_one_line_errors(tmp_path, idx_pair):
    images, labels, images_path, labels_path = idx_pair
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes(idx_bytes(images)[:-10])
    _one_line_error(run_cli(["data", "inspect", str(truncated)]), "truncated")
    extra = tmp_path / "extra.idx.gz"
    extra.write_bytes(gzip.compress(idx_bytes(labels) + b"\0"))
    _one_line_error(run_cli(["data", "inspect", str(extra)]), "1 bytes beyond")
    bad_magic = tmp_path / "bad.idx"
    bad_magic.write_bytes(b"\x01\x02" + idx_bytes(images)[2:])
    _one_line_error(run_cli(["data", "inspect", str(bad_magic)]), "not an IDX file")
    short_labels = tmp_path / "short-labels.idx"
    short_labels.write_bytes(idx_bytes(labels[:59]))
    out = tmp_path / "out.npz"
    _one_line_error(run_cli(["data", "convert", "--images", str(images_path), "--labels", str(short_labels),
                             "--out", str(out)]), "59 labels for the 60 images")
    negative = tmp_path / "negative-labels.idx"
    # int8 first: NumPy >= 2.5 refuses -1 beside uint8 labels in np.where
    negative.write_bytes(idx_bytes(np.where(labels == 3, -1, labels.astype(np.int8))))
    _one_line_error(run_cli(["data", "inspect", str(negative)]), "negative class labels")

    nan = tmp_path / "nan.h5"
    x = np.random.default_rng(2).random((30, 16))
    x[4, 2] = np.nan
    with h5py.File(nan, "w") as f:
        f["x"], f["y"], f["client"] = x, np.zeros(30, np.int64), np.zeros(30, np.int64)
    _one_line_error(run_cli(["data", "inspect", str(nan)]), "NaN")
    _one_line_error(run_cli(["data", "convert", "--hdf5", str(nan), "--out", str(out)]), "NaN")

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=x[:3] * 0, y=np.array([object()] * 3, dtype=object), client=np.zeros(3, int))
    result = run_cli(["data", "inspect", str(pickled)])
    _one_line_error(result, "without pickle")
    assert "needs pickle (refused)" in result.stdout
    negative_npz = tmp_path / "negative.npz"
    np.savez(negative_npz, x=np.zeros((10, 4)), y=np.full(10, -2), client=np.zeros(10, int))
    _one_line_error(run_cli(["data", "inspect", str(negative_npz)]), "y must hold non-negative integers")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _one_line_error(run_cli(["data", "inspect", str(empty)]), "empty file")
    _one_line_error(run_cli(["data", "inspect", str(tmp_path / "missing.npz")]), "not found")
    _one_line_error(run_cli(["data", "convert", "--images", str(images_path), "--out", str(out)]), "--labels")
    assert not out.exists()


def test_inspect_exported_scenario_and_convert_idx(tmp_path, idx_pair):
    images, labels, images_path, labels_path = idx_pair
    exported = tmp_path / "digits.npz"
    assert run_cli(["export-scenario", *small_args(), "--out", str(exported)]).returncode == 0
    result = run_cli(["data", "inspect", str(exported)])
    assert result.returncode == 0, result.stderr
    assert "verdict: valid user-data file" in result.stdout
    assert "clients: 10 (samples per client: min" in result.stdout and "component" in result.stdout

    out = tmp_path / "mnist.npz"
    result = run_cli(["data", "convert", "--images", str(images_path), "--labels", str(labels_path), "--clients", "3",
                      "--out", str(out)])
    assert result.returncode == 0, result.stderr
    arrays = read_arrays(str(out))
    assert arrays["x"].shape == (60, 784) and arrays["x"].dtype == np.float32
    assert np.array_equal(arrays["y"], labels) and np.array_equal(np.bincount(arrays["client"]), [20, 20, 20])
    assert np.array_equal(arrays["client"], np.repeat([0, 1, 2], 20))  # contiguous, in file order
    assert "valid user-data file" in inspect(out)

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    _one_line_error(run_cli(["data", "convert", "--images", str(images_path), "--labels", str(labels_path),
                             "--out", str(out)]), "exists")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["digits.npz", "mnist.npz", images_path.name, labels_path.name])


def test_convert_hdf5_with_names_and_truth(tmp_path):
    rng = np.random.default_rng(3)
    n = 40
    h5 = tmp_path / "users.h5"
    with h5py.File(h5, "w") as f:
        f["pixels"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        f["labels"] = rng.integers(0, 4, n)
        f["who"] = np.repeat([0, 1], n // 2)
        f["component"] = rng.integers(0, 2, n)
        f["proportions"] = np.full((2, 2), 0.5)
    assert "problem:" in inspect(h5)  # default names: no dataset x
    out = tmp_path / "users.npz"
    summary = convert([h5], out, names={"x": "pixels", "y": "labels", "client": "who"})
    assert "clients: 2" in summary and "truth: component" in summary
    arrays = read_arrays(str(out), num_components=2)
    assert arrays["x"].shape == (n, 64) and set(arrays) == {"x", "y", "client", "component", "proportions"}
    with pytest.raises(UserError, match="assigns clients itself"):
        convert([h5], tmp_path / "again.npz", names={"x": "pixels", "y": "labels", "client": "who"}, clients=4)
    assert not (tmp_path / "again.npz").exists()
    with pytest.raises(UserError, match=r"proportions must be float \[clients=1, K\]"):  # no client dataset: one client
        convert([h5], tmp_path / "one.npz", names={"x": "pixels", "y": "labels"})
    _one_line_error(run_cli(["data", "convert", "--hdf5", str(h5), "--x", "pixels", "--y", "labels", "--client", "nope",
                             "--out", str(tmp_path / "c.npz")]), "no dataset 'nope' for client")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.h5", "users.npz"]
