"""A Snapshot: what the live views need to draw one moment of a training run.

Small and immutable; numpy only, so figures and pages never touch torch. Written to disk by
``runs.py`` (one ``.npz`` per snapshot) and read back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ARRAY_FIELDS = ("probe_emb", "probe_labels", "pos_dist", "neg_dist")
# Arrays only some snapshots have (None otherwise; files from before 2026-11-30 lack them).
OPTIONAL_ARRAY_FIELDS = ("class_weights", "class_weight_labels")


@dataclass(frozen=True)
class Snapshot:
    """The state of a run at one step.

    Attributes:
        step: optimiser steps taken.
        samples_seen: training samples consumed (step * P * K).
        elapsed: seconds of training so far (snapshot time excluded).
        loss: mean batch loss over the steps since the previous snapshot.
        active_fraction: share of the tuples mined since the previous snapshot that had a
            non-zero loss (all tuples of those steps pooled; NaN when nothing was mined).
        kind_shares: share of easy / semi-hard / hard triplets among those the loss used,
            pooled over those steps (triplet losses; empty otherwise).
        mining: how mining went over those steps: ``tuples_per_batch`` (mean number of tuples
            the loss received) and ``empty_batches`` (share of steps whose miner found none).
        metrics: leave-one-out retrieval metrics within the probe set (``precision_at_1``,
            ``r_precision``, ``map_at_r``) and ``pair_overlap``, the histogram-loss estimate
            of P(d_neg < d_pos) from the sampled distances.
        collapse: collapse signals of the probe embeddings (``mean_distance``,
            ``collapsed_fraction``), ``collapsing``: point collapse, 1.0 when half the pairs
            sit on top of each other or the mean distance fell below a quarter of the
            untrained net's, and ``dimensional_collapse``: 1.0 when the effective rank fell
            below ``rank_floor`` (``probe.rank_floor``; both absent before 2026-11-30).
        extras: learnable scalars worth plotting (e.g. ``beta`` of the margin loss).
        lines: the loss's margins as absolute distances at this step, drawn on the distance
            histograms (``distance_lines()`` of the loss; e.g. m_pos, m_neg, or beta +- alpha).
        geometry: the probe embeddings' shape: ``alignment`` and ``uniformity`` (Wang & Isola
            2020, positives = same class; lower is better for both) and ``effective_rank``
            (Roy & Vetterli 2007). Empty in runs saved before 2026-11-30.
        class_weights: a class-level loss's class weights or centres, L2-normalised as the
            loss compares them, (rows, D) float32; None for other losses.
        class_weight_labels: the class of each row of ``class_weights``, (rows,) int64.
        probe_emb: embeddings of the fixed, class-balanced probe set, (n, D) float32.
        probe_labels: their labels, (n,) int64.
        pos_dist: a sample of positive-pair distances on the probe set, float32.
        neg_dist: a sample of negative-pair distances on the probe set, float32.
    """

    step: int
    samples_seen: int
    elapsed: float
    loss: float
    active_fraction: float
    probe_emb: np.ndarray
    probe_labels: np.ndarray
    pos_dist: np.ndarray
    neg_dist: np.ndarray
    kind_shares: dict[str, float] = field(default_factory=dict)
    mining: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    collapse: dict[str, float] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)
    lines: dict[str, float] = field(default_factory=dict)
    geometry: dict[str, float] = field(default_factory=dict)
    class_weights: np.ndarray | None = None
    class_weight_labels: np.ndarray | None = None

    def scalars(self) -> dict[str, float]:
        """One flat row for the metrics table: step, time, loss, shares, metrics, geometry."""
        row: dict[str, float] = {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "elapsed": self.elapsed,
            "loss": self.loss,
            "active_fraction": self.active_fraction,
        }
        groups = (
            self.kind_shares,
            self.mining,
            self.metrics,
            self.collapse,
            self.extras,
            self.geometry,
        )
        for group in groups:
            row.update(group)
        return row


def make_probe_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A fixed, class-balanced sample of indices: about size / C of each class, sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, size // len(classes))
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes
    ]  # each (<= per_class,)
    return np.sort(np.concatenate(chosen))
