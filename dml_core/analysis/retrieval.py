"""Retrieval with a trained run: nearest neighbours, per-query AP@R, worst queries.

What the Retrieval page shows: for a query (a test image) the k nearest references (the
retrieval database: the training images, or in open-set mode the training images of classes
never trained on), with their distances and whether they share the query's class; the queries
the embedding serves worst; and the probe points of the run's snapshots mapped back to queries.

Definitions follow Musgrave, Belongie and Lim (2020), "A Metric Learning Reality Check"
(ECCV), section 3.2, computed by the kernel ``metrics.retrieval_metrics`` reduces
(``metrics.query_scores``): for a query q with R references of its class, rank the references
by Euclidean distance and let rel(i) = 1 when the i-th nearest shares q's label; then

    AP@R(q) = (1/R) * sum_{i<=R} P(i) rel(i),   P(i) = (1/i) * sum_{j<=i} rel(j),

and MAP@R is the mean of AP@R over the queries with R > 0.

The embeddings of the query and reference splits are the run's saved ones
(``RunStore.load_embeddings``): a finished run saved its final evaluation's, so opening it
embeds nothing. A run without them (stopped, or from before they were saved) is embedded once
per checkpoint and saved the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

from dml_core import metrics
from dml_core.config import RunConfig
from dml_core.data import Dataset, Split, load_for_config
from dml_core.evaluation import embed
from dml_core.nets import Embedder, build_net
from dml_core.runs import RunEmbeddings, RunStore
from dml_core.snapshot import make_probe_indices
from dml_core.user_data.for_runs import is_table, sample_captions, thumbnails

CHECKPOINT_FILE = "checkpoint.pt"
CHUNK = 1024  # queries whose distances to all references are held at once
AUTO_INDEX_MAX = 10_000  # query + reference images embedded without asking (digits: 1,797)


def has_checkpoint(store: RunStore, run_id: str) -> bool:
    """Whether the run has saved weights (only those can be used for retrieval)."""
    return (store.path(run_id) / CHECKPOINT_FILE).exists()


def runs_with_checkpoint(store: RunStore) -> list[str]:
    """Ids of the saved runs that have a checkpoint, newest first."""
    return [run_id for run_id in store.list() if has_checkpoint(store, run_id)]


def load_run_data(store: RunStore, run_id: str) -> tuple[RunConfig, Dataset]:
    """The run's config and its dataset (no net: what the page needs to show images)."""
    cfg = store.load(run_id).config
    return cfg, load_for_config(cfg)


def index_is_cheap(dataset: Dataset) -> bool:
    """Whether embedding the query and reference splits is quick enough to do unasked."""
    return len(dataset.query) + len(dataset.reference) <= AUTO_INDEX_MAX


def load_run_model(store: RunStore, run_id: str) -> tuple[RunConfig, Embedder, Dataset]:
    """The run's config, its net (last checkpoint, eval mode, CPU) and its dataset.

    The net is rebuilt from the config with ``nets.build_net``; its pixel statistics
    (``mean``, ``std``) are buffers and come back with the weights.
    """
    cfg, dataset = load_run_data(store, run_id)
    net = build_net(cfg.net, dataset.input_shape, cfg.embedding_dim, cfg.normalize)
    state = store.load_checkpoint(run_id)
    net.load_state_dict(state["net"])
    return cfg, net.eval(), dataset


def checkpoint_step(store: RunStore, run_id: str) -> int:
    """The training step of the saved checkpoint (what the cached embeddings belong to)."""
    return int(store.load_checkpoint(run_id)["step"])


@dataclass(frozen=True)
class RetrievalIndex:
    """Embeddings of a run's query and reference splits at one checkpoint.

    Attributes:
        run_id: the run.
        step: the checkpoint's training step.
        query_emb: (n_query, D) float32 embeddings of the query (test) images.
        query_labels: (n_query,) int64.
        ref_emb: (n_ref, D) float32 embeddings of the reference (database) images.
        ref_labels: (n_ref,) int64.
    """

    run_id: str
    step: int
    query_emb: np.ndarray
    query_labels: np.ndarray
    ref_emb: np.ndarray
    ref_labels: np.ndarray

    @property
    def n_queries(self) -> int:
        """Number of queries."""
        return len(self.query_labels)

    @cached_property
    def scores(self) -> metrics.QueryScores:
        """Every query's P@1, R-Precision and AP@R, from one ranking pass (computed once).

        One pass, not one per score: the P@1 per class used to rank the 10k x 60k distances
        again, 1.7 s of a FashionMNIST run's first Retrieval view on 2 cores (AP@R: 1.6 s).
        """
        return per_query_scores(self.query_emb, self.query_labels, self.ref_emb, self.ref_labels)

    @property
    def ap_at_r(self) -> np.ndarray:
        """AP@R of every query, (n_query,) float64; NaN where R = 0."""
        return self.scores.ap_at_r

    @property
    def precision_at_1(self) -> np.ndarray:
        """Whether each query's nearest reference shares its class, (n_query,) bool.

        False where the query's class has no reference.
        """
        return self.scores.precision_at_1 == 1.0


def _distances(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Euclidean distances (n_q, n_ref) in float32, as ``torch.cdist`` computes them."""
    return torch.cdist(torch.from_numpy(query), torch.from_numpy(ref)).numpy()


def has_cached_index(store: RunStore, run_id: str, step: int | None = None) -> bool:
    """Whether the run's saved embeddings exist and belong to its current checkpoint.

    ``step``: the checkpoint's step when the caller has read it already (saves a second
    read of the whole checkpoint).
    """
    saved = store.embeddings_step(run_id)
    if saved is None:
        return False
    return saved == (checkpoint_step(store, run_id) if step is None else step)


def build_index(store: RunStore, run_id: str, *, use_cache: bool = True) -> RetrievalIndex:
    """The run's retrieval index: its saved embeddings, or embedded on the CPU and saved.

    The saved embeddings (the final evaluation's, or an earlier call's) are used when their
    step is the checkpoint's; else the query and reference splits are embedded and saved
    atomically (``RunStore.save_embeddings``) for the next time.

    Args:
        store: the run store.
        run_id: a run with a checkpoint.
        use_cache: read the saved embeddings when valid (always (re)written after embedding).
    """
    step = checkpoint_step(store, run_id)
    saved = store.load_embeddings(run_id) if use_cache else None
    if saved is None or saved.step != step:
        _, net, dataset = load_run_model(store, run_id)
        cpu = torch.device("cpu")
        saved = RunEmbeddings(
            step,
            query_emb=embed(net, dataset.query.x, cpu).numpy(),  # (n_q, D)
            query_labels=dataset.query.y.numpy().astype(np.int64),
            ref_emb=embed(net, dataset.reference.x, cpu).numpy(),  # (n_ref, D)
            ref_labels=dataset.reference.y.numpy().astype(np.int64),
        )
        store.save_embeddings(run_id, saved)
    return RetrievalIndex(
        run_id,
        step,
        np.asarray(saved.query_emb, dtype=np.float32),
        np.asarray(saved.query_labels, dtype=np.int64),
        np.asarray(saved.ref_emb, dtype=np.float32),
        np.asarray(saved.ref_labels, dtype=np.int64),
    )


def per_query_scores(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    chunk_size: int = CHUNK,
) -> metrics.QueryScores:
    """``metrics.query_scores`` of numpy arrays, as (n_query,) float64 numpy arrays.

    The kernel ``metrics.retrieval_metrics`` reduces, so ``np.nanmean`` of each score is its
    figure (P@1, R-Precision, MAP@R). NaN for queries whose class has no reference (R = 0).
    """
    scores = metrics.query_scores(
        torch.as_tensor(np.asarray(query_emb, dtype=np.float32)),
        torch.as_tensor(np.asarray(query_labels, dtype=np.int64)),
        torch.as_tensor(np.asarray(ref_emb, dtype=np.float32)),
        torch.as_tensor(np.asarray(ref_labels, dtype=np.int64)),
        chunk_size=chunk_size,
    )
    return metrics.QueryScores(*(score.cpu().numpy() for score in scores))


def average_precision_at_r(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    chunk_size: int = CHUNK,
) -> np.ndarray:
    """AP@R of every query (Musgrave et al. 2020, sec. 3.2; see the module docstring).

    Returns:
        (n_query,) float64 in [0, 1]; NaN for queries whose class has no reference (R = 0).
    """
    return per_query_scores(query_emb, query_labels, ref_emb, ref_labels, chunk_size).ap_at_r


def mean_ap_at_r(index: RetrievalIndex) -> float:
    """MAP@R: the mean AP@R over the queries with R > 0 (0.0 when there are none, as PML)."""
    ap = index.ap_at_r
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


class Neighbours(NamedTuple):
    """The k nearest references of one query, nearest first.

    Attributes:
        indices: (k,) indices into the reference split.
        distances: (k,) Euclidean distances, ascending.
        correct: (k,) bool, whether each shares the query's label.
    """

    indices: np.ndarray
    distances: np.ndarray
    correct: np.ndarray


def neighbours(index: RetrievalIndex, query_i: int, k: int) -> Neighbours:
    """The ``k`` nearest references of query ``query_i`` (ties: lower index first)."""
    if not 0 <= query_i < index.n_queries:
        raise ValueError(
            f"The 'query_i' parameter must be in [0, {index.n_queries - 1}]. Got {query_i}."
        )
    k = max(1, min(int(k), len(index.ref_labels)))
    dist = _distances(index.query_emb[query_i : query_i + 1], index.ref_emb)[0]  # (n_ref,)
    order = np.argsort(dist, kind="stable")[:k]  # (k,)
    correct = index.ref_labels[order] == index.query_labels[query_i]
    return Neighbours(order, dist[order].astype(np.float64), correct)


def worst_queries(index: RetrievalIndex, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` queries with the lowest AP@R (ties: lower index first), and their AP@R.

    Queries with R = 0 (no reference of their class) are left out, as in MAP@R.
    """
    ap = index.ap_at_r
    valid = np.flatnonzero(~np.isnan(ap))
    order = valid[np.argsort(ap[valid], kind="stable")][: max(int(n), 0)]
    return order, ap[order]


def per_class_precision_at_1(index: RetrievalIndex) -> dict[int, float]:
    """P@1 of the queries of each class, {label: P@1}, over the labels present in the queries."""
    hits = index.precision_at_1
    return {
        int(c): float(hits[index.query_labels == c].mean()) for c in np.unique(index.query_labels)
    }


def probe_query_indices(cfg: RunConfig, dataset: Dataset) -> np.ndarray:
    """Query-split index of each probe point of the run's snapshots, (n_probe,) int64.

    The probe set is the class-balanced subset ``Trainer`` draws from the query split with
    ``snapshot.make_probe_indices(query labels, cfg.probe_size, cfg.seed)``; the same call
    gives the same indices, in the snapshot's row order.
    """
    return make_probe_indices(dataset.query.y.numpy(), cfg.probe_size, cfg.seed).astype(np.int64)


def images(split: Split, indices: np.ndarray | list[int]) -> np.ndarray:
    """Images of ``split`` at ``indices`` as uint8 (n, H, W), for display (RGB as luminance).

    A table's rows have no picture: blank tiles (``user_data.thumbnails``); name them with
    :func:`captions`.
    """
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).reshape(-1)
    return thumbnails(split.x[idx])  # (n, H, W)


def has_images(dataset: Dataset) -> bool:
    """Whether the samples are images (thumbnails) rather than a table's rows (captions)."""
    return not is_table(dataset)


def captions(dataset: Dataset, part: str, indices: np.ndarray | list[int]) -> list[str]:
    """A caption per sample, where it comes from and its class (``user_data.sample_captions``).

    ``row 12: beta`` for a table, ``circle/003.png: circle`` for a user's image, the class
    name for a built-in image.

    Args:
        dataset: the run's data.
        part: ``query`` or ``reference`` (or ``train``).
        indices: indices into that part.
    """
    return sample_captions(dataset, part, indices)
