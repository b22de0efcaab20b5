import torch

from fedgmi_mpi.models import vae


def _model(groups: int = 1):
    shape = vae.VAEShape(num_components=3, input_dim=16, num_classes=4, hidden=24, latent=3)
    layout = vae.ParamLayout(shape)
    matrix = vae.init_matrix(shape, torch.Generator().manual_seed(0))
    return layout, matrix, layout.unflatten(matrix.expand(groups, *matrix.shape))


def _noise(gen, *shape):
    return torch.randn(shape, generator=gen)


def test_importance_weighted_bound_is_above_elbo_and_grows_with_samples():
    _, _, params = _model()
    x = torch.rand(1, 64, 16, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(params, x, _noise(gen, 1, 3, 64, 3))[0] for _ in range(200)]).mean(0)  # [1, K, B]
        bounds = {s: torch.stack([vae.iw_log_likelihood(params, x, _noise(gen, 1, s, 3, 64, 3))[0]
                                  for _ in range(20)]).mean(0) for s in (1, 8, 64)}
    # S=1 is the ELBO estimator itself.
    assert torch.allclose(bounds[1].mean(), elbo.mean(), atol=0.05 * elbo.abs().mean())
    assert bounds[8].mean() > elbo.mean()
    assert bounds[64].mean() > bounds[8].mean()
    assert (bounds[64] >= elbo - 0.05).float().mean() > 0.95  # per sample, up to Monte Carlo noise


def test_components_and_clients_are_independent_and_layout_round_trips():
    layout, matrix, _ = _model()
    assert matrix.shape == (3, layout.per_component)
    stacked = matrix.expand(2, *matrix.shape).clone()
    x = torch.rand(2, 5, 16)
    noise = torch.randn(2, 4, 3, 5, 3)
    before, _ = vae.iw_log_likelihood(layout.unflatten(stacked), x, noise)
    stacked[1, 1] += 0.5  # client 1's component 1 only
    after, _ = vae.iw_log_likelihood(layout.unflatten(stacked), x, noise)
    assert torch.equal(before[0], after[0])  # the other client is untouched
    assert torch.equal(before[1, 0], after[1, 0]) and torch.equal(before[1, 2], after[1, 2])
    assert not torch.equal(before[1, 1], after[1, 1])
    assert torch.equal(layout.flatten(layout.unflatten(stacked)), stacked)


def test_a_client_computes_the_same_alone_or_in_a_group():
    layout, matrix, params = _model(groups=5)
    x = torch.rand(5, 7, 16)
    noise = torch.randn(5, 6, 3, 7, 3)
    together, logits = vae.iw_log_likelihood(params, x, noise)
    for g in range(5):
        alone, alone_logits = vae.iw_log_likelihood(layout.unflatten(matrix[None]), x[g:g + 1], noise[g:g + 1])
        assert torch.equal(alone[0], together[g]) and torch.equal(alone_logits[0], logits[g])


def test_the_differentiable_importance_weighted_bound_is_the_e_steps_and_trains_every_tensor():
    layout, matrix, _ = _model()
    x = torch.rand(1, 20, 16, generator=torch.Generator().manual_seed(3))
    noise = _noise(torch.Generator().manual_seed(4), 1, 5, 3, 20, 3)
    leaf = matrix.clone().requires_grad_(True)
    params = layout.unflatten(leaf.unsqueeze(0))
    bound, logits = vae.iw_bound_of(vae.encode, vae.decode, params, x, noise)
    expected, expected_logits = vae.iw_log_likelihood(params, x, noise, chunk=2)  # chunked, no gradient
    assert torch.allclose(bound, expected, atol=1e-5) and torch.equal(logits.detach(), expected_logits)
    (grad,) = torch.autograd.grad(bound.sum(), leaf)
    assert torch.isfinite(grad).all()
    untouched = [name for name, g in layout.unflatten(grad.unsqueeze(0)).items() if not g.abs().sum() > 0]
    assert untouched == ["cls_w", "cls_b"]  # the bound trains encoder and decoder; the head has its own loss
