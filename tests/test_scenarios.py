"""Scenarios described in config: transforms, label groups, sources, synthetic densities, client sizes."""
import json
import math

import numpy as np
import pytest

from conftest import run_cli, small_args
from fedgmi_mpi import config as config_mod
from fedgmi_mpi import scenarios
from fedgmi_mpi.errors import UserError
from fedgmi_mpi.scenarios import mixture, synthetic
from fedgmi_mpi.scenarios.examples import write_digits28
from fedgmi_mpi.scenarios.rotated_digits import load_base_digits
from fedgmi_mpi.scenarios.transforms import apply_chain, parse_chain


def build(*sets: str):
    return scenarios.build(config_mod.load(None, list(sets)))


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


def test_transforms_do_what_they_say():
    images, labels = load_base_digits()
    x, y = images[:30].reshape(30, -1), labels[:30]
    rng = np.random.default_rng(0)

    def run(text):
        out, out_y = apply_chain(parse_chain(text, "test"), x, y, (8, 8), 10, rng)
        return out.reshape(30, 8, 8), out_y

    np.testing.assert_array_equal(run("rotate(90)")[0], np.rot90(images[:30], 1, axes=(1, 2)))  # as rotated_digits
    np.testing.assert_array_equal(run("flip(h)")[0], images[:30, :, ::-1])
    np.testing.assert_array_equal(run("flip(v)")[0], images[:30, ::-1, :])
    np.testing.assert_allclose(run("invert")[0], 1 - images[:30], atol=1e-7)
    shifted = run("shift(1,2)")[0]
    np.testing.assert_array_equal(shifted[:, 1:, 2:], images[:30, :-1, :-2])
    assert (shifted[:, 0, :] == 0).all() and (shifted[:, :, :2] == 0).all()
    noisy = run("noise(0.2)")[0]
    assert 0 <= noisy.min() and noisy.max() <= 1 and 0.05 < np.abs(noisy - images[:30]).mean() < 0.2
    blurred = run("blur(1.0)")[0]
    assert blurred.std() < images[:30].std() and abs(blurred.mean() - images[:30].mean()) < 0.02
    assert (run("relabel(1,2,3,4,5,6,7,8,9,0)")[1] == (y + 1) % 10).all()
    permuted = run("permute_labels(7)")[1]
    assert len(set(zip(y, permuted))) == len(set(y))  # a bijection on the labels present
    twice = run("flip(h)+flip(h)")[0]
    np.testing.assert_array_equal(twice, images[:30])


@pytest.mark.parametrize("components,fragment", [
    ("identity; spin(3)", "unknown transform 'spin(3)'"),
    ("rotate()", "rotate takes 1 argument"),
    ("flip(x)", "flip takes h or v"),
    ("noise(-1)", "noise needs a value >= 0"),
    ("shift(1)", "shift takes 2 argument"),
])
def test_bad_transforms_exit_2(tmp_path, components, fragment):
    result = run_cli(["run", "--set", "scenario.name=transforms", "--set", f"scenario.components={components}",
                      "--out", str(tmp_path / "x.h5")])
    _one_line_error(result, fragment)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("sets,fragment", [
    (["scenario.name=transforms", "scenario.components=identity; invert"], "set scenario.num_components=2"),
    (["scenario.name=label_groups", "scenario.components=0,1; 2,12", "scenario.num_components=2"], "classes must lie in 0..9"),
    (["scenario.name=label_groups", "scenario.components=a,b", "scenario.num_components=1"], "expected class numbers"),
    (["scenario.name=transforms"], "scenario.components must describe the components"),
    (["scenario.sizes=normal"], "scenario.sizes must be uniform, fixed or lognormal"),
    (["scenario.name=synthetic", "scenario.synthetic_modes=1"], "synthetic_modes >= 2"),
    (["scenario.proportions_path=/nonexistent.npy"], "file not found"),
])
def test_bad_scenarios_exit_2(tmp_path, sets, fragment):
    if "proportions_path" in sets[0]:
        sets = ["scenario.name=transforms", "scenario.components=identity; invert", "scenario.num_components=2", *sets]
    args = ["run", "--out", str(tmp_path / "x.h5")] + [a for s in sets for a in ("--set", s)]
    _one_line_error(run_cli(args), fragment)


def test_label_groups_hold_their_classes_only():
    scenario = build("scenario.name=label_groups", "scenario.components=0,1,2,3; 4,5,6; 7,8,9", "scenario.num_components=3")
    groups = [{0, 1, 2, 3}, {4, 5, 6}, {7, 8, 9}]
    for client in scenario.clients:
        for z, label in zip(client.true_components_train, client.y_train):
            assert label in groups[z]
        for z, label in zip(client.true_components_test, client.y_test):
            assert label in groups[z]
    assert scenario.num_classes == 10 and scenario.num_components == 3


def test_components_of_a_transform_scenario_are_transforms_of_the_base():
    scenario = build("scenario.name=transforms", "scenario.components=identity; flip(h)", "scenario.num_components=2",
                     "scenario.num_clients=4", "scenario.unseen_clients=0")
    images, _ = load_base_digits()
    base = {img.tobytes() for img in images.reshape(len(images), -1)}
    for client in scenario.clients:
        for z, sample in zip(client.true_components_train, client.x_train):
            original = sample if z == 0 else sample.reshape(8, 8)[:, ::-1].reshape(-1)
            assert np.ascontiguousarray(original).tobytes() in base
        # distinct base images within a client, across its components
        unflipped = [s if z == 0 else s.reshape(8, 8)[:, ::-1].reshape(-1) for z, s in zip(client.true_components_train,
                                                                                        client.x_train)]
        assert len({np.ascontiguousarray(u).tobytes() for u in unflipped}) >= 0.95 * client.num_train


def test_train_and_test_pools_are_split_before_any_transform():
    data = mixture.load_base("digits")
    train, test = mixture._split(data, 0.2, np.random.default_rng(0))
    assert not set(train) & set(test) and len(train) + len(test) == len(data.x)


def test_client_sizes_and_given_proportions(tmp_path):
    fixed = build("scenario.name=transforms", "scenario.components=identity; invert", "scenario.num_components=2",
                  "scenario.sizes=fixed", "scenario.samples_per_client=37")
    assert {c.num_train for c in fixed.clients} == {37}
    lognormal = build("scenario.name=transforms", "scenario.components=identity; invert", "scenario.num_components=2",
                      "scenario.sizes=lognormal", "scenario.size_sigma=0.8", "scenario.num_clients=300",
                      "scenario.samples_per_client=60", "scenario.test_samples_per_client=2")
    sizes = np.array([c.num_train for c in lognormal.clients])
    assert abs(sizes.mean() - 60) < 8 and sizes.max() > 2.5 * np.median(sizes)  # heavy right tail
    proportions = np.tile([[0.25, 0.75]], (48, 1))
    proportions[5] = [1.0, 0.0]
    np.save(tmp_path / "p.npy", proportions)
    given = build("scenario.name=transforms", "scenario.components=identity; invert", "scenario.num_components=2",
                  f"scenario.proportions_path={tmp_path / 'p.npy'}")
    assert (given.clients[5].true_components_train == 0).all()
    np.testing.assert_array_equal(given.true_proportions(), proportions)
    np.savetxt(tmp_path / "bad.csv", proportions[:10], delimiter=",")
    with pytest.raises(UserError, match="expected shape"):
        build("scenario.name=transforms", "scenario.components=identity; invert", "scenario.num_components=2",
              f"scenario.proportions_path={tmp_path / 'bad.csv'}")


def test_a_clients_data_does_not_depend_on_the_others():
    few = build("scenario.name=label_groups", "scenario.components=0,1,2,3,4; 5,6,7,8,9", "scenario.num_components=2",
                "scenario.num_clients=4", "scenario.unseen_clients=0", "scenario.sizes=lognormal")
    many = build("scenario.name=label_groups", "scenario.components=0,1,2,3,4; 5,6,7,8,9", "scenario.num_components=2",
                 "scenario.num_clients=9", "scenario.unseen_clients=3", "scenario.sizes=lognormal")
    for a, b in zip(few.clients, many.clients):
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_test, b.y_test)


def test_synthetic_densities_are_exact():
    from scipy.stats import multivariate_normal

    scenario = build("scenario.name=synthetic", "scenario.num_components=3", "scenario.synthetic_dim=5",
                     "scenario.num_clients=3", "scenario.unseen_clients=1", "model.likelihood=gaussian")
    s = config_mod.load(None, ["scenario.name=synthetic", "scenario.num_components=3", "scenario.synthetic_dim=5",
                               "model.likelihood=gaussian"]).scenario
    means, scales = synthetic.mixture_parameters(s, 0)
    client = scenario.clients[1]
    for i in range(5):
        for k in range(3):
            expected = math.log(np.mean([multivariate_normal(means[k, m], np.diag(scales[k, m] ** 2)).pdf(client.x_train[i])
                                         for m in range(3)]))
            assert client.exact_log_density_train[i, k] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    exact = scenario.exact_responsibilities()
    rows = ~np.isnan(exact[..., 0])
    np.testing.assert_allclose(exact[rows].sum(-1), 1.0)
    assert rows.sum() == sum(c.num_train for c in scenario.clients)
    assert set(np.unique(client.y_train)) <= {0, 1, 2} and scenario.num_classes == 3


@pytest.mark.parametrize("name", ["flips", "label_groups", "synthetic", "idx_28x28"])
def test_shipped_configs_run_under_mpiexec(tmp_path, name):
    """Every config in configs/ runs end to end on 3 ranks (shrunk to seconds; the IDX files are generated)."""
    import h5py

    from conftest import REPO, run_mpi

    extra = ["scenario.num_clients=6", "scenario.unseen_clients=2", "scenario.samples_per_client=30",
             "scenario.test_samples_per_client=8", "algorithm.rounds=3", "algorithm.warmup_rounds=1"]
    if name == "idx_28x28":
        images, labels = write_digits28(tmp_path / "idx")
        extra += [f"scenario.base=idx:{images},{labels}", "algorithm.eval_samples=2", "model.channels=4", "model.hidden=16"]
    result = run_mpi(3, ["run", str(REPO / "configs" / f"{name}.yaml"), "--quiet", "--out", str(tmp_path / "run.h5"),
                         *small_args(*extra)])
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "run.h5") as f:
        assert np.isfinite(f["evaluate/summary/proportion_mae"][-1]) and np.isfinite(f["evaluate/summary/accuracy"][-1])
        if name == "synthetic":
            assert np.isfinite(f["evaluate/summary/responsibility_mad"][-1]) and "exact_responsibilities" in f["truth"]
        if name == "idx_28x28":
            assert json.loads(f["model"].attrs["description"])["architecture"] == "conv"
