"""FedGMI's density models, chosen in the config (``model.architecture``, ``model.likelihood``).

``density_model(...)`` is the one seam the algorithms and the analysis go through: it returns a
``DensityModel`` bundling the parameter layout of the K stacked VAEs with their functions, for
either network (vae.py's MLP, conv_vae.py's convolutional VAE) and either likelihood (Bernoulli
pixels in [0, 1], or a Gaussian with a learned per-dimension variance for real-valued features).
All K components share the one likelihood: the E-step compares p_k(x) across components, and
densities of different families (or a density against a probability) are not comparable.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager

import torch

from ..errors import UserError
from . import vae
from .conv_vae import ConvLayout, ConvVAE, ConvVAEShape
from .vae import Params, ParamLayout, VAEShape

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")


@contextlib.contextmanager
def _without_onednn():
    # not torch.backends.mkldnn.flags(): it also resets oneDNN's TF32 switch and warns each time
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class DensityModel:
    """K stacked VAEs of one architecture and likelihood: their layout and functions.

    Attributes: ``architecture``, ``likelihood``, ``shape`` (vae.VAEShape or conv_vae.ConvVAEShape:
    num_components, input_dim, num_classes, hidden, latent), ``layout`` (names, shapes, sizes,
    per_component, layers, unflatten, flatten, init_matrix), ``image_shape`` ((H, W) or None),
    ``chunk`` (importance samples per decoder pass). Functions, on parameters [G, K, ...] and
    inputs x [G, B, D] as in vae.py: ``elbo(params, x, noise)``, ``iw_log_likelihood(params, x,
    noise)``, ``decode_mean(params, z)``, ``init_matrix(generator)``; ``memory_per_sample()`` and
    ``description()`` for the runtime and the log."""

    def __init__(self, architecture: str, likelihood: str, shape: VAEShape | ConvVAEShape,
                 image_shape: tuple[int, int] | None):
        self.architecture = architecture
        self.likelihood = likelihood
        self.shape = shape
        self.image_shape = image_shape
        if architecture == "conv":
            self.network: Any = ConvVAE(shape)
            self.layout: Any = ConvLayout(shape)
            self.chunk = 4
        else:
            self.network = vae  # the module's functions
            self.layout = ParamLayout(shape)
            self.chunk = 16

    num_components = property(lambda self: self.shape.num_components)
    input_dim = property(lambda self: self.shape.input_dim)
    num_classes = property(lambda self: self.shape.num_classes)
    latent = property(lambda self: self.shape.latent)

    def elbo(self, params: Params, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample ELBO [G, K, B] (noise [G, K, B, Z]) and class logits [G, K, B, C]."""
        return self.network.elbo(params, x, noise)

    def iw_log_likelihood(self, params: Params, x: torch.Tensor, noise: torch.Tensor,
                          chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-weighted log p_k(x) [G, K, B] (noise [G, S, K, B, Z]) and class logits [G, K, B, C]."""
        return self.network.iw_log_likelihood(params, x, noise, chunk or self.chunk)

    def iw_bound(self, params: Params, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The importance-weighted bound [G, K, B] (noise [G, S, K, B, Z]) with gradients: the
        M-step's objective when ``algorithm.mstep_samples`` > 1. Also the class logits."""
        return vae.iw_bound_of(self.network.encode, self.network.decode, params, x, noise)

    def training_numerics(self) -> ContextManager:
        """The context a group's training (forward and backward) runs in. The conv VAE turns
        oneDNN off: its threaded convolution kernels split the work by the size of the whole
        batch, so with 8+ threads a client's gradients depended on how many clients shared its
        group, hence on the rank count (tests/test_conv_vae.py). PyTorch's own kernels keep each
        client's bits at any thread count; they cost ~1.2x at 1 thread (benchmarks/conv_speed.py)."""
        return _without_onednn() if self.architecture == "conv" else contextlib.nullcontext()

    def decode_mean(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """z [G, S, K, B, Z] -> the mean of p(x | z) [G, S, K, B, D]: sigmoid of the logits
        (Bernoulli) or the decoder's output itself (Gaussian)."""
        out = self.network.decode(params, z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def init_matrix(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """[K, P] float32 initial parameters (PyTorch's default init per component)."""
        return self.layout.init_matrix(generator)

    def memory_per_sample(self) -> int:
        """Peak bytes one (padded) sample of a client adds to a group: the decoder's activations for
        one chunk of importance samples, with room for temporaries."""
        s = self.shape
        if self.architecture == "conv":
            height, width = s.image
            # the ReLUs work in place; measured on CPU (G=8, K=4, 100 samples, 28x28) this is ~1.8x the
            # real growth per client, about the MLP formula's margin
            floats = s.flat + s.channels * (height // 2) * (width // 2) + 3 * s.input_dim + 2 * s.hidden
        else:
            floats = 2 * s.hidden + 3 * s.input_dim
        return 2 * 4 * s.num_components * self.chunk * floats

    def description(self) -> dict[str, Any]:
        """What the log's model description adds so a reader rebuilds this model (``from_description``)."""
        out: dict[str, Any] = {"architecture": self.architecture, "likelihood": self.likelihood,
                               "image_shape": list(self.image_shape) if self.image_shape else None}
        if self.architecture == "conv":
            out["channels"] = self.shape.channels
        return out


def image_shape_of(image_shape: Any, input_dim: int) -> tuple[int, int] | None:
    """(H, W) of the inputs: the scenario's own (when it matches the features), else a square
    side x side when the number of features is a perfect square, else None."""
    if image_shape is not None:
        height, width = (int(v) for v in image_shape)
        if height * width == input_dim:
            return height, width
    side = math.isqrt(input_dim)
    return (side, side) if side * side == input_dim else None


def build(architecture: str, likelihood: str, input_dim: int, num_classes: int, num_components: int, hidden: int,
          latent: int, channels: int = 32, image_shape: Any = None) -> DensityModel:
    """The model; a convolutional one without a usable image shape raises UserError (one line)."""
    if architecture not in ARCHITECTURES:
        raise UserError(f"model.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    if likelihood not in LIKELIHOODS:
        raise UserError(f"model.likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    image = image_shape_of(image_shape, input_dim)
    if architecture == "mlp":
        return DensityModel("mlp", likelihood, VAEShape(num_components, input_dim, num_classes, hidden, latent,
                                                        likelihood), image)
    if image is None:
        raise UserError(f"model.architecture=conv needs images: the scenario gives no image shape and its {input_dim} "
                        "features are not a square number (use model.architecture=mlp)")
    if image[0] % 4 or image[1] % 4:
        raise UserError(f"model.architecture=conv needs an image height and width divisible by 4, got {image[0]}x{image[1]} "
                        "(use model.architecture=mlp)")
    return DensityModel("conv", likelihood, ConvVAEShape(num_components, image, num_classes, hidden, latent, channels,
                                                         likelihood), image)


def density_model(model_config: Any, input_dim: int, num_classes: int, num_components: int,
                  image_shape: Any = None) -> DensityModel:
    """The model ``model_config`` (config.ModelConfig) asks for, on inputs of ``input_dim`` features
    (images of ``image_shape`` (H, W), from the scenario's metadata, if it has one)."""
    return build(model_config.architecture, model_config.likelihood, input_dim, num_classes, num_components,
                 model_config.hidden, model_config.latent, model_config.channels, image_shape)


def from_description(description: dict[str, Any]) -> DensityModel:
    """The model a log's description records (descriptions older than the choice: mlp, bernoulli)."""
    d = description
    return build(str(d.get("architecture", "mlp")), str(d.get("likelihood", "bernoulli")), int(d["input_dim"]),
                 int(d["num_classes"]), int(d["num_components"]), int(d["hidden"]), int(d["latent"]),
                 int(d.get("channels", 32)), d.get("image_shape"))


__all__ = ["ARCHITECTURES", "LIKELIHOODS", "DensityModel", "build", "density_model", "from_description", "image_shape_of"]
