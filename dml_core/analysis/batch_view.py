r"""Miner view: one batch under the microscope, and what each registered miner picks.

Draw one P x K batch (Hermans et al., In Defense of the Triplet Loss, 2017, Sec. 3), embed it
with an untrained net or a saved run's checkpoint, run every chosen miner from ``MINERS`` on it
(the registered code, never a second copy of its logic) and classify each selected negative
relative to the margin, as FaceNet does (Schroff et al. 2015, Sec. 3.2): hard d(a,n) <= d(a,p),
semi-hard d(a,p) < d(a,n) < d(a,p) + \alpha, easy beyond. Every miner's triplets are kept, so
the batch is checked against the ``batch`` budget first (``budgets``).

The sphere and the sampling comparison (Wu et al. 2017) live in ``analysis.sphere``.
Everything is vectorised torch; results are numpy (and one pandas table) for the figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from dml_core import budgets
from dml_core.config import check_against_dataset, loss_margin_field, make_config
from dml_core.config_data import dataset_value
from dml_core.data import load_for_config
from dml_core.errors import ConfigError
from dml_core.evaluation import embed
from dml_core.geometry import l2_normalize, pairwise_distances
from dml_core.nets import NETS, build_net
from dml_core.registry import LOSSES, MINERS
from dml_core.runs import RunStore
from dml_core.sampling import PKSampler
from dml_core.tuples import (
    TRIPLET_KINDS,
    Pairs,
    label_masks,
    to_triplets,
    triplet_kinds,
)
from dml_core.user_data.for_runs import thumbnails

SAMPLING_METHODS = ("uniform", "semi_hard", "hard", "batch_hard", "distance_weighted")
GRADIENT_NOISE = 0.1  # expected norm of the embedding noise in the gradient-variance estimate


# ---------------------------------------------------------------------------- Miner view


@dataclass(frozen=True)
class UntrainedNet:
    """A freshly initialised net (weights seeded with the batch seed)."""

    net: str = "mlp"
    dim: int = 32


@dataclass(frozen=True)
class SavedRun:
    """The net of a saved run, from its last checkpoint (``RunStore(runs_dir)``)."""

    runs_dir: str | Path
    run_id: str


@dataclass(frozen=True)
class Batch:
    """One embedded P x K batch.

    Attributes:
        emb: (B, D) float32 embeddings on the unit sphere.
        labels: (B,) int64, grouped by class (K consecutive samples each).
        images: (B, H, W) uint8.
        class_names: names of the dataset's classes, indexed by label.
        source: one line saying which net embedded it.
    """

    emb: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    class_names: tuple[str, ...]
    source: str


def saved_run_margin(runs_dir: str | Path, run_id: str) -> float | None:
    """The margin a saved run mined with: its miner's ``margin``, else its loss's margin.

    None when neither has one (e.g. batch-hard mining with a multi-similarity loss).
    """
    cfg = RunStore(runs_dir).load(run_id).config
    if "margin" in cfg.miner_params:
        return float(cfg.miner_params["margin"])
    field = loss_margin_field(cfg.loss)
    if field is None:
        return None
    default = LOSSES[cfg.loss].params.model_fields[field].default
    return float(cfg.loss_params.get(field, default))


def draw_batch(
    dataset: str, P: int, K: int, seed: int, net_source: UntrainedNet | SavedRun
) -> Batch:
    """Draw one P x K batch of ``dataset``'s training part and embed it.

    Args:
        dataset: a name from ``data.DATASETS`` or a user's data path (the standard split).
            A saved run must have been trained on it.
        P: classes in the batch (2 .. number of classes).
        K: samples per class (2 .. the smallest class); K = 1 leaves no positive.
        seed: seeds the sampler and, for an untrained net, the weights.
        net_source: ``UntrainedNet(net, dim)`` or ``SavedRun(runs_dir, run_id)``.

    Raises:
        ConfigError: the message names the field ('P', 'K', 'dataset', ...).
    """
    if isinstance(net_source, SavedRun):
        store = RunStore(net_source.runs_dir)
        cfg = store.load(net_source.run_id).config
        if cfg.dataset != dataset_value(dataset):
            raise ConfigError(
                f"The 'dataset' parameter must be {cfg.dataset!r}, the data run "
                f"{net_source.run_id} was trained on. Got {dataset!r}."
            )
        data = load_for_config(cfg)
    else:
        if net_source.net not in NETS:
            raise ConfigError(f"The 'net' parameter must be one of {NETS}. Got {net_source.net!r}.")
        cfg = make_config(dataset=dataset, net=net_source.net, embedding_dim=net_source.dim)
        data = load_for_config(cfg)
    if K < 2:
        raise ConfigError(
            f"The 'K' parameter must be at least 2: with K = {K} no anchor has a positive, so "
            f"no miner can form a triplet. Got {K}."
        )
    checked = cfg.model_copy(update={"classes_per_batch": P, "samples_per_class": K})
    try:
        check_against_dataset(checked, data)
    except ConfigError as err:
        raise ConfigError(
            str(err)
            .replace("'classes_per_batch' (P)", "'P'")
            .replace("'samples_per_class' (K)", "'K'")
        ) from None
    if P < 2:
        raise ConfigError(f"The 'P' parameter must be at least 2 (negatives). Got {P}.")
    pixels = data.train.x.float()  # mean / std as Trainer uses (a checkpoint overwrites them)
    mean, std = float(pixels.mean()), float(pixels.std())
    net = build_net(
        cfg.net, data.input_shape, cfg.embedding_dim, cfg.normalize, mean, std, seed=seed
    )
    if isinstance(net_source, SavedRun):
        net.load_state_dict(store.load_checkpoint(net_source.run_id)["net"])
        step = store.status(net_source.run_id).get("step", "?")
        source = f"run {net_source.run_id} ({cfg.net}, D = {cfg.embedding_dim}, step {step})"
    else:
        source = f"untrained {cfg.net}, D = {cfg.embedding_dim}, weights seeded with {seed}"
    idx = PKSampler(data.train.y, P, K, seed).sample()  # (P*K,)
    with torch.no_grad():
        emb = l2_normalize(embed(net, data.train.x[idx], torch.device("cpu")))  # (B, D)
    return Batch(
        emb.numpy().astype(np.float32),
        data.train.y[idx].numpy(),
        thumbnails(data.train.x[idx]),
        tuple(data.class_names),
        source,
    )


@dataclass(frozen=True)
class AnchorView:
    """What one miner selects for one anchor, judged against one chosen positive.

    The margin rings and the kind of every negative refer to the same positive p, so a mark
    and its ring always agree: hard inside d(a,p), semi-hard between d(a,p) and d(a,p) + margin,
    easy beyond (FaceNet, Sec. 3.2).

    Attributes:
        anchor: the anchor's batch index.
        positive: the positive the kinds and rings refer to (default: the farthest in the batch).
        positives, pos_dist: every positive the miner selects for the anchor, and d(a, p).
        negatives, neg_dist: the negatives the miner uses with ``positive``: those of its
            triplets (a, positive, n), or for pair miners every negative pair of the anchor
            (a triplet loss joins each with every positive pair); and d(a, n).
        neg_kind: (n_neg,) EASY / SEMI_HARD / HARD of each negative against ``positive``: the
            kind of the triplet (a, positive, n).
        radius: d(a, positive); the rings are at ``radius`` and ``radius + margin``.
    """

    anchor: int
    positive: int
    positives: np.ndarray
    pos_dist: np.ndarray
    negatives: np.ndarray
    neg_dist: np.ndarray
    neg_kind: np.ndarray
    radius: float


@dataclass(frozen=True)
class MinerSelection:
    """What one miner selected from the batch.

    Attributes:
        name: registry key.
        kind: "pairs" or "triplets" (the miner's native output).
        tuples: its native index arrays, (a1, p, a2, n) or (a, p, n).
        triplets: (a, p, n) as a triplet loss would see them (pairs joined by ``to_triplets``).
        kinds: (T,) EASY / SEMI_HARD / HARD of each of ``triplets``.
    """

    name: str
    kind: str
    tuples: tuple[np.ndarray, ...]
    triplets: tuple[np.ndarray, np.ndarray, np.ndarray]
    kinds: np.ndarray

    @property
    def pos_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Selected positive pairs (anchor, positive)."""
        return self.tuples[:2]

    @property
    def neg_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Selected negative pairs (anchor, negative)."""
        return self.tuples[2:] if self.kind == "pairs" else (self.tuples[0], self.tuples[2])


@dataclass(frozen=True)
class MiningResult:
    """Every chosen miner's selection on one batch, with the distances they were judged by."""

    dist: np.ndarray  # (B, B) Euclidean distances
    labels: np.ndarray  # (B,)
    margin: float
    selections: dict[str, MinerSelection] = field(default_factory=dict)

    def positives_of(self, anchor: int) -> np.ndarray:
        """Batch indices of the anchor's positives (same label, not itself), farthest first."""
        index = np.arange(len(self.labels))
        mask = (self.labels == self.labels[anchor]) & (index != anchor)  # (B,)
        candidates = index[mask]
        return candidates[np.argsort(-self.dist[anchor, candidates], kind="stable")]

    def anchor_view(self, name: str, anchor: int, positive: int | None = None) -> AnchorView:
        """What miner ``name`` selects for ``anchor``, judged against ``positive``.

        Args:
            name: a miner of ``selections``.
            anchor: batch index of the anchor.
            positive: batch index of one of the anchor's positives; None: the farthest.

        Raises:
            ConfigError: ``positive`` is not a positive of ``anchor``.
        """
        sel, d = self.selections[name], self.dist[anchor]
        candidates = self.positives_of(anchor)
        if positive is None:
            positive = int(candidates[0]) if len(candidates) else anchor
        elif positive not in candidates:
            raise ConfigError(
                f"The 'positive' parameter must be a positive of anchor #{anchor} "
                f"(one of {candidates.tolist()}). Got {positive}."
            )
        a1, p = sel.pos_pairs
        positives = np.unique(p[a1 == anchor])
        if sel.kind == "pairs":  # a triplet loss joins every negative pair with every positive
            a2, n = sel.neg_pairs
            negatives = np.unique(n[a2 == anchor])
        else:
            ta, tp, tn = sel.triplets
            negatives = np.unique(tn[(ta == anchor) & (tp == positive)])
        radius = float(d[positive])
        d_an = torch.as_tensor(d[negatives])  # (n_neg,)
        kind = triplet_kinds(torch.full_like(d_an, radius), d_an, self.margin).numpy()
        return AnchorView(
            anchor, int(positive), positives, d[positives], negatives, d[negatives], kind, radius
        )

    def summary(self) -> pd.DataFrame:
        """One row per miner: tuples selected, share of each kind, mean distances."""
        rows = []
        for name, sel in self.selections.items():
            a1, p = sel.pos_pairs
            a2, n = sel.neg_pairs
            total = len(sel.kinds)
            shares = np.bincount(sel.kinds, minlength=3) / max(total, 1)
            rows.append(
                {
                    "miner": name,
                    "output": sel.kind,
                    "tuples selected": len(sel.tuples[0]) + (len(a2) if sel.kind == "pairs" else 0),
                    "triplets": total,
                    **{k: float(s) for k, s in zip(TRIPLET_KINDS, shares, strict=True)},
                    "mean d(a,p)": float(self.dist[a1, p].mean()) if len(a1) else np.nan,
                    "mean d(a,n)": float(self.dist[a2, n].mean()) if len(a2) else np.nan,
                }
            )
        return pd.DataFrame(rows)


def miner_params(name: str, params: Mapping[str, Any], margin: float) -> dict[str, Any]:
    """The parameters a miner is built with: ``params`` plus the shared margin if it has one.

    One margin for the miner and for the colouring (as ``config.apply_margin`` does for runs).
    """
    values = dict(params)
    if "margin" in MINERS[name].params.model_fields:
        values["margin"] = margin
    return values


def mine_all(
    emb: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    miners: Mapping[str, Mapping[str, Any]],
    margin: float,
) -> MiningResult:
    """Run each registered miner on the batch and classify what it selects.

    Args:
        emb: (B, D) embeddings (normalised by ``draw_batch``).
        labels: (B,) labels.
        miners: registry name -> parameters (validated by the registry; errors name the field).
            A miner with a ``margin`` parameter gets ``margin``.
        margin: alpha of FaceNet Eq. (4): the easy / semi-hard / hard boundary.

    Raises:
        ConfigError: unknown miner, a bad parameter, a batch with no positive pair, or one
            beyond the ``batch`` budget (every miner's triplets are kept).
    """
    emb_t = torch.as_tensor(np.asarray(emb), dtype=torch.float32)  # (B, D)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)  # (B,)
    if not (0 < margin <= 2):
        raise ConfigError(f"The 'margin' parameter must be in (0, 2]. Got {margin}.")
    if not label_masks(labels_t)[0].any():
        raise ConfigError("The 'K' parameter must be at least 2: no anchor has a positive.")
    per_class = labels_t.unique(return_counts=True)[1]  # (P,)
    budgets.check("batch", P=len(per_class), K=int(per_class.max()), dim=emb_t.shape[1])
    dist = pairwise_distances(emb_t)  # (B, B)
    selections = {}
    for name, params in miners.items():
        miner = MINERS.create(name, **miner_params(name, params, margin))
        tuples = miner(emb_t, labels_t)
        triplets = to_triplets(tuples)
        a, p, n = triplets
        kinds = triplet_kinds(dist[a, p], dist[a, n], margin)  # (T,)
        selections[name] = MinerSelection(
            name,
            "pairs" if isinstance(tuples, Pairs) else "triplets",
            tuple(t.numpy() for t in tuples),
            tuple(t.numpy() for t in triplets),
            kinds.numpy(),
        )
    return MiningResult(dist.numpy(), labels_t.numpy(), float(margin), selections)
