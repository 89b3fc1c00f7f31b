"""Evaluation metrics for deep metric learning.

Retrieval metrics follow the definitions of Musgrave, Belongie and Lim (2020),
"A Metric Learning Reality Check" (ECCV), section 3.2, and agree with
``pytorch_metric_learning.utils.accuracy_calculator.AccuracyCalculator`` (PML 2.9) when PML
is run with raw Euclidean distance (``CustomKNN(LpDistance(normalize_embeddings=False))``) and
``k="max_bin_count"``.

All distances are Euclidean distances between the embeddings exactly as given: nothing here
normalises embeddings. Everything runs on the device of the input tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dml_core import ranking
from dml_core.pair_sampling import sample_pairs
from dml_core.representation import alignment_uniformity, effective_rank

__all__ = [
    "METRIC_LABELS",
    "QueryScores",
    "alignment_uniformity",
    "collapse_signals",
    "effective_rank",
    "pair_overlap",
    "query_scores",
    "retrieval_metrics",
    "sample_pair_distances",
]

METRIC_LABELS = {
    "precision_at_1": "P@1",
    "r_precision": "R-Precision",
    "map_at_r": "MAP@R",
    "nmi": "NMI",
}
"""Display names of the retrieval metrics (keys of ``retrieval_metrics``), for figures and pages."""


def _as_float(emb: Tensor) -> Tensor:
    """Returns ``emb`` detached, as a 2-D floating tensor (float32 unless already floating)."""
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, dim), got shape {tuple(emb.shape)}")
    emb = emb.detach()
    return emb if emb.is_floating_point() else emb.float()


def _as_labels(labels: Tensor, n: int) -> Tensor:
    """Returns ``labels`` as a 1-D int64 tensor of length ``n``."""
    labels = labels.reshape(-1).long()
    if labels.numel() != n:
        raise ValueError(f"expected {n} labels, got {labels.numel()}")
    return labels


class QueryScores(NamedTuple):
    """Per-query retrieval scores (Musgrave et al. 2020, sec. 3.2), NaN where R = 0.

    Attributes:
        precision_at_1: (n_query,) float64, ``rel(1)``.
        r_precision: (n_query,) float64, ``(1/R) * sum_{i<=R} rel(i)``.
        ap_at_r: (n_query,) float64, AP@R ``= (1/R) * sum_{i<=R} P(i) rel(i)``.
    """

    precision_at_1: Tensor
    r_precision: Tensor
    ap_at_r: Tensor


def query_scores(
    query_emb: Tensor,
    query_labels: Tensor,
    ref_emb: Tensor,
    ref_labels: Tensor,
    *,
    same_set: bool = False,
    chunk_size: int = 1024,
) -> QueryScores:
    """P@1, R-Precision and AP@R of every query: the one kernel behind MAP@R.

    Definitions (Musgrave et al. 2020, "A Metric Learning Reality Check", sec. 3.2): for a
    query q, R is the number of references sharing q's label (q itself excluded when
    ``same_set``). Rank the references by Euclidean distance to q and let ``rel(i)`` be 1 when
    the i-th nearest has q's label, and ``P(i) = (1/i) * sum_{j<=i} rel(j)`` the precision
    among the first i neighbours. Then

    * P@1(q) = ``rel(1)``;
    * R-Precision(q) = ``(1/R) * sum_{i<=R} rel(i)``;
    * AP@R(q) = ``(1/R) * sum_{i<=R} P(i) rel(i)``.

    Queries with R = 0 (label absent from the references, or a singleton class when
    ``same_set``) get NaN in all three, as PML's ``AccuracyCalculator`` skips its "lone"
    queries. Neighbours are ranked as PML's ``AccuracyCalculator`` ranks them, tied distances
    included (``dml_core.ranking``): on the CPU in float32 by a threshold and a sort of about R
    keys per query, elsewhere by ``torch.topk`` of the k = max R nearest. At most
    ``chunk_size * len(ref_emb)`` distances per worker exist at a time.

    Args:
        query_emb: Query embeddings, shape (n_query, dim).
        query_labels: Integer class labels of the queries, shape (n_query,).
        ref_emb: Reference embeddings, shape (n_ref, dim).
        ref_labels: Integer class labels of the references, shape (n_ref,).
        same_set: The queries are the references: query i is reference i and never retrieves
            itself. As with PML's ``ref_includes_query``, the references may extend past the
            queries (queries = first ``n_query`` rows).
        chunk_size: Number of queries whose distances are held at once.

    Returns:
        The three (n_query,) float64 tensors, on the device of ``query_emb``.

    Raises:
        ValueError: On inconsistent shapes or a non-positive ``chunk_size``.
    """
    query_emb, ref_emb = _as_float(query_emb), _as_float(ref_emb)
    n_query, n_ref = query_emb.shape[0], ref_emb.shape[0]
    device = query_emb.device
    query_labels = _as_labels(query_labels, n_query).to(device)
    ref_labels = _as_labels(ref_labels, n_ref).to(device)
    if query_emb.shape[1] != ref_emb.shape[1]:
        raise ValueError("query and reference embeddings differ in dimension")
    if same_set and n_query > n_ref:
        raise ValueError("same_set=True needs the queries to be the first references")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    ref_emb = ref_emb.to(device, query_emb.dtype)
    r_all = ranking.per_query_r(query_labels, ref_labels, same_set)
    rows = torch.nonzero(r_all > 0).squeeze(1)
    fast = (
        device.type == "cpu"
        and query_emb.dtype == torch.float32
        and bool(query_emb.isfinite().all())
        and bool(ref_emb.isfinite().all())
    )
    if rows.numel() == 0:
        scores = torch.full((3, n_query), float("nan"), dtype=torch.float64, device=device)
    elif fast:
        scores = ranking.fast_scores(
            query_emb, query_labels, ref_emb, ref_labels, r_all,
            same_set=same_set, chunk_size=chunk_size,
        )  # fmt: skip
    else:
        scores = torch.full((3, n_query), float("nan"), dtype=torch.float64, device=device)
        scores[:, rows] = ranking.exact_scores(
            query_emb, query_labels, ref_emb, ref_labels, rows, r_all,
            same_set=same_set, chunk_size=chunk_size,
        )  # fmt: skip
    return QueryScores(scores[0], scores[1], scores[2])


def retrieval_metrics(
    query_emb: Tensor,
    query_labels: Tensor,
    ref_emb: Tensor,
    ref_labels: Tensor,
    *,
    same_set: bool = False,
    with_nmi: bool = True,
    chunk_size: int = 1024,
    kmeans_seed: int = 0,
) -> dict[str, float]:
    """Computes Precision@1, R-Precision, MAP@R and (optionally) NMI.

    Precision@1, R-Precision and MAP@R are the means over the queries with R > 0 of the
    per-query scores of :func:`query_scores` (Musgrave et al. 2020, "A Metric Learning Reality
    Check", sec. 3.2); MAP@R is the mean AP@R. If every query has R = 0 the three metrics are
    0.0 (PML's value).

    NMI (Musgrave et al. 2020, sec. 3.2 and its supplement) clusters the query embeddings with
    scikit-learn ``KMeans`` (k-means++ init, ``n_init=1``, ``random_state=kmeans_seed``) into as
    many clusters as there are distinct query labels, then reports
    ``normalized_mutual_info_score(query_labels, clusters)`` (arithmetic normalisation). PML
    uses faiss k-means for this, so NMI agrees with PML only approximately.

    Args:
        query_emb: Query embeddings, shape (n_query, dim).
        query_labels: Integer class labels of the queries, shape (n_query,).
        ref_emb: Reference embeddings, shape (n_ref, dim).
        ref_labels: Integer class labels of the references, shape (n_ref,).
        same_set: The queries are the first references and never retrieve themselves (see
            :func:`query_scores`).
        with_nmi: Also compute ``nmi`` (runs k-means on the CPU).
        chunk_size: Number of queries whose distances are held at once.
        kmeans_seed: ``random_state`` of the k-means used for NMI.

    Returns:
        ``{"precision_at_1", "r_precision", "map_at_r"}`` and ``"nmi"`` when ``with_nmi``, as
        Python floats.

    Raises:
        ValueError: On inconsistent shapes or a non-positive ``chunk_size``.
    """
    scores = query_scores(
        query_emb, query_labels, ref_emb, ref_labels, same_set=same_set, chunk_size=chunk_size
    )
    stacked = torch.stack(scores)  # (3, n_query)
    valid = ~stacked[0].isnan()  # (n_query,) the queries with R > 0
    n_valid = int(valid.sum())
    means = stacked[:, valid].sum(1) / n_valid if n_valid else torch.zeros(3)
    p1, rp, mapr = means.tolist()
    out = {"precision_at_1": p1, "r_precision": rp, "map_at_r": mapr}
    if with_nmi:
        emb = _as_float(query_emb)
        out["nmi"] = _nmi(emb, _as_labels(query_labels, emb.shape[0]), kmeans_seed)
    return out


def _nmi(emb: Tensor, labels: Tensor, seed: int) -> float:
    """NMI between k-means clusters of ``emb`` and ``labels`` (see ``retrieval_metrics``)."""
    y = labels.cpu().numpy()
    n_clusters = int(np.unique(y).size)
    if n_clusters <= 1 or n_clusters >= y.size:
        # Degenerate partitions: the clustering is forced to match the labels' structure.
        return 1.0
    # scikit-learn only here: importing it costs about a second in every process that trains
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x = emb.detach().cpu().numpy().astype(np.float32, copy=False)
    km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed)
    clusters = km.fit_predict(x)
    return float(normalized_mutual_info_score(y, clusters))


def sample_pair_distances(
    emb: Tensor,
    labels: Tensor,
    max_pairs: int = 5000,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples Euclidean distances of positive and negative pairs.

    Positive pairs are unordered pairs (i < j) with the same label, negative pairs (i < j) with
    different labels, as in the pair-distance histograms of Musgrave et al. 2020, "A Metric
    Learning Reality Check". Each set is subsampled uniformly without replacement to at most
    ``max_pairs`` (``pair_sampling.sample_pairs``: drawn, not listed, when a kind has many
    more pairs); distances are computed only for the sampled ones.

    Args:
        emb: Embeddings, shape (n, dim).
        labels: Integer labels, shape (n,).
        max_pairs: Cap on the number of pairs returned per kind.
        generator: Random generator for the subsampling (CPU); ``None`` uses the global one.

    Returns:
        ``(pos, neg)``: float32 numpy arrays of positive and negative pair distances.
    """
    emb = _as_float(emb).detach()
    labels = _as_labels(labels, emb.shape[0])

    def _distances(positive: bool) -> np.ndarray:
        i, j = sample_pairs(labels, positive, max_pairs, generator)
        i, j = i.to(emb.device), j.to(emb.device)
        diff = emb.index_select(0, i) - emb.index_select(0, j)  # 3x faster than emb[i]
        return diff.norm(dim=1).cpu().numpy().astype(np.float32)

    return _distances(True), _distances(False)


def pair_overlap(pos: np.ndarray, neg: np.ndarray) -> float:
    """Estimates P(d_neg < d_pos) for an independent random positive and negative pair.

    This is the quantity the Histogram loss (Ustinova & Lempitsky 2016) minimises and a
    summary of the overlap of the two distance histograms (Musgrave et al. 2020, "A Metric
    Learning Reality Check"): 0 means every negative pair is farther apart than every positive
    pair. It is computed exactly over all ``len(pos) * len(neg)`` combinations by sorting
    ``neg`` and binary-searching each positive distance (O(n log n)); ties count as not less.

    Args:
        pos: Positive-pair distances, 1-D.
        neg: Negative-pair distances, 1-D.

    Returns:
        The fraction of (pos, neg) combinations with ``neg < pos``; NaN if either is empty.
    """
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    neg = np.sort(np.asarray(neg, dtype=np.float64).reshape(-1))
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")  # number of negatives strictly below
    return float(below.sum(dtype=np.float64) / (pos.size * neg.size))


def collapse_signals(emb: Tensor, radius: float = 1e-2, max_points: int = 2000) -> dict[str, float]:
    """Signals of embedding collapse (all points mapped to one spot).

    Collapse is the failure mode behind the trivial solutions discussed by Musgrave et al.
    2020, "A Metric Learning Reality Check" (e.g. a contrastive/triplet loss stuck at its
    margin). Only the first ``max_points`` rows are used (deterministic subsample).

    ``collapsed_fraction`` uses a scale-relative threshold: a pair (i != j) counts as
    collapsed when its distance is at most ``radius`` times the mean embedding norm, so the
    signal does not depend on the overall scale of the embedding space. It is 1.0 when all
    embeddings are identical (zero included) and close to 0 for random Gaussian embeddings.

    Args:
        emb: Embeddings, shape (n, dim).
        radius: Collapse radius, relative to the mean embedding norm.
        max_points: Maximum number of points used.

    Returns:
        ``{"mean_distance", "collapsed_fraction"}``; both 0.0 when fewer than two points.
    """
    emb = _as_float(emb).detach()[:max_points]
    n = emb.shape[0]
    if n < 2:
        return {"mean_distance": 0.0, "collapsed_fraction": 0.0}
    # The ||x||^2 + ||y||^2 - 2xy matmul form in float64: identical points come out within
    # ~1e-7 of 0, far inside the collapse radius, and it is several times faster than direct
    # differences. The diagonal is zeroed, then left out of both averages.
    x = emb.double()
    dist = torch.cdist(x, x, compute_mode="use_mm_for_euclid_dist").fill_diagonal_(0.0)
    pairs = n * (n - 1)
    threshold = radius * float(x.norm(dim=1).mean())
    return {
        "mean_distance": float(dist.sum()) / pairs,
        "collapsed_fraction": (
            int((dist <= threshold).sum()) - int((dist.diagonal() <= threshold).sum())
        )
        / pairs,
    }
