"""K variational autoencoders with classifier heads, for a whole group of clients at once.

Parameters are plain tensors with two leading axes, [G clients, K components, ...]: every
client's copy of every component is one slice, and one batched matmul evaluates all of them
(``torch.baddbmm`` over G*K). The global model is the G = 1 case, or an expanded view for
inference. Functions here are pure: the caller supplies the Gaussian noise, drawn from each
client's own generator, so a client's numbers do not depend on which other clients share its
batch.

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

LOG_2PI = math.log(2 * math.pi)
Params = dict[str, torch.Tensor]  # name -> [G, K, *shape]


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


class StackedLayout:
    """Flattens the parameters of K stacked networks component-major: row k of a [..., K, P]
    matrix holds component k's parameters, so per-component weighting and aggregation are row
    operations. ``layers``: (name, fan_in, fan_out) of each linear layer."""

    def __init__(self, layers: list[tuple[str, int, int]], num_components: int):
        self.layers = layers
        self.names, self.shapes = [], []
        for name, fan_in, fan_out in layers:
            self.names += [f"{name}_w", f"{name}_b"]
            self.shapes += [(fan_in, fan_out), (1, fan_out)]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.num_components = num_components
        self.per_component = sum(self.sizes)

    def unflatten(self, matrix: torch.Tensor) -> Params:
        """[G, K, P] -> named views [G, K, *shape]."""
        lead = matrix.shape[:-1]
        return {name: chunk.reshape(*lead, *shape)
                for name, shape, chunk in zip(self.names, self.shapes, torch.split(matrix, self.sizes, dim=-1))}

    def flatten(self, params: Params) -> torch.Tensor:
        first = params[self.names[0]]
        lead = first.shape[:-2]
        return torch.cat([params[name].reshape(*lead, -1) for name in self.names], dim=-1)

    def init_matrix(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """[K, P] float32: nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), per component."""
        k = self.num_components
        parts = []
        for _, fan_in, fan_out in self.layers:
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(k, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(k, 1, fan_out, generator=generator) * 2 - 1) * bound
            parts += [w.reshape(k, -1), b.reshape(k, -1)]
        return torch.cat(parts, dim=1)


class ParamLayout(StackedLayout):
    """The K VAEs' layout."""

    def __init__(self, shape: VAEShape):
        super().__init__(_layers(shape), shape.num_components)
        self.shape = shape


def init_matrix(shape: VAEShape, generator: torch.Generator | None = None) -> torch.Tensor:
    """[K, P] float32 initial VAEs (see StackedLayout.init_matrix)."""
    return ParamLayout(shape).init_matrix(generator)


def _linear(params: Params, name: str, x: torch.Tensor) -> torch.Tensor:
    """x [G, K, B, in] -> [G, K, B, out]: one batched matmul over every (client, component)."""
    w, b = params[f"{name}_w"], params[f"{name}_b"]
    g, k, rows, width = x.shape
    out = torch.baddbmm(b.reshape(g * k, 1, -1), x.reshape(g * k, rows, width), w.reshape(g * k, width, -1))
    return out.reshape(g, k, rows, -1)


def encode(params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [G, B, D] -> mu, logvar [G, K, B, Z] and the trunk features [G, K, B, H]."""
    k = params["enc1_w"].shape[1]
    h = F.relu(_linear(params, "enc1", x.unsqueeze(1).expand(-1, k, -1, -1)))
    h = F.relu(_linear(params, "enc2", h))
    return _linear(params, "mu", h), _linear(params, "logvar", h).clamp(-12.0, 8.0), h


def decode(params: Params, z: torch.Tensor) -> torch.Tensor:
    """z [G, S, K, B, Z] -> pixel logits [G, S, K, B, D]."""
    g, s, k, b, width = z.shape
    flat = z.permute(0, 2, 1, 3, 4).reshape(g, k, s * b, width)
    h = F.relu(_linear(params, "dec1", flat))
    h = F.relu(_linear(params, "dec2", h))
    logits = _linear(params, "out", h)  # [G, K, S*B, D]
    return logits.reshape(g, k, s, b, -1).permute(0, 2, 1, 3, 4)


def class_logits(params: Params, features: torch.Tensor) -> torch.Tensor:
    return _linear(params, "cls", features)  # [G, K, B, C]


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """x [G, B, D] against logits [G, S, K, B, D] -> [G, S, K, B]."""
    target = x[:, None, None].expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def elbo(params: Params, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample ELBO [G, K, B] (reparameterised with noise [G, K, B, Z], analytic KL) and class
    logits [G, K, B, C]."""
    mu, logvar, h = encode(params, x)
    z = mu + noise * torch.exp(0.5 * logvar)
    rec = log_bernoulli(x, decode(params, z.unsqueeze(1))).squeeze(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    return rec - kl, class_logits(params, h)


@torch.no_grad()
def iw_log_likelihood(params: Params, x: torch.Tensor, noise: torch.Tensor,
                      chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted bound log (1/S) sum_s p(x, z_s) / q(z_s | x) [G, K, B] with noise
    [G, S, K, B, Z]; >= the ELBO in expectation and tightening as S grows. Samples are processed
    ``chunk`` at a time so memory stays bounded. Also the class logits [G, K, B, C]."""
    mu, logvar, h = encode(params, x)
    std = torch.exp(0.5 * logvar)
    log_weights = []
    for start in range(0, noise.shape[1], chunk):
        eps = noise[:, start:start + chunk]
        z = mu.unsqueeze(1) + eps * std.unsqueeze(1)  # [G, s, K, B, Z]
        log_px = log_bernoulli(x, decode(params, z))
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar.unsqueeze(1)).sum(-1)
        log_weights.append(log_px + log_pz - log_qz)
    log_w = torch.cat(log_weights, 1)
    return torch.logsumexp(log_w, 1) - math.log(noise.shape[1]), class_logits(params, h)
