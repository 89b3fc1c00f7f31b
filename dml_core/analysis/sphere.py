r"""Sphere & sampling: distances on S^{n-1}, and which negatives each sampling method picks.

Wu, Manmatha, Smola, Kraehenbuehl, Sampling Matters in Deep Embedding Learning, ICCV 2017,
Sec. 4: on S^{n-1} pairwise distances concentrate near sqrt(2) (Fig. 2, density q(d) of
Eq. 3), so uniform sampling mostly returns negatives at ~sqrt(2); hard negatives sit close to
the anchor, where the direction (a - n) / ||a - n|| of the gradient is dominated by noise
(Fig. 3: its variance grows like 1 / d^2); distance-weighted sampling draws negatives with
probability ~ 1 / q(d) and so spreads them out.

Bounded memory. A P x K batch has B (K - 1) (B - K) triplets (31.5 million at 32 x 32), and
hard or uniform sampling keeps a large share of them. ``sampling_comparison`` therefore mines
the batch in groups of anchor classes (``anchor_class_groups``): the anchors of one group keep
their labels, every other point gets a label of its own, so it stays a negative of every
anchor but is itself the anchor of no triplet. Each group yields exactly the triplets its
anchors have in the whole batch (sampling miners draw from the same distributions), and only
running sums (histogram counts, mean, variance, kinds) outlive a group. Time is bounded too:
beyond ``budgets.MINED_TRIPLETS`` triplets, only the anchors of a random share of the classes
are mined (``anchor_classes``). ``budgets`` holds the cost model of this computation and the
check that runs before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from dml_core import budgets
from dml_core.errors import ConfigError
from dml_core.geometry import l2_normalize, pairwise_distances
from dml_core.registry import MINERS
from dml_core.tuples import EASY, HARD, SEMI_HARD, Triplets, label_masks, triplet_kinds

SAMPLING_METHODS = ("uniform", "semi_hard", "hard", "batch_hard", "distance_weighted")
GRADIENT_NOISE = 0.1  # expected norm of the embedding noise in the gradient-variance estimate
BIN_EDGES = np.linspace(0.0, 2.0, 401)  # (401,) histogram bins of d(a, n): width 0.005
VARIANCE_CHUNK = 1 << 20  # triplets per step of ``gradient_noise_variance``


def uniform_sphere(n_points: int, dim: int, generator: torch.Generator) -> Tensor:
    """(n_points, dim) points uniform on S^{dim-1}: normalised standard Gaussians."""
    x = torch.randn(n_points, dim, generator=generator, dtype=torch.float64)  # (N, dim)
    return l2_normalize(x)


def sample_sphere_distances(dim: int, n_points: int, seed: int) -> np.ndarray:
    """All n (n - 1) / 2 pairwise distances of ``n_points`` uniform points on S^{dim-1}.

    Raises:
        ConfigError: dim < 2, or more points than the ``sphere_points`` budget allows.
    """
    if dim < 2:
        raise ConfigError(f"The 'dim' parameter must be at least 2. Got {dim}.")
    budgets.check("sphere_points", points=n_points, dim=dim)
    points = uniform_sphere(n_points, dim, torch.Generator().manual_seed(seed))
    i, j = torch.triu_indices(n_points, n_points, offset=1)
    return pairwise_distances(points)[i, j].numpy()  # (n (n - 1) / 2,)


def gradient_noise_variance(
    emb: Tensor, triplets: Triplets, sigma: float, chunk: int = VARIANCE_CHUNK
) -> Tensor:
    r"""Noise variance of each triplet's gradient w.r.t. the anchor (Wu et al. 2017, Fig. 3).

    The gradient of d(a,p) - d(a,n) w.r.t. a is g = u - v with unit vectors
    u = (a - p) / d_{ap} and v = (a - n) / d_{an}. Perturb a, p and n by independent isotropic
    noise N(0, s^2 I) with s^2 = \sigma^2 / D (expected noise norm ~ \sigma). To first order,
    du = J_u (e_a - e_p) with J_u = (I - u u^T) / d_{ap} (and likewise v), so

    tr Cov(g) = s^2 [2 tr J_u^2 + 2 tr J_v^2 - 2 tr J_u J_v]
              = 2 s^2 [(D-1) / d_{ap}^2 + (D-1) / d_{an}^2 - (D-2+c^2) / (d_{ap} d_{an})],

    c = u^T v. The 1 / d_{an}^2 term is Wu's point: the closer the negative, the more the
    direction of its gradient is noise. The first-order formula holds while the distances are
    large against the noise; it is capped at 4, the most any difference of two unit vectors
    can vary (a gradient that is pure noise). Returns (T,); checked against Monte Carlo in the
    tests.

    Memory is O(B^2 + chunk), not O(T D): every quantity is read off the Gram matrix
    G = E E^T, as d_{ap}^2 = G_{aa} + G_{pp} - 2 G_{ap} and
    (a - p)^T (a - n) = G_{aa} - G_{an} - G_{pa} + G_{pn}, ``chunk`` triplets at a time.
    """
    e = emb.double()  # (B, D)
    gram = e @ e.T  # (B, B)
    D = emb.shape[1]
    out = torch.empty(len(triplets.anchor), dtype=torch.float32)  # (T,)
    for start in range(0, len(out), chunk):
        a, p, n = (t[start : start + chunk] for t in triplets)  # (t,) each
        g_aa = gram[a, a]
        d_ap = (g_aa + gram[p, p] - 2 * gram[a, p]).clamp_min(0).sqrt().clamp_min(1e-6)  # (t,)
        d_an = (g_aa + gram[n, n] - 2 * gram[a, n]).clamp_min(0).sqrt().clamp_min(1e-6)  # (t,)
        c = (g_aa - gram[a, n] - gram[p, a] + gram[p, n]) / (d_ap * d_an)  # (t,)
        cross = (D - 2 + c.square()) / (d_ap * d_an)
        trace = 2 * (sigma**2 / D) * ((D - 1) / d_ap.square() + (D - 1) / d_an.square() - cross)
        out[start : start + len(a)] = trace.clamp(0.0, 4.0).float()
    return out


def class_triplets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """The classes of the batch and how many triplets are anchored in each: k_c (k_c-1) (B-k_c)."""
    classes, counts = labels.unique(return_counts=True)  # (C,), (C,)
    return classes, counts * (counts - 1) * (len(labels) - counts)


def anchor_classes(labels: Tensor, max_triplets: int, generator: torch.Generator) -> Tensor:
    """The classes whose points are mined as anchors: all of them, or a random share.

    When the batch holds more than ``max_triplets`` triplets, classes are drawn in a random
    order (from ``generator``) while their triplets fit (at least one class): every point
    still serves as a negative, so each anchor's triplets are exact and the statistics are
    those of a random sample of anchors.
    """
    classes, triplets = class_triplets(labels)
    if int(triplets.sum()) <= max_triplets:
        return classes
    order = torch.randperm(len(classes), generator=generator)  # (C,)
    fits = torch.cumsum(triplets[order], 0) <= max_triplets  # (C,)
    fits[0] = True
    return classes[order[fits]].sort().values


def anchor_class_groups(labels: Tensor, anchors: Tensor, max_triplets: int) -> Iterator[Tensor]:
    """Labels under which the batch is mined one group of anchor classes at a time.

    The classes ``anchors`` are taken in order into groups holding at most ``max_triplets``
    triplets (a single class may exceed it alone). For each group, yields (B,) labels: the
    group's points keep their label, every other point gets a label of its own, so it is a
    negative of every anchor of the group but the anchor of no triplet.
    """
    classes, triplets = class_triplets(labels)
    count = dict(zip(classes.tolist(), triplets.tolist(), strict=True))
    own = int(labels.max()) + 1 + torch.arange(len(labels))  # (B,) a label no one else has
    group: list[int] = []
    held = 0
    for cls in anchors.tolist():
        if group and held + count[cls] > max_triplets:
            yield torch.where(torch.isin(labels, torch.tensor(group)), labels, own)
            group, held = [], 0
        group.append(cls)
        held += count[cls]
    if group:
        yield torch.where(torch.isin(labels, torch.tensor(group)), labels, own)


class _Tally:
    """Running statistics of one method's triplets, merged group by group (Chan et al. 1979)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations of d(a, n)
        self.kinds = np.zeros(3, dtype=np.int64)
        self.variance_sum = 0.0
        self.hist = np.zeros(len(BIN_EDGES) - 1, dtype=np.int64)

    def add(self, d_an: Tensor, kinds: Tensor, variance: Tensor) -> None:
        n = len(d_an)
        if n == 0:
            return
        d = d_an.double()
        mean, m2 = float(d.mean()), float((d - d.mean()).square().sum())
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.kinds += np.bincount(kinds.numpy(), minlength=3)
        self.variance_sum += float(variance.double().sum())
        edges = torch.as_tensor(BIN_EDGES[1:-1], dtype=d_an.dtype)
        self.hist += np.bincount(torch.bucketize(d_an, edges).numpy(), minlength=len(self.hist))

    def row(self, method: str) -> dict[str, float | int | str]:
        n = self.count
        share = self.kinds / max(n, 1)
        return {
            "method": method,
            "triplets": n,
            "mean d(a,n)": self.mean if n else np.nan,
            "std d(a,n)": float(np.sqrt(self.m2 / (n - 1))) if n > 1 else np.nan,
            "non-zero loss": float(1 - share[EASY]) if n else np.nan,
            "hard": float(share[HARD]) if n else np.nan,
            "semi-hard": float(share[SEMI_HARD]) if n else np.nan,
            "gradient variance": self.variance_sum / n if n else np.nan,
        }


@dataclass(frozen=True)
class SamplingComparison:
    """Negatives chosen by each sampling method on one batch (see ``sampling_comparison``).

    Attributes:
        dim: the embedding dimension.
        counts: method -> (len(BIN_EDGES) - 1,) int64 histogram of d(a, n) over every selected
            triplet, in the bins ``BIN_EDGES`` (exact counts, not a sample).
        table: one row per method: triplets, mean / std of d(a, n), share with non-zero
            triplet loss, and the gradient noise variance.
        anchors: how many points were mined as anchors (all B, or the points of a random
            share of the classes when the batch has more than ``max_triplets`` triplets).
        batch: B, the batch size (every point is a candidate negative).
        anchor_classes: the labels of the classes whose points were anchors.
        classes: the classes in the batch.
        groups: how many groups of anchor classes the batch was mined in.
    """

    dim: int
    counts: dict[str, np.ndarray]
    table: pd.DataFrame
    anchors: int
    batch: int
    anchor_classes: tuple[int, ...]
    classes: int
    groups: int


def sampling_comparison(
    dim: int,
    P: int,
    K: int,
    seed: int,
    margin: float = 0.2,
    emb: np.ndarray | Tensor | None = None,
    labels: np.ndarray | Tensor | None = None,
    group_triplets: int = budgets.GROUP_TRIPLETS,
    max_triplets: int = budgets.MINED_TRIPLETS,
) -> SamplingComparison:
    """Which negatives uniform, semi-hard, hard, hardest and distance-weighted sampling choose.

    Wu et al. 2017, Sec. 4. Every method is a registered miner run on the same batch:
    ``random`` as uniform sampling (one negative per anchor-positive pair on average),
    ``semi_hard`` (FaceNet Eq. 4), ``hard`` (every d(a,n) <= d(a,p)), ``batch_hard`` (each
    anchor's nearest negative: "hard negative mining" in Wu et al.) and ``distance_weighted``.
    Memory: the batch is mined in groups of anchor classes of at most ``group_triplets``
    triplets (see the module docstring). Time: beyond ``max_triplets`` triplets, only the
    anchors of a random share of the classes are mined (``anchor_classes``), every point of
    the batch still a candidate negative.

    Args:
        dim: n, the embedding dimension (the batch lies on S^{n-1}).
        P: classes in the batch.
        K: samples per class (the batch is P x K; only its labels matter for uniform points).
        seed: seeds the points, the sampling miners, the anchor classes and the noise.
        margin: alpha of the semi-hard miner and of the non-zero-loss column.
        emb: a real batch (B, dim) instead of uniform points (``dim``, P, K then ignored).
        labels: (B,) labels of ``emb``.
        group_triplets: the most triplets mined at once (one class may exceed it alone).
        max_triplets: the most triplets mined in all (at least one class's).

    Raises:
        ConfigError: P or K below 2, dim below 2, or a batch beyond the
            ``sampling_comparison`` budget (one sentence, raised before anything is
            allocated); running out of memory anyway also ends in one sentence, with the
            memory released.
    """
    if emb is None:
        if P < 2 or K < 2:
            name, value = ("P", P) if P < 2 else ("K", K)
            raise ConfigError(f"The '{name}' parameter must be at least 2. Got {value}.")
        if dim < 2:
            raise ConfigError(f"The 'dim' parameter must be at least 2. Got {dim}.")
        sizes = {"P": P, "K": K, "dim": dim}
    else:
        per_class = np.unique(np.asarray(labels), return_counts=True)[1]
        sizes = {"P": len(per_class), "K": int(per_class.max()), "dim": int(np.shape(emb)[1])}
    budgets.check(
        "sampling_comparison", **sizes, group_triplets=group_triplets, max_triplets=max_triplets
    )
    return budgets.guarded(
        "the sampling comparison",
        _compare,
        dim,
        P,
        K,
        seed,
        margin,
        emb,
        labels,
        group_triplets,
        max_triplets,
    )


def _compare(
    dim: int,
    P: int,
    K: int,
    seed: int,
    margin: float,
    emb: np.ndarray | Tensor | None,
    labels: np.ndarray | Tensor | None,
    group_triplets: int,
    max_triplets: int,
) -> SamplingComparison:
    """``sampling_comparison`` once its sizes passed the budget check."""
    gen = torch.Generator().manual_seed(seed)
    if emb is None:
        emb_t = uniform_sphere(P * K, dim, gen).float()  # (B, dim)
        labels_t = torch.arange(P).repeat_interleave(K)  # (B,)
    else:
        emb_t = l2_normalize(torch.as_tensor(np.asarray(emb), dtype=torch.float32))
        labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    negatives_per_anchor = int(label_masks(labels_t)[1].sum(dim=1).max())
    miners = {
        "uniform": MINERS.create("random", fraction=1 / negatives_per_anchor, seed=seed),
        "semi_hard": MINERS.create("semi_hard", margin=margin),
        "hard": MINERS.create("hard"),
        "batch_hard": MINERS.create("batch_hard"),
        "distance_weighted": MINERS.create("distance_weighted", seed=seed),
    }
    dist = pairwise_distances(emb_t)  # (B, B)
    anchors = anchor_classes(labels_t, max_triplets, gen)
    tallies = {method: _Tally() for method in miners}
    groups = 0
    for group_labels in anchor_class_groups(labels_t, anchors, group_triplets):
        groups += 1
        for method, miner in miners.items():
            triplets = miner(emb_t, group_labels)
            a, p, n = triplets
            d_ap, d_an = dist[a, p], dist[a, n]  # (T,)
            kinds = triplet_kinds(d_ap, d_an, margin)  # (T,)
            variance = gradient_noise_variance(emb_t, triplets, GRADIENT_NOISE)  # (T,)
            tallies[method].add(d_an, kinds, variance)
            del triplets, a, p, n, d_ap, d_an, kinds, variance  # free before the next miner
    return SamplingComparison(
        dim=int(emb_t.shape[1]),
        counts={method: tally.hist for method, tally in tallies.items()},
        table=pd.DataFrame([tally.row(method) for method, tally in tallies.items()]),
        anchors=int(torch.isin(labels_t, anchors).sum()),
        batch=len(labels_t),
        anchor_classes=tuple(anchors.tolist()),
        classes=len(labels_t.unique()),
        groups=groups,
    )
