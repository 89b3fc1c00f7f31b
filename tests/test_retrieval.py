"""Retrieval on a tiny real run: neighbours, per-query AP@R vs MAP@R, worst queries, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core import metrics
from dml_core.analysis import retrieval
from dml_core.config import make_config
from dml_core.runs import EMBEDDINGS_FILE, RunEmbeddings, RunStore
from tests.saved_runs import make_tiny_run, train_and_save


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return make_tiny_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def index(store: RunStore) -> retrieval.RetrievalIndex:
    return retrieval.build_index(store, "tiny-digits")


def test_load_run_model_restores_the_checkpoint(store: RunStore) -> None:
    cfg, net, dataset = retrieval.load_run_model(store, "tiny-digits")
    assert not net.training
    assert cfg.embedding_dim == 8
    state = store.load_checkpoint("tiny-digits")["net"]
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, state[name])
    assert len(dataset.query) == 540


def test_index_matches_the_splits(index: retrieval.RetrievalIndex) -> None:
    assert index.query_emb.shape == (540, 8)
    assert index.ref_emb.shape == (1257, 8)
    assert index.step == 30
    assert index.query_emb.dtype == np.float32


def test_neighbours_are_sorted_and_flagged(index: retrieval.RetrievalIndex) -> None:
    for q in (0, 17, 539):
        nb = retrieval.neighbours(index, q, 10)
        assert len(nb.indices) == 10
        assert np.all(np.diff(nb.distances) >= 0)
        expected = np.linalg.norm(index.ref_emb[nb.indices] - index.query_emb[q], axis=1)
        np.testing.assert_allclose(nb.distances, expected, atol=1e-5)
        full = np.linalg.norm(index.ref_emb - index.query_emb[q], axis=1)
        assert nb.distances[-1] <= np.sort(full)[10] + 1e-5  # nothing closer was skipped
        np.testing.assert_array_equal(
            nb.correct, index.ref_labels[nb.indices] == index.query_labels[q]
        )
    with pytest.raises(ValueError, match="query_i"):
        retrieval.neighbours(index, 540, 3)


def test_mean_ap_at_r_is_map_at_r(index: retrieval.RetrievalIndex) -> None:
    expected = metrics.retrieval_metrics(
        torch.from_numpy(index.query_emb),
        torch.from_numpy(index.query_labels),
        torch.from_numpy(index.ref_emb),
        torch.from_numpy(index.ref_labels),
        with_nmi=False,
    )
    assert float(np.nanmean(index.ap_at_r)) == pytest.approx(expected["map_at_r"], abs=1e-6)
    assert float(index.precision_at_1.mean()) == pytest.approx(expected["precision_at_1"], abs=1e-6)


def test_ap_at_r_on_a_hand_made_case() -> None:
    # one query of class 0, R = 2; ranking: hit, miss, hit -> AP@R = (1/2)(1/1) = 0.5
    q = np.zeros((1, 1), np.float32)
    ref = np.array([[1.0], [2.0], [3.0]], np.float32)
    ap = retrieval.average_precision_at_r(q, np.array([0]), ref, np.array([0, 1, 0]))
    np.testing.assert_allclose(ap, [0.5])
    # a query of class 2, absent from the references (R = 0), gets NaN, not 0
    ap = retrieval.average_precision_at_r(
        np.zeros((2, 1), np.float32), np.array([2, 0]), ref, np.array([0, 1, 0])
    )
    np.testing.assert_allclose(ap, [np.nan, 0.5])


def test_worst_queries_have_the_lowest_ap(index: retrieval.RetrievalIndex) -> None:
    worst, ap = retrieval.worst_queries(index, 5)
    assert len(worst) == 5
    assert np.all(np.diff(ap) >= 0)
    others = np.delete(index.ap_at_r, worst)
    assert ap.max() <= np.nanmin(others)


def test_per_class_precision_at_1(index: retrieval.RetrievalIndex) -> None:
    per_class = retrieval.per_class_precision_at_1(index)
    assert sorted(per_class) == list(range(10))
    counts = np.bincount(index.query_labels)
    overall = sum(per_class[c] * counts[c] for c in per_class) / counts.sum()
    assert overall == pytest.approx(float(index.precision_at_1.mean()))


def test_probe_points_map_back_to_queries(store: RunStore, index) -> None:
    cfg, _, dataset = retrieval.load_run_model(store, "tiny-digits")
    snap = store.load_snapshot("tiny-digits", store.snapshot_steps("tiny-digits")[-1])
    probe = retrieval.probe_query_indices(cfg, dataset)
    assert len(probe) == len(snap.probe_labels) == 100
    np.testing.assert_array_equal(index.query_labels[probe], snap.probe_labels)
    # the last snapshot and the checkpoint are the same weights: same embeddings
    np.testing.assert_allclose(index.query_emb[probe], snap.probe_emb, atol=1e-5)


def test_the_cache_round_trips(store: RunStore, index) -> None:
    assert (store.path("tiny-digits") / EMBEDDINGS_FILE).exists()
    assert retrieval.has_cached_index(store, "tiny-digits")
    again = retrieval.build_index(store, "tiny-digits")
    np.testing.assert_array_equal(again.query_emb, index.query_emb)
    np.testing.assert_array_equal(again.ref_labels, index.ref_labels)
    fresh = retrieval.build_index(store, "tiny-digits", use_cache=False)
    np.testing.assert_allclose(fresh.ref_emb, index.ref_emb, atol=1e-6)


def test_images_are_uint8(store: RunStore) -> None:
    _, _, dataset = retrieval.load_run_model(store, "tiny-digits")
    imgs = retrieval.images(dataset.reference, [0, 5])
    assert imgs.shape == (2, 8, 8)
    assert imgs.dtype == np.uint8
    assert retrieval.runs_with_checkpoint(store) == ["tiny-digits"]


def test_mark_query_outlines_the_query_point_and_skips_non_probe_queries() -> None:
    import plotly.graph_objects as go

    from dml_core.figures import retrieval as retrieval_figures

    layout = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
    probe_queries = np.array([10, 11, 12])
    fig = retrieval_figures.mark_query(go.Figure(), layout, probe_queries, 11)
    (star,) = fig.data
    assert (star.x[0], star.y[0]) == (1.0, 2.0)
    assert star.marker.symbol == "star-open"  # the point's own colour stays visible inside
    assert list(retrieval_figures.mark_query(go.Figure(), layout, probe_queries, 99).data) == []


def no_embedding(*_: object, **__: object) -> None:
    raise AssertionError("embedded the images again")


def test_a_finished_run_is_read_not_embedded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index of a finished run is its final evaluation's embeddings, read from disk.

    Catches: ``build_index`` embedding the images again although the run saved them (the
    patched ``embed`` raises); an index whose MAP@R is not the run's final MAP@R.
    """
    store = RunStore(tmp_path)
    cfg = make_config(
        dataset="digits", embedding_dim=8, classes_per_batch=4, samples_per_class=8,
        steps=20, snapshot_every=10, probe_size=100, final_eval=True, device="cpu",
    )  # fmt: skip
    run_id = train_and_save(store, cfg, "finished")
    monkeypatch.setattr(retrieval, "embed", no_embedding)
    assert retrieval.has_cached_index(store, run_id)
    index = retrieval.build_index(store, run_id)
    assert index.step == 20
    final = store.status(run_id)["final_metrics"]
    assert retrieval.mean_ap_at_r(index) == pytest.approx(final["map_at_r"], abs=1e-12)
    assert float(index.precision_at_1.mean()) == pytest.approx(final["precision_at_1"])


def test_embeddings_of_an_older_step_are_embedded_again(store: RunStore, index) -> None:
    """Catches: saved embeddings used although they belong to another checkpoint step."""
    stale = RunEmbeddings(
        index.step - 1, index.query_emb + 1.0, index.query_labels, index.ref_emb, index.ref_labels
    )
    store.save_embeddings("tiny-digits", stale)
    assert not retrieval.has_cached_index(store, "tiny-digits")
    again = retrieval.build_index(store, "tiny-digits")
    np.testing.assert_allclose(again.query_emb, index.query_emb, atol=1e-6)
    assert store.embeddings_step("tiny-digits") == index.step  # saved again, current


def test_neighbours_are_the_k_nearest_references_nearest_first(index) -> None:
    """Catches: the nearest reference dropped (a slice that skips a "self" match, which a
    query against other references does not have)."""
    for q in (0, 17, len(index.query_emb) - 1):
        full = np.linalg.norm(index.ref_emb - index.query_emb[q], axis=1)
        found = retrieval.neighbours(index, q, 10)
        np.testing.assert_allclose(found.distances, np.sort(full)[:10], atol=1e-5)


def one_dimensional_index(query_labels, ref_labels, query=(0.0, 10.0, 20.0, 1.9)):
    """A hand-made index on a line: references at 0.1, 10.1, 19, 1, 2, 3 (or fewer)."""
    q = np.array(query, np.float32)[:, None]
    ref = np.array([0.1, 10.1, 19.0, 1.0, 2.0, 3.0], np.float32)[: len(ref_labels), None]
    return retrieval.RetrievalIndex("x", 0, q, np.array(query_labels), ref, np.array(ref_labels))


def test_per_class_p_at_1_is_keyed_by_the_query_label() -> None:
    """Labels 3, 5 and 7, as an open-set split has them. Catches: values keyed by the class's
    position (0, 1, 2), which puts each class's P@1 under another class's name."""
    index = one_dimensional_index([3, 7, 7, 5], [3, 7, 3, 9, 9, 9])
    assert retrieval.per_class_precision_at_1(index) == {3: 1.0, 5: 0.0, 7: 0.5}


def test_worst_queries_name_query_ids_when_some_queries_have_no_reference() -> None:
    """Query 0 is of a class no reference has (R = 0: no AP). Catches: ids counted among the
    queries that have one (query 2 reported as 1)."""
    index = retrieval.RetrievalIndex(
        "x", 0, np.array([[0.0], [0.0], [1.9]], np.float32), np.array([2, 0, 0]),
        np.array([[1.0], [2.0], [3.0]], np.float32), np.array([0, 1, 0]),
    )  # fmt: skip
    worst, ap = retrieval.worst_queries(index, 1)
    assert worst.tolist() == [2]
    assert ap.tolist() == [0.25]


def test_every_per_query_score_comes_from_one_ranking_pass(monkeypatch) -> None:
    """AP@R and P@1 of the page come from one ``metrics.query_scores`` call (a 10k x 60k
    ranking costs 1.6 s on 2 cores). Catches: P@1 ranking the distances a second time, and
    a P@1 that drops queries without references (class 5 here) instead of counting a miss."""
    calls = []  # every ranking pass over the distances: the kernel, or the page's own
    real, distances = retrieval.metrics.query_scores, retrieval._distances
    monkeypatch.setattr(
        retrieval.metrics, "query_scores", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    monkeypatch.setattr(retrieval, "_distances", lambda *a: calls.append(2) or distances(*a))
    index = one_dimensional_index([3, 7, 7, 5], [3, 7, 3, 9, 9, 9])
    np.testing.assert_array_equal(index.precision_at_1, [True, True, False, False])
    assert np.isnan(index.ap_at_r[3])
    assert retrieval.per_class_precision_at_1(index) == {3: 1.0, 5: 0.0, 7: 0.5}
    assert calls == [1]
