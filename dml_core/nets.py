"""Small embedding networks: an MLP and the classic two-layer MNIST ConvNet.

Both take uint8 images (B, C, H, W) of any channel count and size, normalise them inside (so
data can stay uint8 on the device) and return embeddings (B, D), optionally L2-normalised
onto the unit sphere S^{D-1}. The MLP also takes feature vectors (B, d) (a user's feature
table: a metric head on a frozen backbone's features); the ConvNet needs images.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from dml_core.geometry import l2_normalize
from dml_core.seeding import seeded

NETS = ("mlp", "convnet")


class Embedder(nn.Module):
    """A trunk mapping normalised images to R^D, plus optional projection onto the sphere.

    Args:
        trunk: the layers, from (B, C, H, W) (or (B, d) features) float to (B, D).
        mean, std: pixel statistics of the training images (0-255 scale), for normalisation.
        normalize: L2-normalise the output. On the sphere all distances lie in [0, 2] and
            margins have a fixed meaning; without it the net can shrink or inflate the space.
    """

    def __init__(self, trunk: nn.Module, mean: float, std: float, normalize: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(max(float(std), 1e-6)))

    def forward(self, images: Tensor, low_precision: torch.dtype | None = None) -> Tensor:
        """Embed uint8 (or float 0-255) images (B, C, H, W), or features (B, d), -> (B, D).

        With ``low_precision`` (e.g. ``torch.bfloat16``) every layer but the last runs under
        autocast to that type; the last layer, which writes the embedding, stays in float32,
        so the embeddings, their distances and the mining see float32 values (bfloat16 keeps
        8 mantissa bits: distances rounded by ~0.4%, a sizeable share of a 0.2 margin). The
        layers before it carry nearly all the work.
        """
        x = (images.float() - self.mean) / self.std  # (B, C, H, W) or (B, d)
        if low_precision is None:
            emb = self.trunk(x)  # (B, D)
        else:
            *body, head = self.trunk
            with torch.autocast(x.device.type, low_precision):
                for layer in body:
                    x = layer(x)
            emb = head(x.float())  # (B, D)
        return l2_normalize(emb) if self.normalize else emb


def mlp(input_shape: tuple[int, ...], dim: int, hidden: int = 256) -> nn.Module:
    """Flatten -> Linear(hidden) -> ReLU -> Linear(hidden) -> ReLU -> Linear(dim).

    ``input_shape`` is one sample's: ``(C, H, W)`` for images or ``(d,)`` for features.
    """
    return nn.Sequential(
        nn.Flatten(),  # (B, C*H*W) or (B, d)
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, dim),
    )


def convnet(input_shape: tuple[int, ...], dim: int) -> nn.Module:
    """conv3x3(32) -> ReLU -> conv3x3(64) -> ReLU -> maxpool 2 -> Linear(dim).

    The embedding net of pytorch-metric-learning's MNIST example (and PyTorch's MNIST
    example without its classifier head): 28x28 inputs give 64 x 12 x 12 = 9216 features.
    The first convolution takes C channels (1 gray, 3 RGB); the last layer's width follows
    the image size (32x32: 64 x 14 x 14, 64x64: 64 x 30 x 30).

    Raises:
        ValueError: ``input_shape`` is not ``(C, H, W)`` with H, W >= 6 (feature vectors
            need the MLP).
    """
    if len(input_shape) != 3 or min(input_shape[1:]) < 6:
        raise ValueError(
            f"The 'net' parameter 'convnet' needs images (C, H, W) of at least 6x6; got "
            f"samples of shape {tuple(input_shape)}: use 'mlp'."
        )
    c, h, w = input_shape
    features = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3),  # (B, 32, H-2, W-2)
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),  # (B, 64, H-4, W-4)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, (H-4)/2, (W-4)/2)
        nn.Flatten(),  # (B, features)
        nn.Linear(features, dim),
    )


def macs_per_sample(net: Embedder, image_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one image's forward pass through the Linear and Conv2d layers.

    That is the work bf16 autocast can speed up; everything else is elementwise.
    """
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k  # (C_out, H', W') outputs, k MACs each

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    try:
        with torch.no_grad():
            param = next(net.parameters())
            net(torch.zeros((1, *image_shape), device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def build_net(
    name: Literal["mlp", "convnet"],
    image_shape: tuple[int, ...],
    dim: int,
    normalize: bool = True,
    mean: float = 0.0,
    std: float = 255.0,
    seed: int | None = None,
) -> Embedder:
    """Build an embedding net by name for samples of ``image_shape``: ``(C, H, W)`` or ``(d,)``.

    With ``seed``, the initial weights are drawn from a private generator seeded with it
    (``seeding.seeded``): the same seed gives the same net in any thread, whatever else runs.
    Without, from the global generator, as PyTorch's layers do.
    """
    trunks = {"mlp": mlp, "convnet": convnet}
    if name not in trunks:
        raise ValueError(f"The 'net' parameter must be one of {NETS}. Got {name!r}.")
    if seed is None:
        return Embedder(trunks[name](image_shape, dim), mean, std, normalize)
    with seeded(seed):
        return Embedder(trunks[name](image_shape, dim), mean, std, normalize)
