import torch

from fedgmi_mpi.models.vae import MixtureVAE, ParamLayout, VAEShape


def _model():
    shape = VAEShape(num_components=3, input_dim=16, num_classes=4, hidden=24, latent=3)
    return MixtureVAE(shape, generator=torch.Generator().manual_seed(0))


def test_importance_weighted_bound_is_above_elbo_and_grows_with_samples():
    model = _model()
    x = torch.rand(64, 16, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x, gen)[0] for _ in range(200)]).mean(0)  # [K, B], expectation
        bounds = {s: torch.stack([model.iw_log_likelihood(x, s, gen)[0] for _ in range(20)]).mean(0) for s in (1, 8, 64)}
    # S=1 is the ELBO estimator itself.
    assert torch.allclose(bounds[1].mean(), elbo.mean(), atol=0.05 * elbo.abs().mean())
    assert bounds[8].mean() > elbo.mean()
    assert bounds[64].mean() > bounds[8].mean()
    assert (bounds[64] >= elbo - 0.05).float().mean() > 0.95  # per sample, up to Monte Carlo noise


def test_components_are_independent_and_layout_round_trips():
    model = _model()
    layout = ParamLayout(model)
    matrix = layout.to_matrix(model)
    assert matrix.shape == (3, layout.per_component)
    x = torch.rand(5, 16)
    before, _ = model.iw_log_likelihood(x, 4, torch.Generator().manual_seed(0))
    changed = matrix.clone()
    changed[1] += 0.5
    layout.load_matrix(model, changed)
    after, _ = model.iw_log_likelihood(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.equal(before[1], after[1])
    assert torch.equal(layout.to_matrix(model), changed)
