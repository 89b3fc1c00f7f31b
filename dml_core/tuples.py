"""The one contract between miners and losses: index tuples over a batch.

Order and meaning follow pytorch-metric-learning, so tests can hand these straight to it
as ``indices_tuple``: pairs are ``(a1, p, a2, n)`` and triplets ``(a, p, n)``, each a 1-D
int64 tensor of indices into the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Pairs(NamedTuple):
    """Positive pairs ``(anchor_pos[i], pos[i])`` and negative pairs ``(anchor_neg[j], neg[j])``."""

    anchor_pos: Tensor
    pos: Tensor
    anchor_neg: Tensor
    neg: Tensor


class Triplets(NamedTuple):
    """Triplets ``(anchor[i], pos[i], neg[i])``: same label for a and p, different for a and n."""

    anchor: Tensor
    pos: Tensor
    neg: Tensor


Tuples = Pairs | Triplets


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean (B, B) masks of positive pairs (same label, i != j) and negative pairs."""
    same = labels[:, None] == labels[None, :]  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def all_pairs(labels: Tensor) -> Pairs:
    """Every ordered positive pair and every ordered negative pair of the batch."""
    pos_mask, neg_mask = label_masks(labels)
    a1, p = pos_mask.nonzero(as_tuple=True)
    a2, n = neg_mask.nonzero(as_tuple=True)
    return Pairs(a1, p, a2, n)


def all_triplets(labels: Tensor) -> Triplets:
    """Every valid triplet (a, p, n) of the batch: B * (K - 1) * (B - K) of them for P x K."""
    return to_triplets(all_pairs(labels))


def to_pairs(tuples: Tuples) -> Pairs:
    """Pairs from either kind: triplet (a, p, n) gives pairs (a, p) and (a, n), deduplicated."""
    if isinstance(tuples, Pairs):
        return tuples
    a, p, n = tuples
    if len(a) == 0:
        return Pairs(a, p, a, n)
    # one int64 key per pair (a * size + b): 1-D unique is far faster than unique(dim=1),
    # and sorting the keys gives the same lexicographic order
    size = int(torch.maximum(a.max(), torch.maximum(p.max(), n.max()))) + 1
    pos = torch.unique(a * size + p)  # (n_pos,)
    neg = torch.unique(a * size + n)  # (n_neg,)
    return Pairs(pos // size, pos % size, neg // size, neg % size)


def to_triplets(tuples: Tuples) -> Triplets:
    """Triplets from either kind: each positive pair joined with every negative pair of its anchor.

    Works in O(number of triplets) memory: negatives are grouped by anchor, and each positive
    pair (a, p) is repeated once per negative of a.
    """
    if isinstance(tuples, Triplets):
        return tuples
    a1, p, a2, n = tuples
    if len(a1) == 0 or len(a2) == 0:
        return Triplets(a1[:0], p[:0], n[:0])
    size = int(torch.maximum(a1.max(), a2.max())) + 1
    order = torch.argsort(a2, stable=True)
    a2, n = a2[order], n[order]
    neg_count = torch.bincount(a2, minlength=size)  # (size,)
    neg_start = torch.cumsum(neg_count, 0) - neg_count  # (size,) first negative of each anchor
    reps = neg_count[a1]  # (n_pos,) negatives available to each positive pair
    pos_idx = torch.repeat_interleave(torch.arange(len(a1), device=a1.device), reps)  # (T,)
    group_start = torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)  # (T,)
    offset = torch.arange(len(pos_idx), device=a1.device) - group_start  # (T,) rank within group
    neg_idx = neg_start[a1[pos_idx]] + offset  # (T,)
    return Triplets(a1[pos_idx], p[pos_idx], n[neg_idx])


EASY, SEMI_HARD, HARD = 0, 1, 2
TRIPLET_KINDS = ("easy", "semi-hard", "hard")


def triplet_kinds(d_ap: Tensor, d_an: Tensor, margin: float) -> Tensor:
    """Class of each triplet relative to the margin (FaceNet, Sec. 3.2), as int64 codes.

    hard (2): d(a,n) <= d(a,p); semi-hard (1): d(a,p) < d(a,n) < d(a,p) + margin;
    easy (0): d(a,n) >= d(a,p) + margin (zero hinge loss).
    """
    kinds = torch.full_like(d_ap, SEMI_HARD, dtype=torch.int64)
    kinds[d_an <= d_ap] = HARD
    kinds[d_an >= d_ap + margin] = EASY
    return kinds
