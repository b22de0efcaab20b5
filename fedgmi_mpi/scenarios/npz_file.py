"""A user's own federated data set from one ``.npz`` file (loaded with allow_pickle=False).

Arrays (N samples):
  x          float [N, D]  features in [0, 1] (the Bernoulli likelihood needs that range; any finite
                           values with model.likelihood=gaussian)
  y          int   [N]     class labels 0..C-1
  client     int   [N]     client id 0..n-1 of each sample
  test       bool  [N]     optional: True marks a test sample; default: a seeded 20% per client
  component  int   [N]     optional, evaluation only: the true inherent distribution of each sample
  proportions float [n, K] optional, evaluation only: each client's true mixture proportions
The last ``scenario.unseen_clients`` client ids are unseen (they never train).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .. import rng as rngs
from ..errors import UserError
from .base import ClientData, Scenario


def _array(data, name: str, path: str, required: bool = True) -> np.ndarray | None:
    if name not in data.files:
        if required:
            raise UserError(f"{path}: missing array {name!r} (expected x, y, client; see docs/data.md)")
        return None
    try:
        return data[name]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise UserError(f"{path}: array {name!r} cannot be read without pickle ({exc})") from None


def read_arrays(path: str, required: tuple[str, ...] = ("x", "y", "client"),
                num_components: int | None = None, unit_range: bool = True) -> dict[str, np.ndarray]:
    """The file's arrays of the format above, checked (shapes, integer ids, x finite and, with
    ``unit_range``, in [0, 1]); an optional array that is absent is missing from the result. Bad
    files raise UserError."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"data file not found: {path}")
    if not zipfile.is_zipfile(file):  # np.load would take anything else for a pickle, and refuse it confusingly
        raise UserError(f"{path} is not a readable .npz file (not a zip archive: truncated, or another format?)")
    try:
        data = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable .npz file: {exc}") from None
    names = ("x", "y", "client", "test", "component", "proportions")
    with data:
        arrays = {name: _array(data, name, path, required=name in required) for name in names}
    arrays = {name: value for name, value in arrays.items() if value is not None}
    x = arrays["x"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise UserError(f"{path}: x must be a 2-D numeric array [samples, features], got shape {x.shape}")
    n = len(x)
    for name in ("y", "client", "test", "component"):
        if name in arrays and arrays[name].shape != (n,):
            raise UserError(f"{path}: {name} must have shape ({n},), got {arrays[name].shape}")
    for name in ("y", "client", "component"):
        arr = arrays.get(name)
        if arr is not None and (not np.issubdtype(arr.dtype, np.integer) or (n and arr.min() < 0)):
            raise UserError(f"{path}: {name} must hold non-negative integers")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{path}: x holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    if n and unit_range and (x.min() < 0 or x.max() > 1):
        raise UserError(f"{path}: x must be finite and scaled to [0, 1] (got range {x.min():g}..{x.max():g}; "
                        "real-valued features need model.likelihood=gaussian)")
    if not n:
        raise UserError(f"{path}: no samples")
    component = arrays.get("component")
    if component is not None and num_components is not None and component.max() >= num_components:
        raise UserError(f"{path}: component ids reach {component.max()} but scenario.num_components={num_components}")
    return arrays


def load(path: str, seed: int, num_components: int, unseen_clients: int, test_fraction: float = 0.2,
         unit_range: bool = True) -> Scenario:
    """``unit_range``: x must lie in [0, 1] (the Bernoulli likelihood; false for a Gaussian one)."""
    arrays = read_arrays(path, num_components=num_components, unit_range=unit_range)
    x, y, client = arrays["x"], arrays["y"], arrays["client"]
    test, component, proportions = arrays.get("test"), arrays.get("component"), arrays.get("proportions")
    file = Path(path)
    num_clients = int(client.max()) + 1
    if unseen_clients >= num_clients:
        raise UserError(f"scenario.unseen_clients={unseen_clients} leaves no client to train ({num_clients} in {path})")
    if proportions is not None and proportions.shape != (num_clients, num_components):
        raise UserError(f"{path}: proportions must have shape ({num_clients}, {num_components}), got {proportions.shape}")

    x = x.astype(np.float32)
    y = y.astype(np.int64)
    clients = []
    for cid in range(num_clients):
        idx = np.flatnonzero(client == cid)
        if test is not None:
            is_test = test[idx].astype(bool)
        else:
            is_test = np.zeros(len(idx), dtype=bool)
            n_test = int(round(test_fraction * len(idx)))
            is_test[rngs.numpy_rng(seed, rngs.SCENARIO, cid).permutation(len(idx))[:n_test]] = True
        train_idx, test_idx = idx[~is_test], idx[is_test]
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise UserError(f"{path}: client {cid} needs at least one training and one test sample")
        clients.append(ClientData(
            client_id=cid, x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx], y_test=y[test_idx],
            seen=cid < num_clients - unseen_clients,
            true_components_train=None if component is None else component[train_idx].astype(np.int64),
            true_components_test=None if component is None else component[test_idx].astype(np.int64),
            true_proportions=None if proportions is None else proportions[cid].astype(np.float64),
        ))
    return Scenario(name=f"npz:{file.name}", clients=clients, num_components=num_components,
                    num_classes=int(y.max()) + 1, input_dim=x.shape[1], description=f"user data from {path}")


def save(scenario: Scenario, path: str | Path) -> None:
    """Write a scenario in this format (how a user can see an example file)."""
    np.savez_compressed(path, **to_arrays(scenario))


def to_arrays(scenario: Scenario) -> dict[str, np.ndarray]:
    """A scenario as this format's arrays (what ``read_arrays`` gives back from a saved file)."""
    parts = {k: [] for k in ("x", "y", "client", "test", "component")}
    for c in scenario.clients:
        for xs, ys, zs, is_test in ((c.x_train, c.y_train, c.true_components_train, False),
                                    (c.x_test, c.y_test, c.true_components_test, True)):
            parts["x"].append(xs)
            parts["y"].append(ys)
            parts["client"].append(np.full(len(xs), c.client_id))
            parts["test"].append(np.full(len(xs), is_test))
            parts["component"].append(zs if zs is not None else np.full(len(xs), -1))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if (arrays["component"] < 0).any():
        del arrays["component"]
    proportions = scenario.true_proportions()
    if proportions is not None:
        arrays["proportions"] = proportions
    return arrays
