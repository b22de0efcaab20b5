"""The convolutional VAE (models/conv_vae.py), the Gaussian likelihood and the model seam (models/__init__.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from fedgmi_mpi import config as config_mod
from fedgmi_mpi import scenarios
from fedgmi_mpi.algorithms import build as build_algorithm
from fedgmi_mpi.algorithms import em
from fedgmi_mpi.errors import UserError
from fedgmi_mpi.models import build, from_description, vae

IMAGE = (12, 8)  # not square: rows and columns must not be mixed up
CHANNELS = 4


def _model(groups: int = 2, likelihood: str = "bernoulli", image=IMAGE):
    model = build("conv", likelihood, image[0] * image[1], 4, 3, 16, 3, channels=CHANNELS, image_shape=image)
    matrix = torch.stack([model.init_matrix(torch.Generator().manual_seed(g)) for g in range(groups)])
    if likelihood == "gaussian":  # a non-trivial variance per component and pixel
        params = model.layout.unflatten(matrix)
        params["out_logvar"].copy_(torch.randn(params["out_logvar"].shape, generator=torch.Generator().manual_seed(9)))
    return model, matrix


def _plain_encode(p, x, image):
    """One network, one (client, component): plain convolutions on [B, 1, H, W]."""
    h = F.relu(F.conv2d(x.reshape(len(x), 1, *image), p["conv1_w"], p["conv1_b"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, p["conv2_w"], p["conv2_b"], stride=2, padding=1))
    h = F.relu(h.flatten(1) @ p["enc_w"] + p["enc_b"])
    return h @ p["mu_w"] + p["mu_b"], (h @ p["logvar_w"] + p["logvar_b"]).clamp(-12.0, 8.0), h, h @ p["cls_w"] + p["cls_b"]


def _plain_decode(p, z, image):
    h = F.relu(z @ p["dec_w"] + p["dec_b"]).reshape(len(z), 2 * CHANNELS, image[0] // 4, image[1] // 4)
    h = F.relu(F.conv_transpose2d(h, p["deconv1_w"], p["deconv1_b"], stride=2, padding=1))
    return F.conv_transpose2d(h, p["deconv2_w"], p["deconv2_b"], stride=2, padding=1).flatten(1)


def test_the_grouped_networks_are_each_the_plain_network_with_its_own_parameters():
    model, matrix = _model(groups=3)
    params = model.layout.unflatten(matrix)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 5, model.input_dim, generator=gen)
    noise = torch.randn(3, 3, 5, 3, generator=gen)
    z = torch.randn(3, 2, 3, 5, 3, generator=gen)  # [G, S, K, B, Z]
    with torch.no_grad():
        mu, logvar, h = model.network.encode(params, x)
        logits = model.network.class_logits(params, h)
        decoded = model.network.decode(params, z)
        elbo, _ = model.elbo(params, x, noise)
    assert decoded.shape == (3, 2, 3, 5, model.input_dim)
    for g in range(3):
        for k in range(3):
            p = {name: value[g, k] for name, value in params.items()}
            mu_, logvar_, h_, logits_ = _plain_encode(p, x[g], IMAGE)
            for ours, plain in ((mu, mu_), (logvar, logvar_), (h, h_), (logits, logits_)):
                assert torch.allclose(ours[g, k], plain, atol=1e-5)
            for s in range(2):
                assert torch.allclose(decoded[g, s, k], _plain_decode(p, z[g, s, k], IMAGE), atol=1e-5)
            z_ = mu_ + noise[g, k] * torch.exp(0.5 * logvar_)
            rec = -F.binary_cross_entropy_with_logits(_plain_decode(p, z_, IMAGE), x[g], reduction="none").sum(-1)
            kl = 0.5 * (mu_.pow(2) + logvar_.exp() - 1.0 - logvar_).sum(-1)
            assert torch.allclose(elbo[g, k], rec - kl, atol=1e-4)


def test_layout_round_trips_and_initialises_like_pytorch():
    model, matrix = _model(groups=1)
    layout = model.layout
    assert layout.per_component == matrix.shape[-1] == sum(layout.sizes)
    params = layout.unflatten(matrix)
    assert torch.equal(layout.flatten(params), matrix)
    for name, shape, fan_in in zip(layout.names, layout.shapes, layout.fan_in):
        assert params[name].shape == (1, 3, *shape)
        bound = 1 / np.sqrt(fan_in)
        assert params[name].abs().max() <= bound, name
        if params[name].numel() >= 30:  # enough draws to come near the bound
            assert params[name].abs().max() > 0.5 * bound, name
    # each component its own draw, and the same generator gives the same model
    assert not torch.equal(params["conv1_w"][0, 0], params["conv1_w"][0, 1])
    assert torch.equal(model.init_matrix(torch.Generator().manual_seed(0)), matrix[0])


def test_importance_weighted_bound_is_above_the_elbo_on_average():
    model, matrix = _model(groups=1)
    params = model.layout.unflatten(matrix)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 32, model.input_dim, generator=gen)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(params, x, torch.randn(1, 3, 32, 3, generator=gen))[0] for _ in range(20)]).mean(0)
        iw = torch.stack([model.iw_log_likelihood(params, x, torch.randn(1, 16, 3, 32, 3, generator=gen))[0]
                          for _ in range(5)]).mean(0)
    assert iw.shape == elbo.shape == (1, 3, 32)
    assert iw.mean() > elbo.mean()
    assert (iw >= elbo - 0.5).float().mean() > 0.95


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_reach_every_tensor(likelihood):
    model, matrix = _model(groups=2, likelihood=likelihood)
    matrix = matrix.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 6, model.input_dim, generator=gen)
    elbo, logits = model.elbo(model.layout.unflatten(matrix), x, torch.randn(2, 3, 6, 3, generator=gen))
    loss = -elbo.mean() + F.cross_entropy(logits.reshape(-1, 4), torch.randint(0, 4, (2 * 3 * 6,), generator=gen))
    (grad,) = torch.autograd.grad(loss, matrix)
    assert torch.isfinite(grad).all()
    for name, value in model.layout.unflatten(grad).items():
        for g in range(2):
            for k in range(3):
                assert value[g, k].abs().sum() > 0, (name, g, k)


def test_a_clients_conv_numbers_do_not_depend_on_its_group():
    model, matrix = _model(groups=4)
    gen = torch.Generator().manual_seed(5)
    counts = torch.tensor([12, 7, 10, 12])
    x = torch.rand(4, 12, model.input_dim, generator=gen)
    y = torch.randint(0, 4, (4, 12), generator=gen)
    mask = torch.arange(12)[None] < counts[:, None]
    weights = torch.softmax(torch.randn(4, 12, 3, generator=gen), 2) * mask.unsqueeze(2)
    noise = torch.randn(4, 5, 3, 12, 3, generator=gen)
    together, _ = model.iw_log_likelihood(model.layout.unflatten(matrix), x, noise)

    def train(ids):
        generators = [torch.Generator().manual_seed(100 + i) for i in ids]
        with model.training_numerics():
            return em.local_m_step(model.layout, matrix[0], x[ids], y[ids], counts[ids], weights[ids], 1, 4, 3e-3,
                                   1.0, generators, elbo_fn=model.elbo)

    trained = train([0, 1, 2, 3])
    for g in range(4):
        alone, _ = model.iw_log_likelihood(model.layout.unflatten(matrix[g:g + 1]), x[g:g + 1], noise[g:g + 1])
        assert torch.equal(alone[0], together[g])
        assert torch.equal(train([g])[0], trained[g])
    # oneDNN's threaded kernels split by batch size: with 8 or more threads a client's bits
    # depended on its group (seen on this 2-core box and a 16-core Xeon) until training turned it off
    threads = torch.get_num_threads()
    try:
        for count in (4, 16):
            torch.set_num_threads(count)
            assert all(torch.equal(train([g])[0], trained[g]) for g in range(4)), count
            assert torch.equal(train([0, 1, 2, 3]), trained), count
    finally:
        torch.set_num_threads(threads)


def test_gaussian_likelihood_is_the_normal_log_density_summed_over_features():
    gen = torch.Generator().manual_seed(6)
    params = {"out_logvar": 4 * torch.randn(2, 3, 1, 10, generator=gen)}  # [G, K, 1, D], some beyond the bound
    x = 3 * torch.randn(2, 5, 10, generator=gen)  # real-valued, far outside [0, 1]
    mean = torch.randn(2, 4, 3, 5, 10, generator=gen)  # [G, S, K, B, D]
    logvar = vae.output_logvar(params)
    assert logvar.abs().max() < vae.LOGVAR_BOUND
    small = params["out_logvar"].abs() < 0.5
    assert torch.allclose(logvar[small], params["out_logvar"][small], atol=1e-3)  # about the identity near 0
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * logvar).unsqueeze(1)).log_prob(x[:, None, None]).sum(-1)
    assert torch.allclose(vae.log_likelihood(params, x, mean), expected, atol=1e-4)
    assert torch.equal(vae.log_likelihood({}, x.clamp(0, 1), mean), vae.log_bernoulli(x.clamp(0, 1), mean))


def test_the_gaussian_mlp_appends_its_variance_and_leaves_the_bernoulli_layout_alone():
    bernoulli = build("mlp", "bernoulli", 16, 4, 3, 24, 3)
    gaussian = build("mlp", "gaussian", 16, 4, 3, 24, 3)
    assert gaussian.layout.names == [*bernoulli.layout.names, "out_logvar"]
    assert gaussian.layout.per_component == bernoulli.layout.per_component + 16
    b = bernoulli.init_matrix(torch.Generator().manual_seed(0))
    g = gaussian.init_matrix(torch.Generator().manual_seed(0))
    assert torch.equal(b, vae.init_matrix(vae.VAEShape(3, 16, 4, 24, 3), torch.Generator().manual_seed(0)))
    assert torch.equal(g[:, : b.shape[1]], b) and not g[:, b.shape[1]:].any()


def test_model_choice_from_config_scenario_and_old_descriptions():
    config = config_mod.load(None, ["model.architecture=conv", "model.channels=4", "scenario.num_clients=2",
                                    "scenario.unseen_clients=0", "scenario.samples_per_client=5"])
    algorithm = build_algorithm(config, scenarios.build(config), torch.device("cpu"))
    assert algorithm.model.architecture == "conv" and algorithm.model.image_shape == (8, 8)  # the digits' metadata
    description = algorithm.model_description()
    assert description["architecture"] == "conv" and description["image_shape"] == [8, 8]
    assert description["channels"] == 4 and description["likelihood"] == "bernoulli"
    assert from_description(description).layout.names == algorithm.layout.names
    old = {"input_dim": 64, "num_classes": 10, "num_components": 4, "hidden": 32, "latent": 8}
    model = from_description(old)
    assert (model.architecture, model.likelihood) == ("mlp", "bernoulli")
    with pytest.raises(UserError, match="divisible by 4"):
        build("conv", "bernoulli", 49, 10, 2, 8, 2)
    with pytest.raises(UserError, match="not a square number"):
        build("conv", "bernoulli", 50, 10, 2, 8, 2)
    with pytest.raises(UserError):
        config_mod.load(None, ["model.architecture=resnet"])
    with pytest.raises(UserError):
        config_mod.load(None, ["model.likelihood=poisson"])


def _write_npz(path, side: int, clients: int = 6, per_client: int = 30, real_valued: bool = False, features=None):
    """Two inherent distributions: images with a bright horizontal band or a vertical one."""
    rng = np.random.default_rng(0)
    n = clients * per_client
    component = rng.integers(0, 2, n)
    d = features or side * side
    x = rng.uniform(0, 0.3, (n, d))
    if features is None:
        images = x.reshape(n, side, side)
        for i in range(n):
            start = rng.integers(0, side - 3)
            if component[i]:
                images[i, :, start:start + 3] += 0.6
            else:
                images[i, start:start + 3, :] += 0.6
        x = images.reshape(n, d)
    if real_valued:
        x = rng.normal(0, 1, (n, d)) + 3.0 * component[:, None] * np.linspace(-1, 1, d)[None]
    np.savez(path, x=x.astype(np.float32), y=(component + rng.integers(0, 2, n)) % 3,
             client=np.repeat(np.arange(clients), per_client), component=component)
    return path


TINY = ["algorithm.rounds=2", "algorithm.warmup_rounds=1", "algorithm.codebook_size=4", "algorithm.codebook_lloyd_iterations=2",
        "algorithm.topic_restarts=2", "algorithm.topic_iterations=5", "algorithm.eval_every=0", "algorithm.estep_samples=2",
        "algorithm.eval_samples=4", "algorithm.test_samples=2", "algorithm.local_epochs=1", "model.hidden=16",
        "model.latent=4", "scenario.num_components=2", "scenario.unseen_clients=1"]


def _args(data, *extra):
    out = []
    for item in [*TINY, "scenario.name=npz", f"scenario.path={data}", *extra]:
        out += ["--set", item]
    return out


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


def test_a_conv_fedgmi_run_on_28x28_images_end_to_end(tmp_path):
    import h5py

    from fedgmi_mpi.analysis.model import read_model

    data = _write_npz(tmp_path / "images.npz", 28)
    log = tmp_path / "conv.h5"
    done = run_cli(["run", "--quiet", "--out", str(log), *_args(data, "model.architecture=conv", "model.channels=4")],
                   timeout=120)
    assert done.returncode == 0, done.stderr
    with h5py.File(log) as f:
        assert np.isfinite(f["evaluate/proportions"][()]).all()
    model = read_model(log)
    params, density = model.vae()
    assert density.architecture == "conv" and density.image_shape == (28, 28) and params["conv1_w"].shape == (1, 2, 4, 1, 4, 4)
    images = model.sample_images(per_component=3)
    assert images.shape == (2, 3, 784) and images.min() >= 0 and images.max() <= 1
    inferred = run_cli(["infer", "--log", str(log), "--data", str(data), "--clients", "5", "--draws", "200"])
    assert inferred.returncode == 0, inferred.stderr


def test_a_gaussian_run_on_real_valued_features(tmp_path):
    data = _write_npz(tmp_path / "real.npz", 0, real_valued=True, features=12)
    log = tmp_path / "gaussian.h5"
    done = run_cli(["run", "--quiet", "--out", str(log), *_args(data, "model.likelihood=gaussian")], timeout=120)
    assert done.returncode == 0, done.stderr
    from fedgmi_mpi.analysis.model import read_model

    model = read_model(log)
    params, density = model.vae()
    assert density.likelihood == "gaussian" and params["out_logvar"].shape == (1, 2, 1, 12)
    assert model.sample_images(per_component=2).shape == (2, 2, 12)
    # the Bernoulli likelihood refuses features outside [0, 1]
    _one_line_error(run_cli(["run", "--quiet", "--out", str(tmp_path / "b.h5"), *_args(data)]), "model.likelihood=gaussian")


def test_conv_on_inputs_it_cannot_take_is_a_one_line_error(tmp_path):
    small = _write_npz(tmp_path / "seven.npz", 7)
    _one_line_error(run_cli(["run", "--quiet", "--out", str(tmp_path / "a.h5"), *_args(small, "model.architecture=conv")]),
                    "divisible by 4")
    odd = _write_npz(tmp_path / "odd.npz", 0, features=50)
    _one_line_error(run_cli(["run", "--quiet", "--out", str(tmp_path / "b.h5"), *_args(odd, "model.architecture=conv")]),
                    "not a square number")
