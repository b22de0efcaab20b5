"""K variational autoencoders with classifier heads, for a whole group of clients at once.

Parameters are plain tensors with two leading axes, [G clients, K components, ...]: every
client's copy of every component is one slice, and one batched matmul evaluates all of them
(``torch.baddbmm`` over G*K). The global model is the G = 1 case, or an expanded view for
inference. Functions here are pure: the caller supplies the Gaussian noise, drawn from each
client's own generator, so a client's numbers do not depend on which other clients share its
batch.

Likelihood: each pixel is Bernoulli with mean sigmoid(decoder logits), evaluated at the pixel
intensity scaled to [0, 1] (the "continuous targets" Bernoulli used throughout the VAE
literature on grey-level digits); or, with ``likelihood="gaussian"`` (real-valued features),
N(x_d; decoder output_d, exp(out_logvar_d)) with a learned per-component, per-dimension
log-variance ``out_logvar`` [1, D], the last tensor of the layout. All components share one form,
so the ratios p_k(x) / p_j(x) that the E-step needs are comparable across components.

Classifier head: a linear softmax layer on the encoder's last hidden layer of the same
component, so p_k(y|x) shares the encoder trunk with the density model q_k(z|x). The ELBO stays
a valid lower bound on log p_k(x) whatever the encoder learns, so the head cannot corrupt the
density; it only shapes the representation. Prediction mixes heads with w_k(x) ∝ pi_k p_k(x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)
LOGVAR_BOUND = 7.0  # the Gaussian likelihood's log-variance is bound * tanh(raw / bound): std in (0.03, 33)
Params = dict[str, torch.Tensor]  # name -> [G, K, *shape]


@dataclass(frozen=True)
class VAEShape:
    num_components: int
    input_dim: int
    num_classes: int
    hidden: int = 128
    latent: int = 8
    likelihood: str = "bernoulli"  # or "gaussian": adds the out_logvar tensor [1, input_dim]


def _layers(shape: VAEShape) -> list[tuple[str, int, int]]:
    d, h, z, c = shape.input_dim, shape.hidden, shape.latent, shape.num_classes
    return [
        ("enc1", d, h), ("enc2", h, h), ("mu", h, z), ("logvar", h, z),
        ("dec1", z, h), ("dec2", h, h), ("out", h, d), ("cls", h, c),
    ]


class NamedRows:
    """Named tensors laid out component-major in flat rows: row k of a [..., K, P] matrix holds
    component k's parameters, so per-component weighting and aggregation are row operations.
    Subclasses set ``names``, ``shapes`` and ``sizes``."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    sizes: list[int]

    def unflatten(self, matrix: torch.Tensor) -> Params:
        """[G, K, P] -> named views [G, K, *shape]."""
        lead = matrix.shape[:-1]
        return {name: chunk.reshape(*lead, *shape)
                for name, shape, chunk in zip(self.names, self.shapes, torch.split(matrix, self.sizes, dim=-1))}

    def flatten(self, params: Params) -> torch.Tensor:
        first = params[self.names[0]]
        lead = first.shape[:first.dim() - len(self.shapes[0])]
        return torch.cat([params[name].reshape(*lead, -1) for name in self.names], dim=-1)


class StackedLayout(NamedRows):
    """K stacked MLPs. ``layers``: (name, fan_in, fan_out) of each linear layer."""

    def __init__(self, layers: list[tuple[str, int, int]], num_components: int):
        self.layers = layers
        self.names, self.shapes = [], []
        for name, fan_in, fan_out in layers:
            self.names += [f"{name}_w", f"{name}_b"]
            self.shapes += [(fan_in, fan_out), (1, fan_out)]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.num_components = num_components
        self.per_component = sum(self.sizes)

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
    """The K VAEs' layout; a Gaussian likelihood appends ``out_logvar`` [1, D] (initialised to 0)."""

    def __init__(self, shape: VAEShape):
        super().__init__(_layers(shape), shape.num_components)
        self.shape = shape
        if shape.likelihood == "gaussian":
            self.names.append("out_logvar")
            self.shapes.append((1, shape.input_dim))
            self.sizes.append(shape.input_dim)
            self.per_component += shape.input_dim

    def init_matrix(self, generator: torch.Generator | None = None) -> torch.Tensor:
        matrix = super().init_matrix(generator)
        if self.shape.likelihood == "gaussian":
            matrix = torch.cat([matrix, torch.zeros(self.num_components, self.shape.input_dim)], dim=1)
        return matrix


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


def output_logvar(params: Params) -> torch.Tensor:
    """The Gaussian likelihood's log-variance [G, K, 1, D], softly bounded to (-LOGVAR_BOUND, LOGVAR_BOUND)
    (tanh: the gradient never vanishes, so a bound reached early can be left again)."""
    return LOGVAR_BOUND * torch.tanh(params["out_logvar"] / LOGVAR_BOUND)


def log_gaussian(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(logvar)) summed over the features: x [G, B, D], mean [G, S, K, B, D],
    logvar [G, K, 1, D] -> [G, S, K, B]."""
    logvar = logvar.unsqueeze(1)
    return -0.5 * ((x[:, None, None] - mean).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_likelihood(params: Params, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """log p(x | z) [G, S, K, B] from the decoder's output [G, S, K, B, D]: Bernoulli(sigmoid(out)),
    or N(out, exp(out_logvar)) when the parameters hold an ``out_logvar`` (likelihood="gaussian")."""
    if "out_logvar" in params:
        return log_gaussian(x, out, output_logvar(params))
    return log_bernoulli(x, out)


Encoder = Callable[[Params, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Decoder = Callable[[Params, torch.Tensor], torch.Tensor]


def elbo(params: Params, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample ELBO [G, K, B] (reparameterised with noise [G, K, B, Z], analytic KL) and class
    logits [G, K, B, C]."""
    return elbo_of(encode, decode, params, x, noise)


def elbo_of(encoder: Encoder, decoder: Decoder, params: Params, x: torch.Tensor,
            noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``elbo`` for any encoder and decoder with this module's shapes (models/conv_vae.py's too)."""
    mu, logvar, h = encoder(params, x)
    z = mu + noise * torch.exp(0.5 * logvar)
    rec = log_likelihood(params, x, decoder(params, z.unsqueeze(1))).squeeze(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    return rec - kl, class_logits(params, h)


@torch.no_grad()
def iw_log_likelihood(params: Params, x: torch.Tensor, noise: torch.Tensor,
                      chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted bound log (1/S) sum_s p(x, z_s) / q(z_s | x) [G, K, B] with noise
    [G, S, K, B, Z]; >= the ELBO in expectation and tightening as S grows. Samples are processed
    ``chunk`` at a time so memory stays bounded. Also the class logits [G, K, B, C]."""
    return iw_log_likelihood_of(encode, decode, params, x, noise, chunk)


@torch.no_grad()
def iw_log_likelihood_of(encoder: Encoder, decoder: Decoder, params: Params, x: torch.Tensor, noise: torch.Tensor,
                         chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``iw_log_likelihood`` for any encoder and decoder with this module's shapes."""
    return iw_bound_of(encoder, decoder, params, x, noise, chunk)


def iw_bound_of(encoder: Encoder, decoder: Decoder, params: Params, x: torch.Tensor, noise: torch.Tensor,
                chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The importance-weighted bound [G, K, B] with noise [G, S, K, B, Z], differentiable (the
    M-step's objective with ``algorithm.mstep_samples`` > 1), and the class logits."""
    mu, logvar, h = encoder(params, x)
    std = torch.exp(0.5 * logvar)
    log_weights = []
    step = chunk or noise.shape[1]
    for start in range(0, noise.shape[1], step):
        eps = noise[:, start:start + step]
        z = mu.unsqueeze(1) + eps * std.unsqueeze(1)  # [G, s, K, B, Z]
        log_px = log_likelihood(params, x, decoder(params, z))
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar.unsqueeze(1)).sum(-1)
        log_weights.append(log_px + log_pz - log_qz)
    log_w = torch.cat(log_weights, 1)
    return torch.logsumexp(log_w, 1) - math.log(noise.shape[1]), class_logits(params, h)
