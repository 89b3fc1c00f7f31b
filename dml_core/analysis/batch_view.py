r"""One batch under the microscope: what each registered miner picks, and why sampling matters.

Two questions, answered without training anything:

- **Miner view.** Draw one P x K batch (Hermans et al., In Defense of the Triplet Loss, 2017,
  Sec. 3), embed it with an untrained net or a saved run's checkpoint, run every chosen miner
  from ``MINERS`` on it (the registered code, never a second copy of its logic) and classify
  each selected negative relative to the margin, as FaceNet does (Schroff et al. 2015,
  Sec. 3.2): hard d(a,n) <= d(a,p), semi-hard d(a,p) < d(a,n) < d(a,p) + \alpha, easy beyond.
- **Sphere & sampling.** Wu, Manmatha, Smola, Kraehenbuehl, Sampling Matters in Deep
  Embedding Learning, ICCV 2017, Sec. 4: on S^{n-1} pairwise distances concentrate near
  sqrt(2) (Fig. 2, density q(d) of Eq. 3), so uniform sampling mostly returns negatives at
  ~sqrt(2); hard negatives sit close to the anchor, where the direction (a - n) / ||a - n|| of
  the gradient is dominated by noise (Fig. 3: its variance grows like 1 / d^2); distance-
  weighted sampling draws negatives with probability ~ 1 / q(d) and so spreads them out.

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

from dml_core.config import check_against_dataset, make_config
from dml_core.data import load_dataset
from dml_core.errors import ConfigError
from dml_core.geometry import l2_normalize, pairwise_distances
from dml_core.nets import NETS, build_net
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from dml_core.sampling import PKSampler
from dml_core.train import embed
from dml_core.tuples import (
    EASY,
    HARD,
    SEMI_HARD,
    TRIPLET_KINDS,
    Pairs,
    Triplets,
    label_masks,
    to_triplets,
    triplet_kinds,
)

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


def draw_batch(
    dataset: str, P: int, K: int, seed: int, net_source: UntrainedNet | SavedRun
) -> Batch:
    """Draw one P x K batch of ``dataset``'s training part and embed it.

    Args:
        dataset: a name from ``data.DATASETS``. A saved run must have been trained on it.
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
        if cfg.dataset != dataset:
            raise ConfigError(
                f"The 'dataset' parameter must be {cfg.dataset!r}, the data run "
                f"{net_source.run_id} was trained on. Got {dataset!r}."
            )
        data = load_dataset(cfg.dataset, cfg.split)
    else:
        if net_source.net not in NETS:
            raise ConfigError(f"The 'net' parameter must be one of {NETS}. Got {net_source.net!r}.")
        cfg = make_config(dataset=dataset, net=net_source.net, embedding_dim=net_source.dim)
        data = load_dataset(dataset, "standard")
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
    torch.manual_seed(seed)
    pixels = data.train.x.float()  # mean / std as Trainer uses (a checkpoint overwrites them)
    mean, std = float(pixels.mean()), float(pixels.std())
    net = build_net(cfg.net, data.image_shape, cfg.embedding_dim, cfg.normalize, mean, std)
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
        data.train.x[idx, 0].numpy(),
        tuple(data.class_names),
        source,
    )


@dataclass(frozen=True)
class AnchorView:
    """What one miner selects for one anchor.

    Attributes:
        anchor: the anchor's batch index.
        positives, pos_dist: selected positives and d(a, p), ascending index.
        negatives, neg_dist: selected negatives and d(a, n).
        neg_kind: (n_neg,) EASY / SEMI_HARD / HARD of each negative: the hardest kind among
            the triplets the miner forms with it, i.e. relative to the farthest positive it is
            paired with (pair miners pair every negative with every selected positive).
        radius: d(a, p_max), the farthest selected positive (the farthest in the batch when
            the miner selects none); the margin circles are at ``radius`` and ``radius + margin``.
    """

    anchor: int
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

    def anchor_view(self, name: str, anchor: int) -> AnchorView:
        """Which positives and negatives miner ``name`` selects for ``anchor``."""
        sel, d = self.selections[name], self.dist[anchor]
        a1, p = sel.pos_pairs
        a2, n = sel.neg_pairs
        positives = np.unique(p[a1 == anchor])
        negatives = np.unique(n[a2 == anchor])
        pos_mask = (self.labels == self.labels[anchor]) & (np.arange(len(d)) != anchor)
        fallback = float(d[pos_mask].max()) if pos_mask.any() else 0.0
        radius = float(d[positives].max()) if len(positives) else fallback
        # hardest kind over the triplets (anchor, ., n): max code, as HARD > SEMI_HARD > EASY
        ta, _, tn = sel.triplets
        mine = ta == anchor
        kind = np.full(len(d), EASY, dtype=np.int64)  # (B,)
        np.maximum.at(kind, tn[mine], sel.kinds[mine])
        if sel.kind == "pairs" or not mine.any():  # negatives of no triplet: use p_max
            loose = torch.as_tensor(d[negatives])
            codes = triplet_kinds(torch.full_like(loose, radius), loose, self.margin).numpy()
            kind[negatives] = np.maximum(kind[negatives], codes)
        return AnchorView(
            anchor, positives, d[positives], negatives, d[negatives], kind[negatives], radius
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
        ConfigError: unknown miner, a bad parameter, or a batch with no positive pair.
    """
    emb_t = torch.as_tensor(np.asarray(emb), dtype=torch.float32)  # (B, D)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)  # (B,)
    if not (0 < margin <= 2):
        raise ConfigError(f"The 'margin' parameter must be in (0, 2]. Got {margin}.")
    if not label_masks(labels_t)[0].any():
        raise ConfigError("The 'K' parameter must be at least 2: no anchor has a positive.")
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


# ---------------------------------------------------------------------------- Sphere


def uniform_sphere(n_points: int, dim: int, generator: torch.Generator) -> Tensor:
    """(n_points, dim) points uniform on S^{dim-1}: normalised standard Gaussians."""
    x = torch.randn(n_points, dim, generator=generator, dtype=torch.float64)  # (N, dim)
    return l2_normalize(x)


def sample_sphere_distances(dim: int, n_points: int, seed: int) -> np.ndarray:
    """All n (n - 1) / 2 pairwise distances of ``n_points`` uniform points on S^{dim-1}."""
    if dim < 2:
        raise ConfigError(f"The 'dim' parameter must be at least 2. Got {dim}.")
    points = uniform_sphere(n_points, dim, torch.Generator().manual_seed(seed))
    i, j = torch.triu_indices(n_points, n_points, offset=1)
    return pairwise_distances(points)[i, j].numpy()  # (n (n - 1) / 2,)


@dataclass(frozen=True)
class SamplingComparison:
    """Negatives chosen by each sampling method on one batch (see ``sampling_comparison``).

    Attributes:
        dim: the embedding dimension.
        neg_dist: method -> d(a, n) of every selected triplet.
        table: one row per method: triplets, mean / std of d(a, n), share with non-zero
            triplet loss, and the gradient noise variance.
    """

    dim: int
    neg_dist: dict[str, np.ndarray]
    table: pd.DataFrame


def gradient_noise_variance(emb: Tensor, triplets: Triplets, sigma: float) -> Tensor:
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
    """
    a, p, n = (emb[t].double() for t in triplets)  # (T, D) each
    D = emb.shape[1]
    to_p, to_n = a - p, a - n  # (T, D)
    d_ap = to_p.norm(dim=1).clamp_min(1e-6)  # (T,)
    d_an = to_n.norm(dim=1).clamp_min(1e-6)  # (T,)
    c = (to_p * to_n).sum(dim=1) / (d_ap * d_an)  # (T,)
    cross = (D - 2 + c.square()) / (d_ap * d_an)
    trace = 2 * (sigma**2 / D) * ((D - 1) / d_ap.square() + (D - 1) / d_an.square() - cross)
    return trace.clamp(0.0, 4.0).float()


def sampling_comparison(
    dim: int,
    P: int,
    K: int,
    seed: int,
    margin: float = 0.2,
    emb: np.ndarray | Tensor | None = None,
    labels: np.ndarray | Tensor | None = None,
) -> SamplingComparison:
    """Which negatives uniform, semi-hard, hard, hardest and distance-weighted sampling choose.

    Wu et al. 2017, Sec. 4. Every method is a registered miner run on the same batch:
    ``random`` as uniform sampling (one negative per anchor-positive pair on average),
    ``semi_hard`` (FaceNet Eq. 4), ``hard`` (every d(a,n) <= d(a,p)), ``batch_hard`` (each
    anchor's nearest negative: "hard negative mining" in Wu et al.) and ``distance_weighted``.

    Args:
        dim: n, the embedding dimension (the batch lies on S^{n-1}).
        P: classes in the batch.
        K: samples per class (the batch is P x K; only its labels matter for uniform points).
        seed: seeds the points, the sampling miners and the noise.
        margin: alpha of the semi-hard miner and of the non-zero-loss column.
        emb: a real batch (B, dim) instead of uniform points (``dim``, P, K then ignored).
        labels: (B,) labels of ``emb``.
    """
    if P < 2 or K < 2:
        name, value = ("P", P) if P < 2 else ("K", K)
        raise ConfigError(f"The '{name}' parameter must be at least 2. Got {value}.")
    if dim < 2:
        raise ConfigError(f"The 'dim' parameter must be at least 2. Got {dim}.")
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
    neg_dist, rows = {}, []
    for method, miner in miners.items():
        triplets = miner(emb_t, labels_t)
        a, p, n = triplets
        d_ap, d_an = dist[a, p], dist[a, n]  # (T,)
        neg_dist[method] = d_an.numpy()
        kinds = triplet_kinds(d_ap, d_an, margin)  # (T,)
        variance = gradient_noise_variance(emb_t, triplets, GRADIENT_NOISE)  # (T,)
        empty = len(a) == 0
        rows.append(
            {
                "method": method,
                "triplets": len(a),
                "mean d(a,n)": np.nan if empty else float(d_an.mean()),
                "std d(a,n)": float(d_an.std()) if len(a) > 1 else np.nan,
                "non-zero loss": np.nan if empty else float((kinds != EASY).float().mean()),
                "hard": np.nan if empty else float((kinds == HARD).float().mean()),
                "semi-hard": np.nan if empty else float((kinds == SEMI_HARD).float().mean()),
                "gradient variance": np.nan if empty else float(variance.mean()),
            }
        )
    return SamplingComparison(int(emb_t.shape[1]), neg_dist, pd.DataFrame(rows))
