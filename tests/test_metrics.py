"""Tests for dml_core.metrics (CPU, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from dml_core.metrics import (
    METRIC_LABELS,
    collapse_signals,
    pair_overlap,
    query_scores,
    retrieval_metrics,
    sample_pair_distances,
)

# 1-D references: positions and labels.
REF_X = [0.0, 1.0, 3.2, 6.0, 10.0]
REF_Y = [0, 0, 1, 1, 0]


def _col(xs: list[float]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(1)


def test_hand_computed_query_vs_reference() -> None:
    # Label 0 has 3 references, so R = 3 for every label-0 query.
    # q=0.4 (label 0): nearest 0.0(0), 1.0(0), 3.2(1) -> hits 1,1,0
    #   P@1 = 1, R-Prec = 2/3, MAP@R = (1/1 + 2/2) / 3 = 2/3
    # q=5.2 (label 0): nearest 6.0(1), 3.2(1), 1.0(0) -> hits 0,0,1
    #   P@1 = 0, R-Prec = 1/3, MAP@R = (1/3) / 3 = 1/9
    # q=7.9 (label 0): nearest 6.0(1), 10.0(0), 3.2(1) -> hits 0,1,0
    #   P@1 = 0, R-Prec = 1/3, MAP@R = (1/2) / 3 = 1/6
    # q=0.0 (label 2): no reference has label 2 -> R = 0 -> skipped.
    # Means over 3 queries: P@1 = 1/3, R-Prec = 4/9, MAP@R = (2/3 + 1/9 + 1/6) / 3 = 17/54.
    q = _col([0.4, 5.2, 7.9, 0.0])
    ql = torch.tensor([0, 0, 0, 2])
    out = retrieval_metrics(q, ql, _col(REF_X), torch.tensor(REF_Y), with_nmi=False)
    assert set(out) == {"precision_at_1", "r_precision", "map_at_r"}
    assert out["precision_at_1"] == pytest.approx(1 / 3, abs=1e-12)
    assert out["r_precision"] == pytest.approx(4 / 9, abs=1e-12)
    assert out["map_at_r"] == pytest.approx(17 / 54, abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_hand_computed_scores_per_query(chunk_size: int) -> None:
    # The queries of test_hand_computed_query_vs_reference, the R = 0 one moved to the middle
    # so that a score written to the wrong row shows.
    q = _col([0.4, 0.0, 5.2, 7.9])
    ql = torch.tensor([0, 2, 0, 0])
    scores = query_scores(q, ql, _col(REF_X), torch.tensor(REF_Y), chunk_size=chunk_size)
    nan = float("nan")
    np.testing.assert_allclose(scores.precision_at_1.numpy(), [1, nan, 0, 0], atol=1e-12)
    np.testing.assert_allclose(scores.r_precision.numpy(), [2 / 3, nan, 1 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(scores.ap_at_r.numpy(), [2 / 3, nan, 1 / 9, 1 / 6], atol=1e-12)
    assert all(s.dtype == torch.float64 for s in scores)


def _brute_force_ap_at_r(q, ql, ref, rl, same_set: bool) -> np.ndarray:
    """AP@R of each query by its definition, one query at a time (stable ties)."""
    out = []
    for i in range(len(q)):
        dist = np.linalg.norm(ref - q[i], axis=1)
        if same_set:
            dist[i] = np.inf
        order = np.argsort(dist, kind="stable")
        r = int((rl == ql[i]).sum()) - int(same_set)
        if r <= 0:
            out.append(np.nan)
            continue
        rel = rl[order[:r]] == ql[i]
        if same_set:
            rel &= order[:r] != i
        hits = np.cumsum(rel)
        out.append(sum(hits[j] / (j + 1) for j in range(r) if rel[j]) / r)
    return np.array(out)


@pytest.mark.parametrize("same_set", [False, True])
def test_ap_at_r_per_query_by_definition(same_set: bool) -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(90, 3))
    rl = rng.integers(0, 5, size=90)
    rl[-1] = 5  # a singleton class: R = 0 for it when same_set
    if same_set:
        q, ql = ref, rl
    else:
        q, ql = rng.normal(size=(40, 3)), rng.integers(0, 7, size=40)  # 6 absent from refs
    scores = query_scores(
        torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(ref), torch.from_numpy(rl),
        same_set=same_set, chunk_size=7,
    )  # fmt: skip
    expected = _brute_force_ap_at_r(q, ql, ref, rl, same_set)
    assert np.isnan(expected).any()
    np.testing.assert_allclose(scores.ap_at_r.numpy(), expected, atol=1e-12)
    means = retrieval_metrics(
        torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(ref), torch.from_numpy(rl),
        same_set=same_set, with_nmi=False,
    )  # fmt: skip
    assert means["map_at_r"] == pytest.approx(float(np.nanmean(expected)), abs=1e-12)


def test_metric_labels_name_every_metric() -> None:
    x, y = _col(REF_X), torch.tensor(REF_Y)
    assert set(METRIC_LABELS) == set(retrieval_metrics(x, y, x, y, same_set=True))
    assert METRIC_LABELS["map_at_r"] == "MAP@R"


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_hand_computed_same_set(chunk_size: int) -> None:
    # Same set, self excluded: label 0 -> R = 2, label 1 -> R = 1.
    # 0.0 (0): others 1.0(0), 3.2(1)   -> hits 1,0 -> P@1 1, RP 1/2, MAP 1/2
    # 1.0 (0): others 0.0(0), 3.2(1)   -> hits 1,0 -> P@1 1, RP 1/2, MAP 1/2
    # 3.2 (1): nearest other 1.0(0)    -> hit 0    -> 0, 0, 0
    # 6.0 (1): nearest other 3.2(1)    -> hit 1    -> 1, 1, 1
    # 10.0 (0): others 6.0(1), 3.2(1)  -> hits 0,0 -> 0, 0, 0
    # Means: P@1 = 3/5, R-Prec = 2/5, MAP@R = 2/5.
    x, y = _col(REF_X), torch.tensor(REF_Y)
    out = retrieval_metrics(x, y, x, y, same_set=True, with_nmi=False, chunk_size=chunk_size)
    assert out["precision_at_1"] == pytest.approx(3 / 5, abs=1e-12)
    assert out["r_precision"] == pytest.approx(2 / 5, abs=1e-12)
    assert out["map_at_r"] == pytest.approx(2 / 5, abs=1e-12)


def test_no_valid_query_gives_zero() -> None:
    out = retrieval_metrics(_col([0.0]), torch.tensor([5]), _col(REF_X), torch.tensor(REF_Y))
    assert out["precision_at_1"] == out["r_precision"] == out["map_at_r"] == 0.0


def _uneven_labels(n: int, gen: torch.Generator) -> torch.Tensor:
    # Class c drawn with probability proportional to c + 1; class 7 is a singleton.
    probs = torch.arange(1, 8, dtype=torch.float)
    labels = torch.multinomial(probs / probs.sum(), n - 1, replacement=True, generator=gen)
    return torch.cat([labels, torch.tensor([7])])


def _pml(q, ql, r, rl, same_set: bool) -> dict[str, float]:
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
    )
    return calc.get_accuracy(q, ql, r, rl, ref_includes_query=same_set)


def _assert_matches_pml(ours: dict[str, float], pml: dict[str, float]) -> None:
    assert ours["precision_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("same_set", [False, True])
@pytest.mark.parametrize("chunk_size", [13, 1024])
def test_agrees_with_pml(seed: int, dim: int, same_set: bool, chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_ref = 300
    ref = torch.randn(n_ref, dim, generator=gen)
    ref_labels = _uneven_labels(n_ref, gen)
    # Shift classes apart a little so the metrics are far from chance.
    ref = ref + 0.5 * torch.nn.functional.one_hot(ref_labels % dim, dim).float()
    if same_set:
        query, query_labels = ref, ref_labels
    else:
        query = torch.randn(120, dim, generator=gen)
        query_labels = torch.randint(0, 9, (120,), generator=gen)  # 8 is absent from refs
    ours = retrieval_metrics(
        query,
        query_labels,
        ref,
        ref_labels,
        same_set=same_set,
        with_nmi=False,
        chunk_size=chunk_size,
    )
    _assert_matches_pml(ours, _pml(query, query_labels, ref, ref_labels, same_set))


def test_agrees_with_pml_queries_prefix_of_references() -> None:
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(200, 8, generator=gen)
    ref_labels = _uneven_labels(200, gen)
    q, ql = ref[:80], ref_labels[:80]
    ours = retrieval_metrics(q, ql, ref, ref_labels, same_set=True, with_nmi=False, chunk_size=9)
    _assert_matches_pml(ours, _pml(q, ql, ref, ref_labels, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("same_set", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_pml_on_tied_distances(seed: int, same_set: bool, dtype) -> None:
    """Points on a 4 x 4 grid: every distance is shared by many references of every class.

    PML ranks tied references in the order its ``topk`` leaves them; float32 takes the fast
    path (whose sort would order them otherwise, so tied queries are recomputed with
    ``topk``), float64 the ``topk`` path. Catches skipping that recomputation (P@1 then
    differs by about 0.8) and removing the query itself otherwise than PML (diagonal set to
    inf instead of k + 1 neighbours less the query: MAP@R differs).
    """
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, 4, (400, 2), generator=gen).to(dtype)
    ref_labels = torch.randint(0, 5, (400,), generator=gen)
    if same_set:
        query, query_labels = ref, ref_labels
    else:
        query = torch.randint(0, 4, (150, 2), generator=gen).to(dtype)
        query_labels = torch.randint(0, 5, (150,), generator=gen)
    ours = retrieval_metrics(
        query, query_labels, ref, ref_labels, same_set=same_set, with_nmi=False, chunk_size=37
    )
    pml = _pml(query, query_labels, ref, ref_labels, same_set)
    assert ours["precision_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-12)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-12)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-12)


@pytest.mark.parametrize("same_set", [False, True])
def test_perfect_embedding(same_set: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    counts = [5, 12, 30, 8]
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    centres = 100.0 * torch.eye(4, 16)
    emb = centres[labels] + 0.1 * torch.randn(len(labels), 16, generator=gen)
    if same_set:
        out = retrieval_metrics(emb, labels, emb, labels, same_set=True, chunk_size=7)
    else:
        q = centres[labels] + 0.1 * torch.randn(len(labels), 16, generator=gen)
        out = retrieval_metrics(q, labels, emb, labels, chunk_size=7)
    assert out["precision_at_1"] == pytest.approx(1.0)
    assert out["r_precision"] == pytest.approx(1.0)
    assert out["map_at_r"] == pytest.approx(1.0)
    assert out["nmi"] == pytest.approx(1.0, abs=1e-6)


def test_nmi_random_embedding_is_low() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(400, 8, generator=gen)
    labels = torch.randint(0, 5, (400,), generator=gen)
    nmi = retrieval_metrics(emb, labels, emb, labels, same_set=True)["nmi"]
    assert 0.0 <= nmi < 0.1


def test_sample_pair_distances_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(30, 4, generator=gen)
    labels = torch.randint(0, 4, (30,), generator=gen)
    pos, neg = sample_pair_distances(emb, labels, max_pairs=10_000)
    assert pos.dtype == np.float32
    assert neg.dtype == np.float32
    exp_pos, exp_neg = [], []
    for i in range(30):
        for j in range(i + 1, 30):
            d = float(torch.linalg.norm(emb[i] - emb[j]))
            (exp_pos if labels[i] == labels[j] else exp_neg).append(d)
    assert len(pos) + len(neg) == 30 * 29 // 2
    np.testing.assert_allclose(np.sort(pos), np.sort(exp_pos), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.sort(neg), np.sort(exp_neg), rtol=1e-4, atol=1e-4)


def test_sample_pair_distances_cap_and_determinism() -> None:
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(200, 8, generator=gen)
    labels = torch.randint(0, 3, (200,), generator=gen)
    pos, neg = sample_pair_distances(emb, labels, max_pairs=500)
    assert len(pos) == 500
    assert len(neg) == 500
    # Subsamples are drawn from the full sets, without replacement.
    full_pos, full_neg = sample_pair_distances(emb, labels, max_pairs=10**9)
    n_pos = int(sum((labels == c).sum() * ((labels == c).sum() - 1) // 2 for c in range(3)))
    assert len(full_pos) == n_pos
    assert len(full_neg) == 200 * 199 // 2 - n_pos
    assert np.isin(pos, full_pos).all()
    assert np.isin(neg, full_neg).all()
    assert len(np.unique(pos)) == 500
    a = sample_pair_distances(emb, labels, 100, torch.Generator().manual_seed(5))
    b = sample_pair_distances(emb, labels, 100, torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_overlap_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = rng.normal(1.0, 0.5, size=37).astype(np.float32)
    neg = rng.normal(1.5, 0.5, size=53).astype(np.float32)
    neg[:3] = pos[:3]  # ties count as "not less"
    expected = sum(n < p for p in pos for n in neg) / (len(pos) * len(neg))
    assert pair_overlap(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_pair_overlap_extremes() -> None:
    assert pair_overlap(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert pair_overlap(np.array([5.0, 6.0]), np.array([3.0, 4.0])) == 1.0
    assert np.isnan(pair_overlap(np.array([]), np.array([1.0])))


def test_collapse_signals() -> None:
    same = torch.ones(50, 16) * 3.0
    out = collapse_signals(same)
    assert out["collapsed_fraction"] == 1.0
    assert out["mean_distance"] == 0.0
    assert collapse_signals(torch.zeros(10, 4))["collapsed_fraction"] == 1.0
    gen = torch.Generator().manual_seed(0)
    for dim in (2, 128):
        rand = collapse_signals(torch.randn(500, dim, generator=gen))
        assert rand["collapsed_fraction"] < 1e-3
        assert rand["mean_distance"] > 1.0


def test_collapse_signals_subsamples_first_points() -> None:
    emb = torch.cat([torch.zeros(20, 4), torch.randn(100, 4)])
    assert collapse_signals(emb, max_points=20)["collapsed_fraction"] == 1.0
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    out = collapse_signals(pts)
    d = torch.cdist(pts, pts)
    assert out["mean_distance"] == pytest.approx(float(d.sum() / 6), abs=1e-6)


def test_collapse_signals_of_non_finite_embeddings_stay_in_range() -> None:
    emb = torch.randn(10, 4)
    emb[3, 0] = float("nan")
    signals = collapse_signals(emb)
    assert 0.0 <= signals["collapsed_fraction"] <= 1.0
