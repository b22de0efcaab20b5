"""K convolutional VAEs with classifier heads for H x W images, for a whole group of clients at once.

The convolutional counterpart of models/vae.py, with the same conventions: parameters are plain
tensors [G clients, K components, ...] flattened component-major (``ConvLayout``), functions are
pure and the caller supplies the noise. All G*K networks run at once as *grouped* convolutions:
the batch is laid out [B, G*K*channels, h, w] (channels last: NHWC) and
``F.conv2d(..., groups=G*K)``, ``F.conv_transpose2d(..., groups=G*K)``; the linear layers are
vae.py's one batched matmul over G*K.

Network (H and W divisible by 4, c = ``channels``):
  encoder  image [1, H, W] -> conv(1 -> c, 4, stride 2, pad 1) -> ReLU -> conv(c -> 2c, 4, s2, p1)
           -> ReLU -> flatten [2c*H/4*W/4] -> linear -> ReLU = trunk features [hidden]
           -> mu, logvar [latent]
  decoder  z -> linear -> ReLU -> [2c, H/4, W/4] -> conv_transpose(2c -> c, 4, s2, p1) -> ReLU
           -> conv_transpose(c -> 1, 4, s2, p1) -> [1, H, W]: Bernoulli logits or Gaussian means
  head     cls: linear on the trunk features -> class logits (as in the MLP)
Inputs are flattened pixels x [G, B, D = H*W] (row-major images), as everywhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import vae
from .vae import NamedRows, Params, _linear

KERNEL = 4
# NHWC activations: CPU grouped (transposed) convolutions run about a third faster than in NCHW
CHANNELS_LAST = torch.channels_last


@dataclass(frozen=True)
class ConvVAEShape:
    num_components: int
    image: tuple[int, int]  # (H, W), both divisible by 4
    num_classes: int
    hidden: int = 128
    latent: int = 8
    channels: int = 32  # c: the first convolution's output channels (the second has 2c)
    likelihood: str = "bernoulli"

    @property
    def input_dim(self) -> int:
        return self.image[0] * self.image[1]

    @property
    def flat(self) -> int:
        """Features between the convolutions and the linear layers: 2c * H/4 * W/4."""
        return 2 * self.channels * (self.image[0] // 4) * (self.image[1] // 4)


def _tensors(shape: ConvVAEShape) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, per-component shape, fan_in of PyTorch's default init; 0: zeros) in layout order.
    Conv weights are (out, in, 4, 4) (fan_in in*16); transposed-conv weights are (in, out, 4, 4)
    and PyTorch takes fan_in from dim 1 there too (out*16); linear weights are (in, out)."""
    c, f, h, z = shape.channels, shape.flat, shape.hidden, shape.latent
    area = KERNEL * KERNEL
    out = [
        ("conv1_w", (c, 1, KERNEL, KERNEL), area), ("conv1_b", (c,), area),
        ("conv2_w", (2 * c, c, KERNEL, KERNEL), c * area), ("conv2_b", (2 * c,), c * area),
        ("enc_w", (f, h), f), ("enc_b", (1, h), f),
        ("mu_w", (h, z), h), ("mu_b", (1, z), h),
        ("logvar_w", (h, z), h), ("logvar_b", (1, z), h),
        ("dec_w", (z, f), z), ("dec_b", (1, f), z),
        ("deconv1_w", (2 * c, c, KERNEL, KERNEL), c * area), ("deconv1_b", (c,), c * area),
        ("deconv2_w", (c, 1, KERNEL, KERNEL), area), ("deconv2_b", (1,), area),
        ("cls_w", (h, shape.num_classes), h), ("cls_b", (1, shape.num_classes), h),
    ]
    if shape.likelihood == "gaussian":
        out.append(("out_logvar", (1, shape.input_dim), 0))
    return out


class ConvLayout(NamedRows):
    """The K convolutional VAEs' layout: like vae.StackedLayout (row k of a [..., K, P] matrix is
    component k), with tensors of any rank. ``layers``: (name, kind, in, out) of each layer, for
    the log's description."""

    def __init__(self, shape: ConvVAEShape):
        self.shape = shape
        self.num_components = shape.num_components
        tensors = _tensors(shape)
        self.names = [name for name, _, _ in tensors]
        self.shapes = [s for _, s, _ in tensors]
        self.fan_in = [fan for _, _, fan in tensors]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.per_component = sum(self.sizes)
        c, f, h, z = shape.channels, shape.flat, shape.hidden, shape.latent
        self.layers = [("conv1", "conv", 1, c), ("conv2", "conv", c, 2 * c), ("enc", "linear", f, h),
                       ("mu", "linear", h, z), ("logvar", "linear", h, z), ("dec", "linear", z, f),
                       ("deconv1", "conv_transpose", 2 * c, c), ("deconv2", "conv_transpose", c, 1),
                       ("cls", "linear", h, shape.num_classes)]

    def init_matrix(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """[K, P] float32: PyTorch's default init of each layer, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        for weights and biases alike, per component; ``out_logvar`` starts at 0."""
        k = self.num_components
        parts = []
        for shape, fan_in in zip(self.shapes, self.fan_in):
            if fan_in == 0:
                parts.append(torch.zeros(k, math.prod(shape)))
                continue
            bound = 1.0 / math.sqrt(fan_in)
            parts.append(((torch.rand(k, *shape, generator=generator) * 2 - 1) * bound).reshape(k, -1))
        return torch.cat(parts, dim=1)


class ConvVAE:
    """The functions of models/vae.py for the convolutional network of ``shape``: ``encode``,
    ``decode``, ``class_logits``, ``elbo``, ``iw_log_likelihood``, with the same arguments and
    tensor shapes (x [G, B, H*W])."""

    def __init__(self, shape: ConvVAEShape):
        if shape.image[0] % 4 or shape.image[1] % 4:
            raise ValueError(f"image {shape.image}: height and width must be divisible by 4")
        self.shape = shape

    def encode(self, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [G, B, D] -> mu, logvar [G, K, B, Z] and the trunk features [G, K, B, hidden]."""
        g, b, _ = x.shape
        k, c = params["conv1_w"].shape[1], self.shape.channels
        height, width = self.shape.image
        # one input channel per (client, component): every group of the convolutions is one network,
        # so a client's numbers (gradients included) do not depend on how many share its batch
        images = x.transpose(0, 1).reshape(b, g, 1, height, width).expand(b, g, k, height, width)
        images = images.reshape(b, g * k, height, width).contiguous(memory_format=CHANNELS_LAST)
        h = torch.relu_(F.conv2d(images, params["conv1_w"].reshape(g * k * c, 1, KERNEL, KERNEL),
                                 params["conv1_b"].reshape(-1), stride=2, padding=1, groups=g * k))
        h = torch.relu_(F.conv2d(h, params["conv2_w"].reshape(g * k * 2 * c, c, KERNEL, KERNEL),
                                 params["conv2_b"].reshape(-1), stride=2, padding=1, groups=g * k))
        flat = h.reshape(b, g, k, -1).permute(1, 2, 0, 3)  # [G, K, B, 2c*H/4*W/4], (channel, row, column) order
        h = torch.relu_(_linear(params, "enc", flat))
        return _linear(params, "mu", h), _linear(params, "logvar", h).clamp(-12.0, 8.0), h

    def decode(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """z [G, S, K, B, Z] -> per-pixel logits (Bernoulli) or means (Gaussian) [G, S, K, B, D]."""
        g, s, k, b, width = z.shape
        c = self.shape.channels
        height4, width4 = self.shape.image[0] // 4, self.shape.image[1] // 4
        flat = z.permute(0, 2, 1, 3, 4).reshape(g, k, s * b, width)
        h = torch.relu_(_linear(params, "dec", flat))  # [G, K, S*B, 2c*H/4*W/4]
        h = h.permute(2, 0, 1, 3).reshape(s * b, g * k * 2 * c, height4, width4).contiguous(memory_format=CHANNELS_LAST)
        h = torch.relu_(F.conv_transpose2d(h, params["deconv1_w"].reshape(g * k * 2 * c, c, KERNEL, KERNEL),
                                           params["deconv1_b"].reshape(-1), stride=2, padding=1, groups=g * k))
        out = F.conv_transpose2d(h, params["deconv2_w"].reshape(g * k * c, 1, KERNEL, KERNEL),
                                 params["deconv2_b"].reshape(-1), stride=2, padding=1, groups=g * k)  # [S*B, G*K, H, W]
        return out.reshape(s, b, g, k, -1).permute(2, 0, 3, 1, 4)

    def class_logits(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        return vae.class_logits(params, features)  # [G, K, B, C]

    def elbo(self, params: Params, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample ELBO [G, K, B] with noise [G, K, B, Z], and class logits [G, K, B, C]."""
        return vae.elbo_of(self.encode, self.decode, params, x, noise)

    @torch.no_grad()
    def iw_log_likelihood(self, params: Params, x: torch.Tensor, noise: torch.Tensor,
                          chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-weighted bound [G, K, B] with noise [G, S, K, B, Z], ``chunk`` samples at a
        time (the convolutions' activations are much larger than the MLP's), and class logits."""
        return vae.iw_log_likelihood_of(self.encode, self.decode, params, x, noise, chunk)
