r"""Verification: is this pair the same class? A distance threshold t decides (d <= t: same).

From the distances of positive pairs (same class) and negative pairs (different classes):

- true-accept rate  TAR(t) = |{pos: d <= t}| / |pos|   (also TPR; 1 - FNMR / FRR)
- false-accept rate FAR(t) = |{neg: d <= t}| / |neg|   (also FPR / FMR)
- the ROC curve is TAR against FAR as t sweeps over all distances (Fawcett, "An introduction
  to ROC analysis", Pattern Recognition Letters 2006), computed with
  ``sklearn.metrics.roc_curve`` on the score -d (larger = more similar);
- TAR@FAR=f is the TAR of the largest threshold whose FAR is at most f. This is the step
  (conservative) reading of the empirical ROC: a real threshold achieves it, whereas linear
  interpolation between ROC vertices is only reachable by randomising between two thresholds.
  It is reported only when there are at least ``MIN_FALSE_ACCEPTS / f`` negative pairs, i.e.
  when FAR = f means at least ``MIN_FALSE_ACCEPTS`` false accepts; otherwise NaN and a note
  (with 5,000 negatives, FAR = 1e-3 would rest on 5 pairs);
- the equal error rate EER is where FAR(t) = FRR(t) = 1 - TAR(t), linearly interpolated
  between the two ROC vertices where FRR - FAR changes sign (as in the NIST / bob.measure
  convention);
- the best threshold maximises TAR - FAR (Youden's J statistic, Youden 1950).

These are the numbers TensorFlow Similarity's ``calibrate()`` and Open Metric Learning's
FNMR@FMR report; here they are also drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_curve

from dml_core.metrics import sample_pair_distances

TARGET_FARS = (1e-2, 1e-3)
MIN_FALSE_ACCEPTS = 10


@dataclass(frozen=True)
class Verification:
    """ROC summary of a set of positive and negative pair distances.

    Attributes:
        far: (m,) false-accept rates of the ROC's corners, ascending (straight lines between
            them are the empirical ROC exactly).
        tar: (m,) true-accept rates at those corners.
        thresholds: (m,) their distance thresholds t (accept when d <= t); the first is -inf.
        tar_at_far: {f: TAR@FAR=f} for ``TARGET_FARS`` (NaN where not estimable).
        threshold_at_far: {f: the threshold giving it} (NaN where not estimable).
        eer: equal error rate, in [0, 1].
        eer_threshold: the distance threshold at the EER.
        best_threshold: the threshold maximising TAR - FAR.
        best_tar: TAR at ``best_threshold``.
        best_far: FAR at ``best_threshold``.
        n_pos: number of positive pairs.
        n_neg: number of negative pairs.
        notes: sentences for the user (e.g. too few negatives for FAR = 1e-3).
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    tar_at_far: dict[float, float]
    threshold_at_far: dict[float, float]
    eer: float
    eer_threshold: float
    best_threshold: float
    best_tar: float
    best_far: float
    n_pos: int
    n_neg: int
    notes: tuple[str, ...] = field(default=())


def verification(
    pos: np.ndarray, neg: np.ndarray, target_fars: tuple[float, ...] = TARGET_FARS
) -> Verification:
    """ROC, TAR@FAR, EER and best threshold from positive / negative pair distances.

    Args:
        pos: distances of same-class pairs, 1-D, at least one.
        neg: distances of different-class pairs, 1-D, at least one.
        target_fars: the FARs at which TAR is read.

    Raises:
        ValueError: when either set is empty or holds non-finite values.
    """
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"Verification needs positive and negative pairs. Got {pos.size} positive and "
            f"{neg.size} negative pairs."
        )
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("The pair distances must be finite.")
    same = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    far, tar, score_thresholds = roc_curve(
        same, -np.concatenate([pos, neg]), drop_intermediate=False
    )
    thresholds = -score_thresholds  # accept when -d >= s, i.e. d <= -s; first is -inf

    notes: list[str] = []
    tar_at, thr_at = {}, {}
    for f in target_fars:
        if neg.size * f < MIN_FALSE_ACCEPTS:
            tar_at[f] = thr_at[f] = float("nan")
            notes.append(
                f"TAR at FAR = {f:g} is not estimated: {neg.size:,} negative pairs are too "
                f"few (FAR = {f:g} would rest on {neg.size * f:.1f} false accepts; "
                f"at least {int(np.ceil(MIN_FALSE_ACCEPTS / f)):,} are needed)."
            )
            continue
        i = int(np.flatnonzero(far <= f)[-1])  # last vertex within the FAR budget
        tar_at[f], thr_at[f] = float(tar[i]), float(thresholds[i])

    frr = 1.0 - tar
    gap = frr - far  # decreasing from 1 to -1 along the ROC
    j = int(np.flatnonzero(gap <= 0)[0])  # first vertex where FAR >= FRR
    if gap[j] == 0:  # gap[0] = 1, so j >= 1
        eer, eer_thr = float(far[j]), float(thresholds[j])
    else:
        w = gap[j - 1] / (gap[j - 1] - gap[j])  # linear crossing between j - 1 and j
        eer = float((1 - w) * far[j - 1] + w * far[j])
        lo = thresholds[j - 1] if np.isfinite(thresholds[j - 1]) else thresholds[j]
        eer_thr = float((1 - w) * lo + w * thresholds[j])

    b = int(np.argmax(tar - far))
    # the corners of the staircase describe the curve exactly (sklearn's drop_intermediate)
    corner = np.r_[True, (np.diff(far, 2) != 0) | (np.diff(tar, 2) != 0), True]
    return Verification(
        far=far[corner],
        tar=tar[corner],
        thresholds=thresholds[corner],
        tar_at_far=tar_at,
        threshold_at_far=thr_at,
        eer=eer,
        eer_threshold=eer_thr,
        best_threshold=float(thresholds[b]),
        best_tar=float(tar[b]),
        best_far=float(far[b]),
        n_pos=int(pos.size),
        n_neg=int(neg.size),
        notes=tuple(notes),
    )


def evaluation_pairs(
    emb: np.ndarray,
    labels: np.ndarray,
    max_points: int = 2000,
    max_pairs: int = 200_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative pair distances of an evaluation set, for :func:`verification`.

    A uniform random subsample of at most ``max_points`` points (fixed seed) gives all its
    i < j pairs, each kind capped at ``max_pairs`` (``metrics.sample_pair_distances``).
    2,000 points over 10 classes give ~1.8M negative pairs, so with the default cap FAR = 1e-3
    rests on 200 false accepts.
    """
    emb = np.asarray(emb, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if len(labels) > max_points:
        keep = np.sort(rng.choice(len(labels), max_points, replace=False))
        emb, labels = emb[keep], labels[keep]
    generator = torch.Generator().manual_seed(seed)
    return sample_pair_distances(
        torch.from_numpy(emb), torch.from_numpy(labels), max_pairs, generator
    )
