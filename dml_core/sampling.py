"""Training batches, sampled on the device: P x K class-balanced, or two views of each image.

FaceNet (Sec. 3.2) and Hermans et al. 2017 draw P classes and K images of each, so every
anchor has K - 1 positives and (P - 1) K negatives in its batch. Indices are drawn on the
same device as the data with a seeded generator: no DataLoader, no host round-trip (the
width of the random keys is fixed at construction, so a draw reads nothing back).

Label-free runs (``RunConfig.supervision == "views"``) use :class:`ViewSampler` instead: P K / 2
images drawn uniformly, two augmented views of each (``augment``), labelled by image id.

The generator's state is device-specific (a CPU generator's state is 5056 bytes, a CUDA
generator's 16), so :meth:`SeededSampler.state` records the device type beside it and
:meth:`SeededSampler.restore` reseeds deterministically where the state cannot be restored.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dml_core.augment import Augmentation, draw_views


def resume_seed(seed: int, step: int) -> int:
    """A seed for the batches after ``step`` of a run seeded with ``seed`` (a 64-bit hash)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0])


class SeededSampler(abc.ABC):
    """A batch source with its own seeded generator on the device, saved with checkpoints.

    Subclasses set ``seed`` and ``generator`` and write ``batch``.
    """

    seed: int
    generator: torch.Generator

    @abc.abstractmethod
    def batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The next batch's images (B, C, H, W) and the labels the loss and miner see (B,).

        Args:
            images: (M, C, H, W) the training images, on the generator's device.
            labels: (M,) their classes.
        """

    def state(self) -> dict[str, Any]:
        """The generator's state (a CPU uint8 tensor) and the device type it belongs to."""
        return {"device": self.generator.device.type, "state": self.generator.get_state()}

    def restore(self, saved: dict[str, Any] | Tensor, step: int) -> str:
        """Continue from a saved :meth:`state`; returns "" or a sentence saying it reseeded.

        A state saved on another device type cannot be restored here. Then the generator is
        reseeded from (seed, step): the batches are reproducible, but differ from those of an
        uninterrupted run. (A bare tensor is a checkpoint written before the device type was
        saved: its size tells the device type.)
        """
        if isinstance(saved, Tensor):
            size = len(torch.Generator().get_state())
            saved = {"device": "cpu" if len(saved) == size else "cuda", "state": saved}
        here = self.generator.device.type
        if saved["device"] == here:
            self.generator.set_state(saved["state"])
            return ""
        self.generator.manual_seed(resume_seed(self.seed, step))
        return (
            f"The batch sampler's random state was saved on {saved['device'].upper()} and "
            f"cannot be restored on {here.upper()}, so it was reseeded from the run's seed and "
            f"step {step}: the batches from here on differ from an uninterrupted run's."
        )


class PKSampler(SeededSampler):
    """Draws batches of P classes x K distinct samples per class.

    Args:
        labels: (N,) int64 labels of the training set, on the device batches are drawn on.
        P: classes per batch (at most the number of classes).
        K: samples per class (at most the size of the smallest class).
        seed: seed of the sampler's own generator (batches are reproducible).
    """

    def __init__(self, labels: Tensor, P: int, K: int, seed: int = 0) -> None:
        classes, counts = torch.unique(labels, return_counts=True)
        smallest, largest = (int(c) for c in counts.aminmax())
        if len(classes) < P or smallest < K:
            raise ValueError(
                f"Cannot draw P={P} classes x K={K} samples: the data has {len(classes)} "
                f"classes, the smallest with {smallest} samples."
            )
        self.P, self.K = P, K
        self.seed = seed
        order = torch.argsort(labels, stable=True)  # indices grouped by class
        self.order = order
        self.counts = counts  # (C,)
        self.starts = torch.cumsum(counts, 0) - counts  # (C,)
        self.width = largest  # keys per class: enough for the largest class
        self.generator = torch.Generator(device=labels.device).manual_seed(seed)

    def sample(self) -> Tensor:
        """Indices (P * K,) into the training set, grouped by class."""
        device = self.counts.device
        gen = self.generator
        chosen = torch.randperm(len(self.counts), generator=gen, device=device)[: self.P]  # (P,)
        n = self.counts[chosen]  # (P,)
        # K distinct ranks per class: the K smallest of n uniform keys (padding keys are +inf).
        keys = torch.rand(self.P, self.width, generator=gen, device=device)  # (P, width)
        keys.masked_fill_(torch.arange(self.width, device=device)[None, :] >= n[:, None], torch.inf)
        ranks = keys.topk(self.K, dim=1, largest=False).indices  # (P, K)
        return self.order[self.starts[chosen][:, None] + ranks].reshape(-1)  # (P * K,)

    def batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """P x K training images (uint8) and their class labels."""
        idx = self.sample()  # (P*K,)
        return images[idx], labels[idx]


class ViewSampler(SeededSampler):
    """Draws ``n`` distinct images uniformly and makes two augmented views of each.

    SimCLR (Chen et al. 2020, Sec. 2.1): the two views of an image are a positive pair and the
    other 2(n - 1) views its negatives. The label of a view is its image's index in the
    training set, so views act as classes of two for every pair or triplet loss and miner,
    and stay the same image across batches (a cross-batch memory pairs them correctly).

    Args:
        count: number of training images.
        n: images per batch (P K / 2), at most ``count``.
        aug: the augmentation strengths.
        seed: seed of the generator (image draws and augmentations).
        device: where the images are, and so the generator.
    """

    def __init__(
        self, count: int, n: int, aug: Augmentation, seed: int, device: torch.device
    ) -> None:
        if not 1 <= n <= count:
            raise ValueError(f"Cannot draw {n} distinct images from {count}.")
        self.n, self.aug, self.seed = n, aug, seed
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(2n, C, H, W) float views (rows i and n + i: one image) and (2n,) image ids.

        ``labels`` (the true classes) are not used: the loss must not see them.
        """
        views, idx = draw_views(images, self.n, self.aug, self.generator)
        return views, torch.cat([idx, idx])
