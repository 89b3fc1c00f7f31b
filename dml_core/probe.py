"""The probe set: a fixed, class-balanced sample of test images, measured at every snapshot.

``ProbeMeter.measure`` embeds it and turns it into a :class:`~dml_core.snapshot.Snapshot`:
leave-one-out retrieval within the probe set, a sample of positive and negative pair
distances (seeded, so a resumed run samples the same pairs), collapse signals and the loss's
own lines and extras. This is the whole cost of a live update.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dml_core import metrics
from dml_core.config import RunConfig
from dml_core.data import Split
from dml_core.evaluation import embed
from dml_core.losses.base import Loss
from dml_core.nets import Embedder
from dml_core.snapshot import Snapshot, make_probe_indices

__all__ = ["COLLAPSE_SHRINK", "ProbeMeter", "collapse_advice"]

PAIR_SAMPLE = 5000  # positive and negative pair distances sampled per snapshot (each)

COLLAPSE_SHRINK = 0.25  # collapse: mean probe distance below this share of the untrained one


def collapse_advice(cfg: RunConfig) -> str:
    """What the collapse warning says for this run's own loss and miner."""
    seen = (
        "Collapse: the probe points have crowded together, far closer than at the start (see the "
        "sphere histogram). "
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
    """

    def __init__(self, cfg: RunConfig, query: Split) -> None:
        probe = make_probe_indices(query.y.numpy(), cfg.probe_size, cfg.seed)
        self.x = query.x[probe]  # (n, 1, H, W)
        self.y = query.y[probe]  # (n,)
        self.initial_mean_distance: float | None = None
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
        if self.initial_mean_distance is None:
            self.initial_mean_distance = collapse["mean_distance"]
        collapse["collapsing"] = float(
            collapse["collapsed_fraction"] >= 0.5
            or collapse["mean_distance"] < COLLAPSE_SHRINK * self.initial_mean_distance
        )
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
        )

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the untrained mean distance and the pair generator."""
        return {
            "initial_mean_distance": self.initial_mean_distance,
            "pair_rng": self._pair_gen.get_state(),  # which pairs snapshots sample
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (older checkpoints may lack the pair generator)."""
        self.initial_mean_distance = state.get("initial_mean_distance")
        if "pair_rng" in state:  # checkpoints from before 2026-11-29 lack it
            self._pair_gen.set_state(state["pair_rng"])
