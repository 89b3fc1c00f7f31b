"""Uniform samples of the i < j pairs of one kind (same label or not), without listing all pairs.

The pair-distance histograms (Musgrave et al. 2020, "A Metric Learning Reality Check") show
a uniform sample of a probe set's positive and negative pairs. Listing every pair first costs
O(n^2) indices: 2,000 probe points have 2.0M pairs, and listing them, finding each kind and
permuting 1.8M negatives took 61 ms per snapshot, against 5,000 pairs of each kind kept.

``sample_pairs`` draws instead. A kind with many more pairs than asked for is sampled by
rejection: an ordered pair (i, j), i != j, drawn uniformly gives each unordered pair {i, j}
probability 2 / (n (n - 1)), the same for all; pairs of the other kind are rejected, and the
first ``k`` distinct pairs drawn are a uniform sample of k without replacement. A kind with
few pairs (at most ``DENSE`` times ``k``, where rejection would mostly redraw pairs it has)
is listed and permuted, positives class by class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

DENSE = 4
"""A kind with at most this many times the pairs asked for is listed, not drawn."""


def pair_counts(labels: Tensor) -> tuple[int, int]:
    """(positive, negative) numbers of i < j pairs: same label, different labels."""
    n = labels.numel()
    sizes = torch.unique(labels, return_counts=True)[1].long()
    positive = int((sizes * (sizes - 1) // 2).sum())
    return positive, n * (n - 1) // 2 - positive


def _listed(labels: Tensor, positive: bool) -> tuple[Tensor, Tensor]:
    """Every i < j pair of the kind, as (i, j); positives class by class, O(pairs)."""
    if not positive:
        i, j = torch.triu_indices(len(labels), len(labels), offset=1)
        keep = labels[i] != labels[j]
        return i[keep], j[keep]
    rows, cols = [], []
    for value in torch.unique(labels):
        members = torch.nonzero(labels == value).squeeze(1)  # ascending
        a, b = torch.triu_indices(len(members), len(members), offset=1)
        rows.append(members[a])
        cols.append(members[b])
    return torch.cat(rows), torch.cat(cols)


def _drawn(
    labels: Tensor, positive: bool, k: int, share: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """The first k distinct i < j pairs of the kind drawn uniformly (rejection sampling)."""
    n = len(labels)
    kept = np.zeros(0, dtype=np.int64)  # pair ids i * n + j, in the order drawn
    first = np.zeros(0, dtype=np.int64)  # where each distinct id was first drawn
    while len(first) < k:
        draws = math.ceil(1.25 * (k - len(first)) / share) + 64
        i = torch.randint(0, n, (draws,), generator=generator)
        j = torch.randint(0, n - 1, (draws,), generator=generator)
        j = j + (j >= i).long()  # uniform over j != i
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        match = (labels.index_select(0, lo) == labels.index_select(0, hi)) == positive
        kept = np.concatenate([kept, (lo[match] * n + hi[match]).numpy()])
        first = np.unique(kept, return_index=True)[1]  # (np.unique's own sort is slower)
    ids = torch.from_numpy(kept[np.sort(first)[:k]])
    return ids // n, ids % n


def sample_pairs(
    labels: Tensor, positive: bool, k: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A uniform sample, without replacement, of at most ``k`` i < j pairs of one kind.

    Args:
        labels: (n,) integer labels, on the CPU.
        positive: same-label pairs (True) or different-label pairs (False).
        k: the most pairs returned; all the kind's pairs when it has no more.
        generator: the random generator (CPU); None uses torch's global one.

    Returns:
        ``(i, j)``: int64 index tensors with i < j, in random order.
    """
    labels = labels.reshape(-1).long().cpu()
    n = len(labels)
    count = pair_counts(labels)[0 if positive else 1]
    k = max(0, min(k, count))
    if k == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if count > DENSE * k:
        return _drawn(labels, positive, k, count / (n * (n - 1) // 2), generator)
    i, j = _listed(labels, positive)
    order = torch.randperm(len(i), generator=generator)[:k]
    return i[order], j[order]
