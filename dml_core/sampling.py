"""P x K class-balanced batches, sampled on the device.

FaceNet (Sec. 3.2) and Hermans et al. 2017 draw P classes and K images of each, so every
anchor has K - 1 positives and (P - 1) K negatives in its batch. Indices are drawn on the
same device as the data with a seeded generator: no DataLoader, no host round-trip.
"""

from __future__ import annotations

import torch
from torch import Tensor


class PKSampler:
    """Draws batches of P classes x K distinct samples per class.

    Args:
        labels: (N,) int64 labels of the training set, on the device batches are drawn on.
        P: classes per batch (at most the number of classes).
        K: samples per class (at most the size of the smallest class).
        seed: seed of the sampler's own generator (batches are reproducible).
    """

    def __init__(self, labels: Tensor, P: int, K: int, seed: int = 0) -> None:
        classes, counts = torch.unique(labels, return_counts=True)
        if len(classes) < P or int(counts.min()) < K:
            raise ValueError(
                f"Cannot draw P={P} classes x K={K} samples: the data has {len(classes)} "
                f"classes, the smallest with {int(counts.min())} samples."
            )
        self.P, self.K = P, K
        order = torch.argsort(labels, stable=True)  # indices grouped by class
        self.order = order
        self.counts = counts  # (C,)
        self.starts = torch.cumsum(counts, 0) - counts  # (C,)
        self.generator = torch.Generator(device=labels.device).manual_seed(seed)

    def sample(self) -> Tensor:
        """Indices (P * K,) into the training set, grouped by class."""
        device = self.counts.device
        gen = self.generator
        chosen = torch.randperm(len(self.counts), generator=gen, device=device)[: self.P]  # (P,)
        n = self.counts[chosen]  # (P,)
        # K distinct ranks per class: the K smallest of n uniform keys (padding keys are +inf).
        width = int(n.max())
        keys = torch.rand(self.P, width, generator=gen, device=device)  # (P, width)
        keys.masked_fill_(torch.arange(width, device=device)[None, :] >= n[:, None], torch.inf)
        ranks = keys.topk(self.K, dim=1, largest=False).indices  # (P, K)
        return self.order[self.starts[chosen][:, None] + ranks].reshape(-1)  # (P * K,)
