r"""Two augmented views of each image, on the device: what label-free training asks to match.

SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020, Sec. 3 and Appendix A) learns without
labels by making two random views of each image agree: random resized crop, then colour
distortion and blur. Our images are small and grey, so the family here is the geometric part
(random resized crop, plus a small rotation and translation, as in its ablation of Fig. 4)
and additive Gaussian pixel noise in place of colour distortion.

Every view gets one affine matrix :math:`\theta \in \mathbb{R}^{2 \times 3}` mapping output
coordinates to input coordinates (both in [-1, 1], ``align_corners=False``):

.. math::  \theta = [\,\mathrm{diag}(w, h)\, R(\varphi) \mid c + t\,]

with the crop's half-extents ``(w, h)`` (area fraction ``s = w h`` drawn from
``[crop_scale, 1]``, aspect ratio ``w / h`` log-uniform in ``[3/4, 4/3]`` as torchvision's
``RandomResizedCrop``, narrowed where a side would leave the image), its centre ``c``
uniform where the crop fits, the rotation :math:`\varphi` uniform in ``±rotation`` degrees
and the shift ``t`` uniform in ``±translate`` image sides. All views of a batch are
resampled by one ``affine_grid`` + ``grid_sample`` call (bilinear, zeros outside: the
datasets' black background), then noise of standard deviation ``noise`` x 255 is added and
pixels are clipped to [0, 255]. Pixels stay on the 0-255 scale of the uint8 data, which
``nets.Embedder`` normalises itself.

All randomness comes from one ``torch.Generator`` on the images' device (the batch
sampler's, which checkpoints save), so runs are reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:
    from dml_core.config import RunConfig
    from dml_core.data import Dataset

ASPECT_RANGE = (3 / 4, 4 / 3)
"""Aspect ratios (w / h) of the random resized crop, log-uniform (SimCLR, torchvision)."""
PIXEL_MAX = 255.0


@dataclass(frozen=True)
class Augmentation:
    """The strengths of the view augmentations (``RunConfig``'s declared fields).

    Attributes:
        crop_scale: smallest area fraction kept by the random resized crop, in (0, 1].
        rotation: largest rotation, in degrees.
        translate: largest shift along each axis, as a fraction of the image side.
        noise: standard deviation of the pixel noise, as a fraction of the pixel range.
    """

    crop_scale: float = 0.5
    rotation: float = 15.0
    translate: float = 0.1
    noise: float = 0.05

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Augmentation:
        """The strengths a run config declares."""
        return cls(cfg.crop_scale, cfg.rotation, cfg.translate, cfg.noise)


def view_affines(n: int, aug: Augmentation, generator: torch.Generator) -> Tensor:
    """``n`` random affine matrices (n, 2, 3), output -> input coordinates in [-1, 1].

    Drawn from one ``torch.rand(n, 7)`` on the generator's device (see the module docstring).
    """
    device = generator.device
    u = torch.rand(n, 7, generator=generator, device=device)  # (n, 7) uniforms in [0, 1)
    area = aug.crop_scale + (1.0 - aug.crop_scale) * u[:, 0]  # (n,) s in [crop_scale, 1]
    low, high = (math.log(r) for r in ASPECT_RANGE)
    ratio = torch.exp(low + (high - low) * u[:, 1])  # (n,) w / h
    # Half-extents (1 = the whole image); a side that would overflow is cut to the image and
    # the other grows to keep the area (so crop_scale = 1 keeps the whole image).
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # (n,)
    h = (area / w).clamp(max=1.0)  # (n,)
    w = area / h
    cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # (n,) crop centre, inside the image
    cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
    phi = math.radians(aug.rotation) * (2.0 * u[:, 4] - 1.0)  # (n,)
    tx = 2.0 * aug.translate * (2.0 * u[:, 5] - 1.0)  # (n,) a side is 2 units long
    ty = 2.0 * aug.translate * (2.0 * u[:, 6] - 1.0)
    cos, sin = torch.cos(phi), torch.sin(phi)
    row_x = torch.stack([w * cos, -w * sin, cx + tx], dim=1)  # (n, 3)
    row_y = torch.stack([h * sin, h * cos, cy + ty], dim=1)  # (n, 3)
    return torch.stack([row_x, row_y], dim=1)  # (n, 2, 3)


def augment(images: Tensor, aug: Augmentation, generator: torch.Generator) -> Tensor:
    """One random view of each image: (n, C, H, W) uint8 or float 0-255 -> float32 0-255."""
    x = images.float()  # (n, C, H, W)
    theta = view_affines(len(x), aug, generator)  # (n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (n, H, W, 2)
    views = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if aug.noise > 0:
        noise = torch.randn(views.shape, generator=generator, device=views.device)
        views = views + (aug.noise * PIXEL_MAX) * noise
    return views.clamp(0.0, PIXEL_MAX)


def draw_views(
    images: Tensor, n: int, aug: Augmentation, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` distinct images drawn uniformly, two views of each.

    Args:
        images: (M, C, H, W) the training images, on the generator's device.
        n: images to draw (at most M).
        aug: the augmentation strengths.
        generator: the source of all randomness (draw, then augmentation).

    Returns:
        views: (2n, C, H, W) float32 0-255; rows i and n + i are the two views of one image.
        idx: (n,) the drawn images' indices into ``images``.
    """
    idx = torch.randperm(len(images), generator=generator, device=images.device)[:n]  # (n,)
    source = images[idx]  # (n, C, H, W)
    return augment(torch.cat([source, source]), aug, generator), idx


def example_views(cfg: RunConfig, dataset: Dataset, n: int = 8) -> np.ndarray:
    """Two views of ``n`` training images, as a run seeded like ``cfg`` draws them on the CPU.

    They are the first ``n`` images of the run's first batch when ``n`` is
    ``cfg.images_per_batch`` (the CPU generator; a CUDA run's stream differs).

    Returns:
        (n, 2, H, W) float32 in [0, 1] (first channel).
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    n = min(n, len(dataset.train))
    views, _ = draw_views(dataset.train.x, n, Augmentation.from_config(cfg), generator)
    pairs = torch.stack([views[:n, 0], views[n:, 0]], dim=1)  # (n, 2, H, W)
    return (pairs / PIXEL_MAX).numpy()
