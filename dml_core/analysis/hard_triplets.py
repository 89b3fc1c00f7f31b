r"""The hardest triplets of a snapshot: the (anchor, positive, negative) the loss most wants fixed.

Over every triplet (a, p, n) of the probe set (p of a's class, n of another), the violation is

.. math::
    v(a, p, n) = b(d(a,p)) - d(a,n),

where b is the loss's own ``negative_boundary``: the distance beyond which a negative stops
costing, d(a,p) + \alpha for the triplet loss (Schroff et al., FaceNet, CVPR 2015, Eq. 1),
\sqrt{d(a,p)^2 + \alpha_1} for the quadruplet loss (Chen et al. 2017, Eq. 5). v > 0: the loss
still pushes that negative out. Losses without a triplet boundary (pair, proxy, classification
losses) get b(d) = d: a triplet is violated when its negative is closer than its positive, the
ranking error every loss ends up fighting. The margin shown is b(d(a,p)) - d(a,p).

The probe set has n (K - 1)(n - K) triplets (716.4 million for 2000 points in 10 classes), too many
to list. b is increasing, so the k most violating triplets use, for each anchor, only its k
farthest positives and its k nearest negatives: (k x k) candidates per anchor, then the k best.
How many triplets violate at all is counted exactly, by sorting each anchor's negative
distances once and locating each positive's boundary among them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dml_core.config import RunConfig
from dml_core.geometry import pairwise_distances
from dml_core.tuples import triplet_kinds

Boundary = Callable[[Tensor], Tensor]
CHUNK = 512  # anchors per block: (CHUNK, n) distances


@dataclass(frozen=True)
class HardTriplets:
    """The most violating triplets of a point set, most violating first.

    Attributes:
        anchor, positive, negative: (m,) int64 rows of the point set, m <= k (only triplets
            with a positive violation are kept).
        d_ap, d_an: (m,) float64 distances d(a,p) and d(a,n).
        margin: (m,) b(d(a,p)) - d(a,p), the margin the loss asks for on each triplet.
        violation: (m,) b(d(a,p)) - d(a,n) > 0.
        kind: (m,) EASY / SEMI_HARD / HARD codes (``tuples.triplet_kinds`` with that margin;
            never EASY here, since every triplet kept violates it).
        violating: how many triplets of the whole set violate (v > 0).
        total: how many triplets the set has.
        rule: one line saying when a triplet is satisfied, for captions.
    """

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    d_ap: np.ndarray
    d_an: np.ndarray
    margin: np.ndarray
    violation: np.ndarray
    kind: np.ndarray
    violating: int
    total: int
    rule: str

    def __len__(self) -> int:
        return len(self.anchor)


def _identity(d_ap: Tensor) -> Tensor:
    """b(d) = d: a negative must be at least as far as the positive."""
    return d_ap


def loss_boundary(cfg: RunConfig, num_classes: int) -> tuple[Boundary, str]:
    """The loss's own ``negative_boundary`` and a line describing it, for the run ``cfg``.

    The loss is built from the registry with the run's parameters (inside ``fork_rng``, so the
    global random state is untouched); its declared ``triplet_boundary`` (cross-batch memory:
    its inner loss's).
    Losses that are not triplet losses get b(d) = d.
    """
    context = {"num_classes": num_classes, "embedding_dim": cfg.embedding_dim}
    with torch.random.fork_rng():
        loss = cfg.loss_entry.create(context, **cfg.loss_params)
    boundary = loss.triplet_boundary()  # declared by the loss (cross-batch memory: its inner)
    if boundary is not None:
        probe = torch.tensor([0.0, 1.0], dtype=torch.float64)
        widths = boundary(probe) - probe  # (2,) constant for an additive margin
        if torch.isclose(widths[0], widths[1]):
            text = f"the {cfg.loss} loss is satisfied when d(a,n) ≥ d(a,p) + {float(widths[0]):g}"
        else:
            text = f"the {cfg.loss} loss is satisfied beyond its boundary b(d(a,p)) > d(a,p)"
        return boundary, text
    return _identity, (
        f"the {cfg.loss} loss has no triplet margin: a triplet is violated when its negative "
        "is closer than its positive"
    )


def _top(values: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """The k largest (or smallest) entries of each row, values and column indices."""
    k = min(k, values.shape[1])
    return torch.topk(values, k, dim=1, largest=largest)


def hardest_triplets(
    emb: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    k: int = 8,
    boundary: Boundary = _identity,
    rule: str = "violated when the negative is closer than the positive",
    one_per_anchor: bool = False,
) -> HardTriplets:
    """The k triplets (a, p, n) of the set with the largest violation b(d(a,p)) - d(a,n) > 0.

    Args:
        emb: (n, D) embeddings (distances as the loss measures them: Euclidean, at least
            float32).
        labels: (n,) class labels.
        k: how many, at least 1.
        boundary: b, increasing in d(a,p): the loss's ``negative_boundary`` (``loss_boundary``).
        rule: the caption line of ``HardTriplets.rule``.
        one_per_anchor: keep only each anchor's most violating triplet, so one odd image
            cannot fill the list.

    Ties in violation are ordered by (a, p, n); which of several exactly tied candidates
    enters the list at its end is otherwise arbitrary.
    """
    if k < 1:
        raise ValueError(f"The 'k' parameter must be at least 1. Got {k}.")
    x = torch.as_tensor(np.asarray(emb))
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # (n, D)
    y = torch.as_tensor(np.asarray(labels))  # (n,)
    n = len(x)
    found: list[Tensor] = []  # one (m, 6) block of candidates per chunk of anchors
    violating = total = 0
    for start in range(0, n, CHUNK):
        rows = torch.arange(start, min(start + CHUNK, n))  # (c,)
        dist = pairwise_distances(x[rows], x)  # (c, n)
        same = y[rows, None] == y[None, :]  # (c, n)
        pos = same & (rows[:, None] != torch.arange(n)[None, :])  # (c, n) positives, not self
        neg = ~same  # (c, n)
        total += int((pos.sum(1) * neg.sum(1)).sum())
        far = dist.masked_fill(~pos, -torch.inf)  # (c, n) positives' distances, else -inf
        near = dist.masked_fill(~neg, torch.inf)  # (c, n) negatives' distances, else +inf
        violating += _count_violations(far, near, pos, boundary)
        d_p, p = _top(far, k, largest=True)  # (c, kp) farthest positives
        d_n, m = _top(near, k, largest=False)  # (c, kn) nearest negatives
        b = boundary(d_p.clamp_min(0.0))  # (c, kp); the clamp keeps sqrt finite on padding
        v = b[:, :, None] - d_n[:, None, :]  # (c, kp, kn)
        ok = d_p.isfinite()[:, :, None] & d_n.isfinite()[:, None, :] & (v > 0)  # (c, kp, kn)
        i, j, q = ok.nonzero(as_tuple=True)  # each (m,): anchor row, positive, negative rank
        columns = (v[i, j, q], rows[i], p[i, j], m[i, q], d_p[i, j], d_n[i, q])
        found.append(torch.stack([c.double() for c in columns], dim=1))  # (m, 6)
    table = torch.cat(found).numpy()  # (M, 6): violation, a, p, n, d(a,p), d(a,n)
    order = np.lexsort((table[:, 3], table[:, 2], table[:, 1], -table[:, 0]))  # (M,)
    table = table[order]
    if one_per_anchor:
        table = table[np.unique(table[:, 1], return_index=True)[1]]  # first = worst per anchor
        table = table[np.lexsort((table[:, 3], table[:, 2], table[:, 1], -table[:, 0]))]
    best = table[:k]  # (m, 6)
    a, p, m = (best[:, c].astype(np.int64) for c in (1, 2, 3))
    d_ap, d_an = torch.from_numpy(best[:, 4]), torch.from_numpy(best[:, 5])  # (m,) each
    margin = boundary(d_ap) - d_ap  # (m,)
    kind = triplet_kinds(d_ap, d_an, margin)  # type: ignore[arg-type]  # per-triplet margin
    return HardTriplets(
        a, p, m, d_ap.numpy(), d_an.numpy(), margin.numpy(), best[:, 0], kind.numpy(),
        violating, total, rule,
    )  # fmt: skip


def _count_violations(far: Tensor, near: Tensor, pos: Tensor, boundary: Boundary) -> int:
    """How many (a, p, n) of these anchor rows have d(a,n) < b(d(a,p)), exactly.

    ``far`` holds each row's positive distances (-inf elsewhere), ``near`` its negative ones
    (+inf elsewhere), both (c, n). Each row's negative distances are sorted once (numpy's
    sort: several times torch's on CPU); the number of negatives closer than a positive's
    boundary is its left insertion point among them (one ``searchsorted`` per anchor).
    """
    d_neg = np.sort(near.numpy(), axis=1)  # (c, n), +inf last
    b = boundary(far.clamp_min(0.0)).numpy()  # (c, n), read at the positives only
    is_pos = pos.numpy()
    return sum(
        int(np.searchsorted(row, b[r, is_pos[r]], side="left").sum()) for r, row in enumerate(d_neg)
    )


def snapshot_hardest_triplets(
    probe_emb: np.ndarray, probe_labels: np.ndarray, cfg: RunConfig, k: int = 8, **options: bool
) -> HardTriplets:
    """``hardest_triplets`` of a snapshot's probe set, judged by the run's own loss boundary.

    Args:
        probe_emb: ``Snapshot.probe_emb``, (n, D).
        probe_labels: ``Snapshot.probe_labels``, (n,).
        cfg: the run's config (its loss and loss parameters).
        k: how many.
        **options: ``one_per_anchor``.
    """
    boundary, rule = loss_boundary(cfg, int(np.max(probe_labels)) + 1)
    return hardest_triplets(probe_emb, probe_labels, k, boundary, rule, **options)
