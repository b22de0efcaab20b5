"""K variational autoencoders with classifier heads, stored stacked so one batched matmul
evaluates every component at once.

Likelihood: each pixel is Bernoulli with mean sigmoid(decoder logits), evaluated at the pixel
intensity scaled to [0, 1] (the "continuous targets" Bernoulli used throughout the VAE
literature on grey-level digits). All components share this form, so the ratios
p_k(x) / p_j(x) that the E-step needs are comparable across components.

Classifier head: a linear softmax layer on the encoder's last hidden layer of the same
component, so p_k(y|x) shares the encoder trunk with the density model q_k(z|x). The ELBO stays
a valid lower bound on log p_k(x) whatever the encoder learns, so the head cannot corrupt the
density; it only shapes the representation. Prediction mixes heads with w_k(x) ∝ pi_k p_k(x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class VAEShape:
    num_components: int
    input_dim: int
    num_classes: int
    hidden: int = 128
    latent: int = 8


def _layers(shape: VAEShape) -> list[tuple[str, int, int]]:
    d, h, z, c = shape.input_dim, shape.hidden, shape.latent, shape.num_classes
    return [
        ("enc1", d, h), ("enc2", h, h), ("mu", h, z), ("logvar", h, z),
        ("dec1", z, h), ("dec2", h, h), ("out", h, d), ("cls", h, c),
    ]


class MixtureVAE(nn.Module):
    """Component k's weights are ``param[k]`` for every parameter; components never interact."""

    def __init__(self, shape: VAEShape, generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.shape = shape
        k = shape.num_components
        for name, fan_in, fan_out in _layers(shape):
            # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn per component.
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(k, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(k, 1, fan_out, generator=generator) * 2 - 1) * bound
            self.register_parameter(f"{name}_w", nn.Parameter(w.to(device)))
            self.register_parameter(f"{name}_b", nn.Parameter(b.to(device)))

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # x: [K, B, in] -> [K, B, out], one batched matmul for all components
        return torch.baddbmm(getattr(self, f"{name}_b"), x, getattr(self, f"{name}_w"))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, D] -> mu, logvar [K, B, Z] and the trunk features [K, B, H]."""
        k = self.shape.num_components
        h = F.relu(self._linear("enc1", x.unsqueeze(0).expand(k, -1, -1)))
        h = F.relu(self._linear("enc2", h))
        return self._linear("mu", h), self._linear("logvar", h).clamp(-12.0, 8.0), h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., K, B, Z] -> pixel logits [..., K, B, D]."""
        lead = z.shape[:-3]
        k, b, _ = z.shape[-3:]
        flat = z.reshape(-1, k, b, z.shape[-1]).transpose(0, 1).reshape(k, -1, z.shape[-1])
        h = F.relu(self._linear("dec1", flat))
        h = F.relu(self._linear("dec2", h))
        logits = self._linear("out", h)  # [K, S*B, D]
        return logits.reshape(k, -1, b, logits.shape[-1]).transpose(0, 1).reshape(*lead, k, b, -1)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._linear("cls", features)  # [K, B, C]

    @staticmethod
    def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample ELBO [K, B] (reparameterised, analytic KL) and class logits [K, B, C]."""
        mu, logvar, h = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        rec = self.log_bernoulli(x, self.decode(z.unsqueeze(0)).squeeze(0))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return rec - kl, self.class_logits(h)

    @torch.no_grad()
    def iw_log_likelihood(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None, chunk: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-weighted bound log (1/S) sum_s p(x, z_s) / q(z_s | x) [K, B]; >= ELBO in expectation
        and tightening as S grows. Samples are drawn in chunks so memory stays bounded."""
        mu, logvar, h = self.encode(x)
        std = torch.exp(0.5 * logvar)
        log_weights = []
        remaining = num_samples
        while remaining > 0:
            s = min(chunk, remaining)
            remaining -= s
            eps = torch.randn((s, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * std
            log_px = self.log_bernoulli(x, self.decode(z))
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
            log_weights.append(log_px + log_pz - log_qz)
        log_w = torch.cat(log_weights, 0)
        return torch.logsumexp(log_w, 0) - math.log(num_samples), self.class_logits(h)


class ParamLayout:
    """Flattens a MixtureVAE component-major: row k of the [K, P] matrix holds component k's
    parameters, so per-component weighting and aggregation are row operations."""

    def __init__(self, model: MixtureVAE):
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [tuple(p.shape[1:]) for _, p in model.named_parameters()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.num_components = model.shape.num_components
        self.per_component = sum(self.sizes)

    def to_matrix(self, model: MixtureVAE) -> torch.Tensor:
        k = self.num_components
        return torch.cat([p.detach().reshape(k, -1) for p in model.parameters()], dim=1)

    def load_matrix(self, model: MixtureVAE, matrix: torch.Tensor) -> None:
        k = self.num_components
        with torch.no_grad():
            for p, chunk in zip(model.parameters(), torch.split(matrix, self.sizes, dim=1)):
                p.copy_(chunk.reshape(k, *p.shape[1:]))
