"""Scenarios described in config: K inherent distributions made from data sets, clients mixing them.

Three ways to say what the inherent distributions are (``scenario.name``):

* ``transforms``: one base data set (``scenario.base``) under K transform chains
  (``scenario.components = "identity; flip(h); invert"``, see transforms.py);
* ``label_groups``: one base data set split by class, component k = a set of classes
  (``scenario.components = "0,1,2,3; 4,5,6; 7,8,9"``, FedEM's setting);
* ``sources``: one file per component, each optionally under a transform chain
  (``scenario.components = "idx:mnist-img.gz,mnist-lbl.gz; npz:fashion.npz | rotate(90)"``).

Clients: proportions from Dirichlet(``dirichlet_alpha``) or a file (``proportions_path``), sizes
``uniform`` / ``fixed`` / ``lognormal``, ``unseen_clients`` extra clients that never train. Every
base pool is split into train and test samples *before* any transform, so no test sample is a
transformed copy of a training one; everything a client holds is drawn from its own stream.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import rng as rngs
from ..config import ScenarioConfig
from ..errors import UserError
from .base import ClientData, Scenario
from .transforms import Transform, apply_chain, describe, needs_images, parse_chain, parse_components


@dataclass
class Data:
    x: np.ndarray  # [N, D] float32 in [0, 1]
    y: np.ndarray  # [N] int64
    image_shape: tuple[int, int] | None
    description: str


@dataclass
class Pool:
    """One component's base samples, split into train and test before any transform."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    chain: tuple[Transform, ...]
    image_shape: tuple[int, int] | None


def load_base(spec: str) -> Data:
    """``digits`` (scikit-learn's bundled 8x8 digits) or a file spec (idx:, npz:, hdf5:)."""
    if spec in ("digits", ""):
        from .rotated_digits import load_base_digits

        images, labels = load_base_digits()
        return Data(images.reshape(len(images), -1), labels, (8, 8), "load_digits")
    from ..data.readers import load_source

    source = load_source(spec)
    return Data(source.x.astype(np.float32), source.y.astype(np.int64), source.image_shape, source.description)


def _split(data: Data, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(data.x))
    n_test = int(round(test_fraction * len(order)))
    if n_test < 1 or n_test >= len(order):
        raise UserError(f"{data.description}: {len(order)} samples cannot be split into train and test "
                        f"with scenario.test_fraction={test_fraction}")
    return order[n_test:], order[:n_test]


def _pools(s: ScenarioConfig, seed: int) -> tuple[list[Pool], int, str, bool]:
    """The K pools, the number of classes, a description, and whether the pools share one base
    (then a client draws distinct base samples across its components)."""
    split_rng = rngs.numpy_rng(seed, rngs.SCENARIO, 2**31 - 1)
    if s.name == "sources":
        pools, names = [], []
        for k, item in enumerate(part.strip() for part in s.components.split(";") if part.strip()):
            spec, _, chain_text = item.partition("|")
            chain = parse_chain(chain_text, f"scenario.components (component {k})") if chain_text.strip() else ()
            data = load_base(spec.strip())
            if needs_images([chain]) and data.image_shape is None:
                raise UserError(f"scenario.components (component {k}): rotate, flip, blur and shift need images, and "
                                f"{data.description} has flat features")
            train, test = _split(data, s.test_fraction, split_rng)
            pools.append(Pool((data.x[train], data.y[train]), (data.x[test], data.y[test]), chain, data.image_shape))
            names.append(data.description + (f" | {describe(chain)}" if chain else ""))
        if not pools:
            raise UserError("scenario.components is empty: list one file spec per component, separated by ';'")
        dims = {p.train[0].shape[1] for p in pools}
        if len(dims) > 1:
            raise UserError(f"scenario.components: the sources have different numbers of features {sorted(dims)}")
        classes = int(max(p.train[1].max(initial=0) for p in pools)) + 1
        return pools, classes, "sources: " + "; ".join(names), False
    data = load_base(s.base)
    train, test = _split(data, s.test_fraction, split_rng)
    classes = int(data.y.max()) + 1
    if s.name == "transforms":
        chains = parse_components(s.components)
        if needs_images(chains) and data.image_shape is None:
            raise UserError(f"scenario.components: rotate, flip, blur and shift need images, and {data.description} "
                            "has flat features (give x as [N, H, W] or an IDX image file)")
        pools = [Pool((data.x[train], data.y[train]), (data.x[test], data.y[test]), chain, data.image_shape)
                 for chain in chains]
        return pools, classes, f"{data.description} under " + "; ".join(describe(c) for c in chains), True
    groups = []
    for k, part in enumerate(p for p in (q.strip() for q in s.components.split(";")) if p):
        try:
            groups.append(sorted({int(v) for v in part.split(",") if v.strip()}))
        except ValueError:
            raise UserError(f"scenario.components (component {k}): expected class numbers like 0,1,2, got {part!r}") from None
    if not groups:
        raise UserError("scenario.components is empty: list the classes of each component, e.g. 0,1,2; 3,4,5")
    pools = []
    for k, group in enumerate(groups):
        if not group or min(group) < 0 or max(group) >= classes:
            raise UserError(f"scenario.components (component {k}): classes must lie in 0..{classes - 1}, got {group}")
        pick_train = train[np.isin(data.y[train], group)]
        pick_test = test[np.isin(data.y[test], group)]
        if not len(pick_train) or not len(pick_test):
            raise UserError(f"scenario.components (component {k}): no samples of classes {group} in {data.description}")
        pools.append(Pool((data.x[pick_train], data.y[pick_train]), (data.x[pick_test], data.y[pick_test]), (),
                          data.image_shape))
    return pools, classes, f"{data.description} split by class into " + "; ".join(
        "{" + ",".join(map(str, g)) + "}" for g in groups), False


def read_proportions(path: str, clients: int, k: int) -> np.ndarray:
    """[clients, K] rows on the simplex from a .npy or .csv file (never pickled)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"scenario.proportions_path: file not found: {path}")
    if file.suffix not in (".npy", ".csv"):
        raise UserError(f"scenario.proportions_path: expected a .npy or .csv file, got {path}")
    try:
        values = np.loadtxt(file, delimiter=",", ndmin=2) if file.suffix == ".csv" else np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"scenario.proportions_path: {path} cannot be read as {file.suffix or 'npy'}: {exc}") from None
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (clients, k):
        raise UserError(f"scenario.proportions_path: expected shape ({clients}, {k}) (all clients, seen then unseen, "
                        f"x components), got {values.shape}")
    if not np.all(np.isfinite(values)) or values.min() < 0 or np.any(np.abs(values.sum(1) - 1) > 1e-6):
        raise UserError("scenario.proportions_path: every row must be non-negative and sum to 1")
    return values / values.sum(1, keepdims=True)


def client_size(s: ScenarioConfig, rng: np.random.Generator) -> int:
    """Training samples of one client: fixed, uniform in m * (1 ± size_spread), or lognormal with mean m."""
    m = s.samples_per_client
    if s.sizes == "fixed":
        return m
    if s.sizes == "lognormal":
        return max(2, int(round(rng.lognormal(np.log(m) - s.size_sigma**2 / 2, s.size_sigma))))
    lo = max(1, int(round(m * (1 - s.size_spread))))
    hi = max(lo, int(round(m * (1 + s.size_spread))))
    return int(rng.integers(lo, hi + 1))


def _draw(pools: list[Pool], part: str, z: np.ndarray, shared: bool, classes: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Samples for the components z [n]: base samples without replacement within the client (as
    long as the pool allows), each component's under its transform chain."""
    n = len(z)
    dim = pools[0].train[0].shape[1]
    x, y = np.zeros((n, dim), np.float32), np.zeros(n, np.int64)
    if shared:  # one base pool: distinct base samples across the client's components
        base_x, base_y = getattr(pools[0], part)
        picked = rng.choice(len(base_x), size=n, replace=n > len(base_x))
    for k, pool in enumerate(pools):
        where = np.flatnonzero(z == k)
        if not len(where):
            continue
        base_x, base_y = getattr(pool, part)
        index = picked[where] if shared else rng.choice(len(base_x), size=len(where), replace=len(where) > len(base_x))
        x[where], y[where] = apply_chain(pool.chain, base_x[index], base_y[index], pool.image_shape, classes, rng)
    return x, y


def draw_clients(s: ScenarioConfig, seed: int, k: int,
                 samples: Callable[[np.random.Generator, np.ndarray, str], tuple[np.ndarray, np.ndarray]]
                 ) -> tuple[list[ClientData], str]:
    """Every client from its own stream: proportions (Dirichlet, or the file's row), size, each
    sample's component, then ``samples(rng, components, "train" | "test")``. Also says how the
    clients mix."""
    total = s.num_clients + s.unseen_clients
    given = read_proportions(s.proportions_path, total, k) if s.proportions_path else None
    clients = []
    for cid in range(total):
        rng = rngs.numpy_rng(seed, rngs.SCENARIO, cid)
        proportions = given[cid] if given is not None else rng.dirichlet(np.full(k, s.dirichlet_alpha))
        n_train = client_size(s, rng)
        z_train = rng.choice(k, size=n_train, p=proportions)
        z_test = rng.choice(k, size=s.test_samples_per_client, p=proportions)
        x_train, y_train = samples(rng, z_train, "train")
        x_test, y_test = samples(rng, z_test, "test")
        clients.append(ClientData(cid, x_train, y_train, x_test, y_test, seen=cid < s.num_clients,
                                  true_components_train=z_train.astype(np.int64),
                                  true_components_test=z_test.astype(np.int64), true_proportions=proportions))
    mixing = f"proportions from {s.proportions_path}" if given is not None else f"Dirichlet({s.dirichlet_alpha}) mixtures"
    return clients, mixing


def build(s: ScenarioConfig, seed: int) -> Scenario:
    pools, classes, description, shared = _pools(s, seed)
    k = len(pools)
    if k != s.num_components:
        raise UserError(f"scenario.components lists {k} components but scenario.num_components={s.num_components}; "
                        f"set scenario.num_components={k}")
    clients, mixing = draw_clients(s, seed, k, lambda rng, z, part: _draw(pools, part, z, shared, classes, rng))
    return Scenario(name=s.name, clients=clients, num_components=k, num_classes=classes,
                    input_dim=pools[0].train[0].shape[1], description=f"{description}, {mixing}",
                    metadata={"image_shape": pools[0].image_shape} if pools[0].image_shape else {})
