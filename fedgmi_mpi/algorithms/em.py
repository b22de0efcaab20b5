"""Mixture EM pieces shared by the algorithms: responsibilities, proportions, weighted M-step.

Pure torch, no MPI. Every function computes for a *group* of G clients at once: samples are
padded to the run's canonical sizes and ``mask`` [G, N] says which are real. Each client's numbers
depend only on its own inputs and its own generator, never on the other clients in the group
(per-client early stopping, per-client optimiser steps), so a group of one is the sequential path.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..models import vae

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def ordered_sum(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values.sum(dim)`` by pairwise halving (zero-padded to a power of two): elementwise adds
    whose order depends on the length along ``dim`` alone.

    For sums over a client's samples, where the number of sums (G x K) can be small: torch's CUDA
    reduction kernels choose how to split a sum from how many sums there are, so with ``.sum`` a
    client's bits would depend on how many clients share its group, hence on the number of ranks
    (measured on an H100: ``.sum(1)`` of [G, 125, 4] differs between G = 48 and G <= 24). Elementwise
    adds are exact IEEE operations on every device, so this is the same on CPU and GPU."""
    dim = dim % values.dim()
    length = values.shape[dim]
    width = 1 << max(0, (length - 1).bit_length())
    if width != length:
        values = F.pad(values, [0, 0] * (values.dim() - 1 - dim) + [0, width - length])
    while width > 1:
        width //= 2
        values = values.narrow(dim, 0, width) + values.narrow(dim, width, width)
    return values.squeeze(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the samples of values [G, N, K] where mask [G, N] is set -> [G, K]."""
    total = ordered_sum(values * mask.unsqueeze(2).to(values.dtype), 1)
    return total / mask.sum(1, keepdim=True).clamp_min(1).to(values.dtype)  # counts: integer sums, exact


def responsibilities(log_likelihood: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
    """r_gik ∝ pi_gk p_k(x_gi), from log_likelihood [G, N, K] and proportions [G, K] (in log space)."""
    return torch.softmax(log_likelihood + torch.log(proportions.clamp_min(1e-30)).unsqueeze(1), dim=2)


def with_labels(log_likelihood: torch.Tensor, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_k(x_i) + log p_k(y_i | x_i) [G, N, K], from log_likelihood [G, N, K], class_logits
    [G, K, N, C] and labels [G, N]: the joint likelihood of a labelled sample under component k."""
    index = labels.unsqueeze(1).expand(-1, class_logits.shape[1], -1).unsqueeze(3)
    return log_likelihood + torch.log_softmax(class_logits, -1).gather(3, index).squeeze(3).transpose(1, 2)


def mstep_weights(log_likelihood: torch.Tensor, proportions: torch.Tensor, tempering: float = 1.0,
                  prior_power: float = 1.0) -> torch.Tensor:
    """What the M-step trains each component on: w_gik ∝ pi_gk^prior_power p_k(x_gi)^tempering [G, N, K]
    (the responsibilities when both are 1). A sample whose likelihoods are far apart keeps its
    component whatever the powers; an ambiguous one (likelihoods within a few nats) is shared by
    the client's proportions raised to prior_power, so with prior_power > 1 the components that
    dominate the client take it, rather than the component whose density happens to lead."""
    prior = proportions if prior_power == 1 else proportions.clamp_min(1e-30) ** prior_power
    return responsibilities(tempering * log_likelihood, prior)


def aggregation_mass(weights: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """How much a client's update of component k counts on the server: sum_i w_ik^power [G, K] from
    the M-step's weights [G, N, K] (padding rows zero). With power 1 it is the responsibility mass;
    above 1 a client whose samples the component holds confidently outweighs one that holds the same
    mass as many half-shares, so the components are pulled by the clients that train them on pure
    data rather than on blends of their twins. Hard (0/1) weights give the same mass at any power."""
    return ordered_sum(weights if power == 1 else weights ** power, 1)


def fit_proportions(
    log_likelihood: torch.Tensor, mask: torch.Tensor, proportions: torch.Tensor, iterations: int, tol: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM on each client's proportions with the component likelihoods held fixed: pi <- mean_i r_i.

    This is the maximum-likelihood fixed point for pi (the Saerens label-shift EM); each
    iteration cannot lower sum_i log sum_k pi_k p_k(x_i). A client stops when its proportions move
    less than ``tol``; it then keeps them while the others go on. Returns (proportions [G, K],
    responsibilities [G, N, K]).
    """
    resp = responsibilities(log_likelihood, proportions)
    done = torch.zeros(len(proportions), dtype=torch.bool, device=proportions.device)
    for _ in range(iterations):
        new = torch.where(done[:, None], proportions, masked_mean(resp, mask))
        resp = torch.where(done[:, None, None], resp, responsibilities(log_likelihood, new))
        done = done | ((new - proportions).abs().amax(1) < tol)
        proportions = new
        if bool(done.all()):
            break
    return proportions, resp


def mixture_log_likelihood(log_likelihood: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
    """log sum_k pi_k p_k(x_i) per sample [G, N]."""
    return torch.logsumexp(log_likelihood + torch.log(proportions.clamp_min(1e-30)).unsqueeze(1), dim=2)


def predict_proba(log_likelihood: torch.Tensor, class_logits: torch.Tensor, proportions: torch.Tensor,
                  gate: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k w_k(x) p_k(y|x) with w_k(x) ∝ pi_k p_k(x). log_likelihood [G, N, K]; class_logits [G, K, N, C].
    ``gate``: the responsibilities w_k(x) [G, N, K] when the caller already has them."""
    if gate is None:
        gate = responsibilities(log_likelihood, proportions)
    return torch.einsum("gnk,gknc->gnc", gate, torch.softmax(class_logits, dim=-1))


def epoch_schedule(orders: list[torch.Tensor], steps: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every client's sample order laid out as ``steps`` mini-batches: indices [G, steps * B] and
    a mask of the real ones (a client with fewer samples has empty last batches); step s is
    columns s*B .. (s+1)*B."""
    device = orders[0].device
    index = torch.zeros(len(orders), steps * batch_size, dtype=torch.long, device=device)
    mask = torch.zeros(len(orders), steps * batch_size, dtype=torch.bool, device=device)
    for g, order in enumerate(orders):
        index[g, : len(order)] = order
        mask[g, : len(order)] = True
    return index, mask


def stacked_normal(generators: list[torch.Generator], shapes: list[tuple[int, ...]], padded: tuple[int, ...],
                   axis: int) -> torch.Tensor:
    """[G, *padded]: client g's standard normals of ``shapes[g]`` from its own generator (exactly what
    it would draw alone), zero-padded along ``axis``. An empty shape (0 along axis) draws nothing."""
    device = generators[0].device
    out = torch.zeros(len(generators), *padded, device=device)
    for g, (gen, shape) in enumerate(zip(generators, shapes)):
        if shape[axis]:
            out[g].narrow(axis, 0, shape[axis]).copy_(torch.randn(shape, generator=gen, device=device))
    return out


def _adam_update(matrix: torch.Tensor, grad: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                 steps: torch.Tensor, lr: float) -> None:
    """One Adam step in place, with one plain IEEE operation per kernel (mul, add, div, sqrt): fused
    kernels may round the last few elements of a tensor differently from the rest, and which
    elements are last depends on how many clients share the tensor."""
    beta1, beta2 = ADAM_BETAS
    shape = (-1,) + (1,) * (matrix.dim() - 1)
    first.mul_(beta1).add_(grad * (1 - beta1))
    second.mul_(beta2).add_(grad * grad * (1 - beta2))
    count = steps.to(torch.float64)
    step_size = (lr / (1 - beta1**count)).to(matrix.dtype).reshape(shape)
    correction = torch.sqrt(1 - beta2**count).to(matrix.dtype).reshape(shape)
    denominator = second.sqrt().div_(correction).add_(ADAM_EPS)
    matrix.sub_((first / denominator).mul_(step_size))


def adam_step(matrix: torch.Tensor, grad: torch.Tensor, first: torch.Tensor, second: torch.Tensor, steps: torch.Tensor,
              active: torch.Tensor, lr: float) -> None:
    """Adam (Kingma and Ba) on [G, ...] per-client parameters, in place, for the clients with
    ``active`` set; each client has its own step count for the bias corrections."""
    steps += active.to(steps.dtype)
    if bool(active.all()):
        _adam_update(matrix, grad, first, second, steps, lr)
        return
    chosen = active.nonzero()[:, 0]
    parts = [t[chosen] for t in (matrix, grad, first, second)]
    _adam_update(*parts, steps[chosen], lr)
    for target, part in zip((matrix, first, second), (parts[0], parts[2], parts[3])):
        target[chosen] = part


def local_training(
    start: torch.Tensor,
    counts: torch.Tensor,
    padded: int,
    epochs: int,
    batch_size: int,
    lr: float,
    generators: list[torch.Generator],
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: str = "adam",
    shuffle: bool = True,
) -> torch.Tensor:
    """Each client of a group trains its own copy of ``start`` ([K, P], the same for every client,
    or [G, K, P], each client's own); returns [G, K, P].

    ``loss(matrix, index, batch_mask)`` gives the [G, K] loss of each client's mini-batch (sample
    indices ``index`` [G, B] into its padded samples, ``batch_mask`` [G, B] the real ones); each
    component's row gets the gradient of its own loss. Every client shuffles its own samples with
    its own generator (or walks them in order) and takes its own optimiser steps; the group takes
    ceil(padded / batch_size) steps an epoch and a client with fewer samples sits the last ones out.
    """
    groups = len(generators)
    own = start if start.dim() == 3 else start.expand(groups, *start.shape)
    matrix = own.clone().requires_grad_(True)
    first, second = torch.zeros_like(matrix), torch.zeros_like(matrix)
    steps = torch.zeros(groups, dtype=torch.int64, device=matrix.device)
    for _ in range(epochs):
        orders = [torch.randperm(int(n), generator=gen, device=gen.device) if shuffle
                  else torch.arange(int(n), device=gen.device) for n, gen in zip(counts.tolist(), generators)]
        batches = math.ceil(padded / batch_size)
        all_index, all_mask = epoch_schedule(orders, batches, batch_size)
        for step in range(batches):
            index = all_index[:, step * batch_size:(step + 1) * batch_size]
            batch_mask = all_mask[:, step * batch_size:(step + 1) * batch_size]
            if not bool(batch_mask.any()):  # every client of the group is done with this epoch
                continue
            (grad,) = torch.autograd.grad(loss(matrix, index, batch_mask).sum(), matrix)
            with torch.no_grad():
                active = batch_mask.any(1)
                if optimizer == "adam":
                    adam_step(matrix, grad, first, second, steps, active, lr)
                else:  # plain SGD: a client that sits a step out has a zero gradient anyway
                    matrix.sub_(grad * (lr * active.to(grad.dtype)).reshape(-1, *([1] * (grad.dim() - 1))))
    return matrix.detach()


def local_m_step(
    layout: vae.ParamLayout,
    start: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    counts: torch.Tensor,
    weights: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    label_weight: float,
    generators: list[torch.Generator],
    elbo_fn: Callable[[vae.Params, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = vae.elbo,
    samples: int = 1,
) -> torch.Tensor:
    """FedGMI's M-step: each client trains its own copy of every component on its
    responsibility-weighted loss; returns the trained parameters [G, K, P].

    start [K, P] (the model the clients hold); x [G, N, D], y [G, N], counts [G] real samples per
    client, weights [G, N, K] (zero on padding). Component k of client g minimises
    sum_i w_gik (-ELBO_gik + label_weight * CE_gik) / sum_i w_gik, so each component takes steps of
    the same size whatever its local mass; the server's mass-weighted average decides how much each
    client's update counts. ``elbo_fn``: the model's ELBO (models.DensityModel.elbo; default the MLP's),
    ``layout`` its layout; with ``samples`` > 1, its importance-weighted bound (DensityModel.iw_bound)
    on that many samples takes the ELBO's place.
    """
    k, z = layout.num_components, layout.shape.latent
    rows = torch.arange(len(generators), device=x.device)[:, None]

    def loss(matrix: torch.Tensor, index: torch.Tensor, batch_mask: torch.Tensor) -> torch.Tensor:
        sizes = batch_mask.sum(1).tolist()
        if samples == 1:
            noise = stacked_normal(generators, [(k, s, z) for s in sizes], (k, index.shape[1], z), axis=1)
        else:  # the importance-weighted bound's noise [G, S, K, B, Z]
            noise = stacked_normal(generators, [(samples, k, s, z) for s in sizes], (samples, k, index.shape[1], z),
                                   axis=2)
        elbo, logits = elbo_fn(layout.unflatten(matrix), x[rows, index], noise)
        labels = y[rows, index].unsqueeze(1).expand(-1, k, -1)
        nll_y = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                reduction="none").reshape(elbo.shape)
        # contiguous: with G = 1 a permuted view can pass for contiguous and send the backward
        # matmuls down another path, which would make a client's bits depend on its group's size
        w = (weights[rows, index] * batch_mask.unsqueeze(2)).permute(0, 2, 1).contiguous()  # [G, K, B]
        return ordered_sum(w * (-elbo + label_weight * nll_y), 2) / ordered_sum(w, 2).clamp_min(1e-8)

    return local_training(start, counts, x.shape[1], epochs, batch_size, lr, generators, loss)
