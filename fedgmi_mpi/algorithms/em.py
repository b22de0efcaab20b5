"""Mixture EM pieces shared by the algorithms: responsibilities, proportions, weighted M-step.

Pure torch, no MPI: every function here is what *one client* computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.vae import MixtureVAE


def responsibilities(log_likelihood: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
    """r_ik ∝ pi_k p_k(x_i), from log_likelihood [N, K] and proportions [K] (computed in log space)."""
    return torch.softmax(log_likelihood + torch.log(proportions.clamp_min(1e-30)), dim=1)


def fit_proportions(
    log_likelihood: torch.Tensor, proportions: torch.Tensor, iterations: int, tol: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM on the proportions with the component likelihoods held fixed: pi <- mean_i r_i.

    This is the maximum-likelihood fixed point for pi (the Saerens label-shift EM); each
    iteration cannot lower sum_i log sum_k pi_k p_k(x_i). Returns (proportions, responsibilities).
    """
    resp = responsibilities(log_likelihood, proportions)
    for _ in range(iterations):
        new = resp.mean(0)
        resp = responsibilities(log_likelihood, new)
        done = (new - proportions).abs().max() < tol
        proportions = new
        if done:
            break
    return proportions, resp


def mixture_log_likelihood(log_likelihood: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
    """log sum_k pi_k p_k(x_i) per sample [N]."""
    return torch.logsumexp(log_likelihood + torch.log(proportions.clamp_min(1e-30)), dim=1)


def predict_proba(
    log_likelihood: torch.Tensor, class_logits: torch.Tensor, proportions: torch.Tensor
) -> torch.Tensor:
    """sum_k w_k(x) p_k(y|x) with w_k(x) ∝ pi_k p_k(x). log_likelihood [N, K]; class_logits [K, N, C]."""
    gate = responsibilities(log_likelihood, proportions)  # [N, K]
    return torch.einsum("nk,knc->nc", gate, torch.softmax(class_logits, dim=-1))


def local_m_step(
    model: MixtureVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    label_weight: float,
    generator: torch.Generator,
) -> None:
    """Train every component on its responsibility-weighted loss, in place.

    weights [N, K]. Component k minimises sum_i w_ik (-ELBO_ik + label_weight * CE_ik) / sum_i w_ik,
    so each component takes steps of the same size whatever its local mass; the server's
    mass-weighted average decides how much each client's update counts.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator, device=generator.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            w = weights[idx].T  # [K, B]
            elbo, logits = model.elbo(x[idx], generator)
            nll_y = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y[idx].repeat(logits.shape[0]), reduction="none"
            ).reshape(w.shape)
            per_component = (w * (-elbo + label_weight * nll_y)).sum(1) / w.sum(1).clamp_min(1e-8)
            opt.zero_grad(set_to_none=True)
            per_component.sum().backward()
            opt.step()
