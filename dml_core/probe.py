"""The probe set: a fixed, class-balanced sample of test images, measured at every snapshot.

``ProbeMeter.measure`` embeds it and turns it into a :class:`~dml_core.snapshot.Snapshot`:
leave-one-out retrieval within the probe set, a sample of positive and negative pair
distances (seeded, so a resumed run samples the same pairs), collapse signals and the loss's
own lines and extras, the representation's geometry (alignment, uniformity, effective rank)
and the class weights of a class-level loss. This is the whole cost of a live update.

Two kinds of collapse are signalled (the Train page warns on either; ``collapse_kind``):

- **point collapse**, ``collapse["collapsing"]`` (its meaning since the first runs): the probe
  points crowd together (half the pairs on top of each other, or the mean distance below
  ``COLLAPSE_SHRINK`` of the untrained net's);
- **dimensional collapse**, ``collapse["dimensional_collapse"]`` (Jing et al., "Understanding
  Dimensional Collapse in Contrastive Self-supervised Learning", ICLR 2022): the points may
  stay apart but fill only a few directions, seen as the effective rank (Roy & Vetterli 2007;
  RankMe, Garrido et al. 2023) falling towards 1. The rule is :func:`rank_floor`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dml_core import metrics
from dml_core.config import RunConfig, train_class_count
from dml_core.data import Split
from dml_core.evaluation import embed
from dml_core.geometry import l2_normalize
from dml_core.losses.base import Loss
from dml_core.nets import Embedder
from dml_core.snapshot import Snapshot, make_probe_indices

__all__ = [
    "COLLAPSE_SHRINK",
    "RANK_COLLAPSE_SHARE",
    "ProbeMeter",
    "collapse_advice",
    "collapse_kind",
    "geometry",
    "geometry_subset",
    "normalized_class_weights",
    "rank_floor",
]

PAIR_SAMPLE = 5000  # positive and negative pair distances sampled per snapshot (each)

COLLAPSE_SHRINK = 0.25  # collapse: mean probe distance below this share of the untrained one
RANK_COLLAPSE_SHARE = 0.5  # dimensional collapse: rank lost over half its way down to 1
GEOMETRY_POINTS = 600  # alignment and uniformity use at most this many probe points


def rank_floor(initial_rank: float | None, dim: int, num_classes: int) -> float:
    """The effective rank below which the probe embeddings count as dimensionally collapsed.

    floor = 1 + RANK_COLLAPSE_SHARE * (reference - 1), reference = min(r0, D, C):

    - r0, the untrained net's effective rank on the probe set (where the run started; unknown,
      e.g. after resuming an old checkpoint, it is left out);
    - D, the embedding dimension, the most any rank can be;
    - C, the number of probe classes: a supervised embedding may rightly gather each class
      around one direction (C directions, rank about C or C - 1), so losing rank down to C is
      not a failure.

    So the signal fires once the rank has fallen more than half of the way from the reference
    down to 1, where every point lies on one line through the origin. Measured on digits (D 32,
    300 steps): untrained r0 = 19.2; healthy triplet, contrastive, ArcFace and NT-Xent runs stay
    at 15-20, while hard-mined triplets fall to 3.5 (floor 5.5). At D = 3: r0 = 2.8, healthy
    runs 2.9 (floor 1.9).
    """
    reference = float(min(dim, num_classes))
    if initial_rank is not None and np.isfinite(initial_rank):
        reference = min(reference, float(initial_rank))
    return 1.0 + RANK_COLLAPSE_SHARE * max(reference - 1.0, 0.0)


def geometry_subset(labels: np.ndarray, seed: int) -> np.ndarray | None:
    """The probe points that alignment and uniformity use.

    All of them (None) up to GEOMETRY_POINTS, else a fixed, seeded, class-balanced sample of
    about that many (``make_probe_indices``). Their O(n^2) pairs cost as much as the retrieval
    metrics at n = 2000; 600 points (180k pairs, 18k positive) cost a tenth and land within
    about 1% (uniformity) and 2-5% (alignment) of all 2000 points' values (FashionMNIST,
    three seeds), and the same points at every snapshot make the path's steps the net's.
    """
    if len(labels) <= GEOMETRY_POINTS:
        return None
    return make_probe_indices(labels, GEOMETRY_POINTS, seed)


def geometry(
    emb: torch.Tensor, labels: torch.Tensor, subset: np.ndarray | None = None
) -> dict[str, float]:
    """The probe embeddings' shape, as ``Snapshot.geometry``.

    Alignment and uniformity (Wang & Isola 2020, Eqs. 1-2; positives = same class) on the
    rows ``subset`` (all when None; see ``geometry_subset``) and the effective rank (Roy &
    Vetterli 2007) of all rows. NaN rank for non-finite embeddings (the SVD would fail; a
    diverging run's last snapshot must still be taken).
    """
    rows = slice(None) if subset is None else torch.as_tensor(subset)
    values = metrics.alignment_uniformity(emb[rows], labels[rows])
    finite = bool(torch.isfinite(emb).all())
    values["effective_rank"] = metrics.effective_rank(emb) if finite else float("nan")
    return values


def normalized_class_weights(
    loss: Loss | nn.Module, num_classes: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The loss's class weights on the unit sphere, as it compares them, with their classes.

    Every class-level loss (proxies, ArcFace, CosFace, sub-centre ArcFace, SoftTriple) compares
    samples with its weights by cosine, so the weights are drawn L2-normalised. Rows are
    class-major (``Loss.class_weights``): with K = rows / C centres per class, row r belongs to
    class r // K.

    Returns:
        ((rows, D) float32 unit vectors, (rows,) int64 classes), or None for other losses.
    """
    weights = loss.class_weights() if isinstance(loss, Loss) else None
    if weights is None:
        return None
    unit = l2_normalize(weights.detach().float()).cpu().numpy().astype(np.float32)
    per_class = max(1, len(unit) // max(1, num_classes))  # K
    return unit, (np.arange(len(unit)) // per_class).astype(np.int64)


def collapse_kind(signals: Mapping[str, float]) -> str | None:
    """``"point"``, ``"dimensional"`` or None: which collapse a snapshot's signals show.

    Point collapse wins when both fire (merged points are also low-rank). Runs saved before
    2026-11-30 have only ``collapsing`` (point collapse).
    """
    if signals.get("collapsing"):
        return "point"
    if signals.get("dimensional_collapse"):
        return "dimensional"
    return None


def collapse_advice(cfg: RunConfig, collapse: Mapping[str, float] | None = None) -> str:
    """What the collapse warning says: which kind of collapse, for this run's loss and miner.

    Args:
        cfg: the run's config.
        collapse: the snapshot's signals (``Snapshot.scalars()``); with
            ``collapse_kind`` "dimensional", the advice is about dimensional collapse
            (quoting ``effective_rank`` and ``rank_floor``); otherwise about points.
    """
    signals = collapse or {}
    if collapse_kind(signals) == "dimensional":
        rank, floor = signals.get("effective_rank"), signals.get("rank_floor")
        measured = (
            f" (effective rank {rank:.1f}, below {floor:.1f})"
            if rank is not None and floor is not None
            else ""
        )
        return (
            "Dimensional collapse: the probe points stay apart but now spread along only a few "
            f"directions{measured}; see the effective rank below. The embedding wastes most of "
            f"its {cfg.embedding_dim} dimensions, and classes that differ along the lost "
            f"directions can no longer be told apart. With {cfg.loss} and the {cfg.miner} "
            "miner, try a smaller learning rate, a lower temperature or more negatives per "
            "batch (more classes P)."
        )
    seen = (
        "Point collapse: the probe points have crowded together, far closer than at the start "
        "(see the sphere histogram). "
    )
    if cfg.miner in ("hard", "batch_hard"):
        return seen + (
            f"The {cfg.miner} miner feeds the loss only the hardest negatives, and with a margin "
            "the easiest way to satisfy them is to shrink everything; semi-hard mining (FaceNet) "
            "avoids this. Retrieval metrics ignore scale, so they can still look good."
        )
    return seen + (
        f"With {cfg.loss} and the {cfg.miner} miner, try a smaller learning rate or margin. "
        "Retrieval metrics ignore scale, so they can still look good."
    )


class ProbeMeter:
    """Measures a net on the probe set drawn from ``query`` (``cfg.probe_size`` images).

    Args:
        cfg: the run's config (probe size and seed).
        query: the split the probe is drawn from (the test split).
        num_classes: rows of a class-level loss's weights (the trainer's); None: the
            built-in dataset's training classes (``config.train_class_count``).
    """

    def __init__(self, cfg: RunConfig, query: Split, num_classes: int | None = None) -> None:
        probe = make_probe_indices(query.y.numpy(), cfg.probe_size, cfg.seed)
        self.x = query.x[probe]  # (n, C, H, W) or (n, d)
        self.y = query.y[probe]  # (n,)
        self.geometry_rows = geometry_subset(self.y.numpy(), cfg.seed)  # None: every point
        self.initial_mean_distance: float | None = None
        self.initial_rank: float | None = None  # the untrained net's effective rank
        if num_classes is None:
            num_classes = train_class_count(cfg.dataset, cfg.split)
        self.num_classes = num_classes  # rows of class weights
        self._pair_gen = torch.Generator().manual_seed(cfg.seed)

    def measure(
        self,
        net: Embedder,
        loss: Loss | nn.Module,
        device: torch.device,
        low_precision: torch.dtype | None,
        stats: dict[str, Any],
        *,
        step: int,
        samples_seen: int,
        elapsed: float,
    ) -> Snapshot:
        """Embed the probe set and measure it; ``stats`` are the steps' pooled statistics."""
        emb = embed(net, self.x, device, low_precision)  # (n, D)
        labels = self.y
        retrieval = metrics.retrieval_metrics(
            emb, labels, emb, labels, same_set=True, with_nmi=False
        )
        pos, neg = metrics.sample_pair_distances(emb, labels, PAIR_SAMPLE, self._pair_gen)
        collapse = metrics.collapse_signals(emb)
        shape = geometry(emb, labels, self.geometry_rows)
        if self.initial_mean_distance is None:
            self.initial_mean_distance = collapse["mean_distance"]
        if self.initial_rank is None and step == 0:  # only the untrained net sets it
            self.initial_rank = shape["effective_rank"]
        collapse["collapsing"] = float(  # point collapse
            collapse["collapsed_fraction"] >= 0.5
            or collapse["mean_distance"] < COLLAPSE_SHRINK * self.initial_mean_distance
        )
        floor = rank_floor(self.initial_rank, emb.shape[1], len(torch.unique(labels)))
        collapse["rank_floor"] = floor
        collapse["dimensional_collapse"] = float(shape["effective_rank"] < floor)
        weights = normalized_class_weights(loss, self.num_classes)
        retrieval["pair_overlap"] = metrics.pair_overlap(pos, neg)
        lines = loss.histogram_lines(pos)
        return Snapshot(
            step=step,
            samples_seen=samples_seen,
            elapsed=elapsed,
            loss=float(stats.get("loss", np.nan)),
            active_fraction=float(stats.get("active_fraction", np.nan)),
            mining=stats.get("mining", {}),
            probe_emb=emb.numpy().astype(np.float32),
            probe_labels=labels.numpy().astype(np.int64),
            pos_dist=pos,
            neg_dist=neg,
            kind_shares=stats.get("kind_shares", {}),
            metrics=retrieval,
            collapse=collapse,
            extras=loss.extras(),
            lines={k: float(v) for k, v in lines.items()},
            geometry=shape,
            class_weights=None if weights is None else weights[0],
            class_weight_labels=None if weights is None else weights[1],
        )

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the untrained mean distance and rank, the pair generator."""
        return {
            "initial_mean_distance": self.initial_mean_distance,
            "initial_rank": self.initial_rank,
            "pair_rng": self._pair_gen.get_state(),  # which pairs snapshots sample
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (older checkpoints may lack the pair generator)."""
        self.initial_mean_distance = state.get("initial_mean_distance")
        self.initial_rank = state.get("initial_rank")  # absent before 2026-11-30: rank_floor
        if "pair_rng" in state:  # checkpoints from before 2026-11-29 lack it
            self._pair_gen.set_state(state["pair_rng"])
