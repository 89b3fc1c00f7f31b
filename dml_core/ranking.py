"""The ranking kernel behind P@1, R-Precision and MAP@R: each query's first R neighbours.

For a query with R same-class references (Musgrave, Belongie and Lim 2020, "A Metric Learning
Reality Check", sec. 3.2), the three scores depend only on which of its first R neighbours share
its label, in order. Two ways to get them, with the same results:

* ``exact_scores``: ``torch.topk`` of k = max R neighbours on each query's distance row, as
  pytorch-metric-learning's ``AccuracyCalculator`` with ``CustomKNN(LpDistance(
  normalize_embeddings=False))`` does, ties and the removal of the query itself included. Any
  device and dtype. Its ``topk`` costs most of the time (a partial sort of 60k distances per
  query for FashionMNIST).
* ``fast_scores`` (CPU, float32): squared distances from one matmul (the augmented vectors of
  ``torch.cdist``'s matmul path, so the same values), a per-query threshold read from a strided
  sample of the references, the distances below it packed with a one-bit "other class" flag into
  32-bit keys, and one ``np.sort`` of about R keys per query instead of a selection over all
  references. Every reference that can be among the first R passes the threshold (rows where
  too few pass are widened to all references), so the ranking is exact up to ties. Chunks of
  queries go to one worker thread per core, each running its matmul on one torch thread (an
  OpenMP team beside busy numpy workers spun on the cores they needed: 6 s of CPU became 3.5).

Ties: where a same-class and an other-class reference are at equal distance within a query's
first R + 1, the library's order is whatever its ``topk`` (a partial sort) leaves, which no sort
reproduces. ``fast_scores`` recomputes such queries with ``exact_scores`` whenever the tie can
change P@1 or R-Precision, and otherwise until the ties left can move the mean AP@R by at most
``TIE_TOLERANCE``. With duplicated or quantised embeddings nearly every tied query is
recomputed; with float32 embeddings the ties are isolated pairs deep in the ranking.

The distances themselves are those of ``torch.cdist``'s matmul path, but the matmul's rounding
can depend on how many queries it is given at once (MKL picks kernels by shape), in PML's call as
in this one; near-ties may then swap, which moves FashionMNIST's MAP@R by about 1e-9.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["exact_scores", "fast_scores", "per_query_r"]

FAST_ROWS = 64  # queries per matmul chunk on the fast path: (64, 60k) float32 is 15 MB
SAMPLE_SIZE = 2048  # about this many references (every s-th) set each query's threshold
_NO_KEY = np.iinfo(np.uint32).max  # padding key: flag 1 (a miss) and a NaN distance
# What ties left in ``topk``'s hands may move the mean AP@R by, at most (P@1 and R-Precision are
# never left to them): a float32 tie between a same-class and an other-class reference falls
# within the first R of about half of FashionMNIST's queries (R = 6000), nearly all deep enough
# to move AP@R by less than 1e-7; recomputing them all would cost as much as ``topk`` itself.
TIE_TOLERANCE = 1e-7


def per_query_r(query_labels: Tensor, ref_labels: Tensor, same_set: bool) -> Tensor:
    """R of every query: the references sharing its label (itself excluded when ``same_set``)."""
    uniq, counts = torch.unique(ref_labels, return_counts=True)
    if uniq.numel() == 0:
        return torch.zeros_like(query_labels)
    pos = torch.searchsorted(uniq, query_labels).clamp_max(uniq.numel() - 1)
    r_all = torch.where(uniq[pos] == query_labels, counts[pos], 0)
    return r_all - 1 if same_set else r_all


def _scores_from_hits(hit: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """P@1, R-Precision, AP@R (float64) from (c, k) hit flags whose first R of each row count.

    ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)`` with ``P(i) = (1/i) sum_{j<=i} rel(j)`` (Musgrave
    et al. 2020, sec. 3.2).
    """
    ranks = torch.arange(1, hit.shape[1] + 1, device=hit.device, dtype=torch.float64)
    hit = hit & (ranks.unsqueeze(0) <= r.unsqueeze(1))  # only the first R neighbours count
    hit_f = hit.to(torch.float64)
    r_f = r.to(torch.float64)
    precision = hit_f.cumsum(1) / ranks  # (c, k) P(i)
    return hit_f[:, 0], hit_f.sum(1) / r_f, (precision * hit_f).sum(1) / r_f


def exact_scores(
    query_emb: Tensor,
    query_labels: Tensor,
    ref_emb: Tensor,
    ref_labels: Tensor,
    rows: Tensor,
    r_all: Tensor,
    *,
    same_set: bool,
    chunk_size: int,
) -> Tensor:
    """Scores of the queries ``rows`` (all with R > 0) as ``AccuracyCalculator`` ranks them.

    k = max R over all queries (PML's ``k="max_bin_count"``); the distances are ``torch.cdist``
    with the matmul path exactly when PML's call over all queries takes it. With ``same_set``
    the k + 1 nearest are taken and the query itself is removed (the last one where it is not
    among them), as PML's ``return_results`` does, so tied references keep PML's order.

    Returns:
        (3, len(rows)) float64: P@1, R-Precision, AP@R.
    """
    device = query_emb.device
    n_query, n_ref = query_emb.shape[0], ref_emb.shape[0]
    k = int(r_all.max())
    take = min(k + int(same_set), n_ref)
    mode = (
        "use_mm_for_euclid_dist" if n_query > 25 or n_ref > 25 else "donot_use_mm_for_euclid_dist"
    )
    out = torch.empty((3, rows.numel()), dtype=torch.float64, device=device)
    for start in range(0, rows.numel(), chunk_size):
        chunk = rows[start : start + chunk_size]
        dist = torch.cdist(query_emb[chunk], ref_emb, compute_mode=mode)  # (c, n_ref)
        idx = torch.topk(dist, take, dim=1, largest=False, sorted=True).indices  # (c, take)
        del dist
        if same_set:
            is_self = idx == chunk.unsqueeze(1)
            is_self[~is_self.any(1), -1] = True  # PML drops the last neighbour instead
            idx = idx[~is_self].view(chunk.numel(), take - 1)
        hit = ref_labels[idx] == query_labels[chunk].unsqueeze(1)  # (c, k)
        scores = _scores_from_hits(hit, r_all[chunk])
        out[:, start : start + chunk.numel()] = torch.stack(scores)
    return out


def _augmented(x: Tensor, query_side: bool) -> Tensor:
    """``torch.cdist``'s matmul operands: [-2x, |x|^2, 1] for queries, [x, 1, |x|^2] for refs."""
    norm = x.pow(2).sum(-1, keepdim=True)
    ones = torch.ones_like(norm)
    return torch.cat([x.mul(-2), norm, ones] if query_side else [x, ones, norm], -1)


def _chunk_top(d2: np.ndarray, n_same: int, r: int, stride: int) -> np.ndarray:
    """Each row's first R + 1 keys ``(bits(d^2) << 1) | other_class``, ascending: (c, R + 1).

    ``d2``: (c, n_ref) squared distances, the query's own class in the first ``n_same``
    columns. Candidates are the references at or below a threshold read from every
    ``stride``-th reference, set so that R + 1 of them usually pass; rows where fewer pass take
    every reference. Rows with fewer than R + 1 references are padded with ``_NO_KEY``.
    """
    c, n_ref = d2.shape
    need = min(r + 1, n_ref)
    n_sample = len(range(0, n_ref, stride))
    expected = need / stride  # sample points expected below the need-th distance
    kth = math.ceil(expected + 3.0 * math.sqrt(expected) + 8)
    if kth < n_sample:
        sample = np.ascontiguousarray(d2[:, ::stride])  # (c, n_sample): partitions faster
        threshold = np.partition(sample, kth, axis=1)[:, kth]  # (c,)
        taken = np.flatnonzero(d2 <= threshold[:, None])  # NaN-free (checked by the caller)
    else:
        taken = np.arange(d2.size)
    # Row i's candidates are taken[bounds[i]:bounds[i + 1]], its own class's come first.
    row_starts = np.arange(c + 1) * n_ref
    bounds = np.searchsorted(taken, row_starts)
    counts = np.diff(bounds)
    short = np.flatnonzero(counts < need)
    if short.size:  # too few below the threshold: take the whole row
        parts = np.split(taken, bounds[1:-1])
        for i in short:
            parts[i] = np.arange(row_starts[i], row_starts[i + 1])
        taken = np.concatenate(parts)
        bounds = np.searchsorted(taken, row_starts)
        counts = np.diff(bounds)
    same = np.searchsorted(taken, row_starts[:-1] + n_same) - bounds[:-1]  # (c,)
    values = d2.ravel()[taken]  # every row's candidates, row after row
    np.maximum(values, 0.0, out=values)  # torch.cdist clamps d^2 at 0 (-0.0 shifts to 0.0)
    keys = values.view(np.uint32)
    keys <<= 1
    ends = bounds[1:]
    top = np.full((c, r + 1), _NO_KEY, dtype=np.uint32)
    for i in range(c):
        row = keys[ends[i] - counts[i] : ends[i]]
        row[same[i] :] |= 1
        row.sort()
        top[i, : min(row.size, r + 1)] = row[: r + 1]
    return top


def _chunk_scores(keys: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3, c) scores from sorted keys, with what ties of distance could change in them.

    Distances are compared as ``torch.cdist`` returns them (the square root of the clamped
    squared distance). A tie matters where equal distances of opposite flags sit within the
    first R + 1 neighbours: ``topk`` may order them either way. Returns ``(scores, hard, soft)``:
    ``hard`` marks rows where a tie can change P@1 or R-Precision (ranks 1-2, the R-th equal to
    the (R + 1)-th) or involves three or more tied references; ``soft`` bounds how far the other
    ties (isolated pairs at ranks i, i + 1) can move AP@R: by at most ``1 / (R (i + 1))`` each
    (the hit's term ``j / i`` becomes ``j / (i + 1)``, with ``j <= i``).
    """
    top = keys[:, : r + 1]
    if top.shape[1] < r + 1:  # fewer than R + 1 references: no boundary
        top = np.pad(top, ((0, 0), (0, r + 1 - top.shape[1])), constant_values=_NO_KEY)
    miss = (top & 1).astype(bool)  # (c, R + 1)
    dist = np.sqrt((top >> 1).view(np.float32))  # padding reads as NaN: never equal
    equal = dist[:, 1:] == dist[:, :-1]  # (c, R): pair i is ranks i + 1 and i + 2
    mixed = equal & (miss[:, 1:] != miss[:, :-1])
    grouped = np.zeros_like(equal)  # the pair touches another tied pair
    grouped[:, 1:] |= equal[:, :-1]
    grouped[:, :-1] |= equal[:, 1:]
    inner = mixed[:, : r - 1]
    hard = mixed[:, 0] | equal[:, r - 1] | (inner & grouped[:, : r - 1]).any(1)
    bound = 1.0 / (r * np.arange(2, r + 1, dtype=np.float64))  # pair i: 1 / (R (i + 2))
    soft = (inner & ~grouped[:, : r - 1]) @ bound if r > 1 else np.zeros(len(keys))
    hit = ~miss[:, :r]
    found = np.cumsum(hit, axis=1, dtype=np.int32)  # (c, R) hits among the first i
    inv_rank = 1.0 / np.arange(1, r + 1, dtype=np.float64)
    ap = np.einsum("ij,ij,j->i", hit, found, inv_rank) / r
    scores = np.stack([hit[:, 0].astype(np.float64), found[:, -1] / r, ap])
    return scores, hard, soft


def _rows_to_redo(hard: np.ndarray, soft: np.ndarray, budget: float) -> np.ndarray:
    """Rows to recompute with ``topk``.

    The ``hard`` ones, then those with the largest ``soft`` bounds until the bounds left sum
    to at most ``budget``.
    """
    redo = hard.copy()
    candidates = np.flatnonzero(~hard & (soft > 0))
    by_bound = candidates[np.argsort(soft[candidates], kind="stable")]
    kept = np.cumsum(soft[by_bound]) <= budget  # smallest bounds first
    redo[by_bound[~kept]] = True
    return np.flatnonzero(redo)


def _class_groups(
    query_labels: Tensor, ref_labels: Tensor, r_all: Tensor
) -> Iterator[tuple[Tensor, int, Tensor]]:
    """Per label: reference columns, how many are its own, and its queries with R > 0.

    The columns are the label's own references, then the others (ascending indices each), so
    one bound splits same-class from other-class columns.
    """
    valid = torch.nonzero(r_all > 0).squeeze(1)
    order = valid[torch.argsort(query_labels[valid], stable=True)]
    labels, counts = torch.unique_consecutive(query_labels[order], return_counts=True)
    for label, group in zip(labels, torch.split(order, counts.tolist()), strict=True):
        same = torch.nonzero(ref_labels == label).squeeze(1)
        other = torch.nonzero(ref_labels != label).squeeze(1)
        yield torch.cat([same, other]), same.numel(), group


def _in_workers(work: Callable[[Tensor], None], chunks: list[Tensor], workers: int) -> None:
    """``work(chunk)`` for every chunk, on ``workers`` threads that each run torch on one core.

    Each thread takes the next chunk when it is done with one (the chunks' costs differ with
    R). Torch's matmul then runs on as many cores as there are workers and no OpenMP team
    waits on a core another worker holds. ``torch.set_num_threads`` also sets the count that
    threads started later adopt, so every worker gives the count it found back when it ends;
    all of them read it before any sets its own (a barrier: else a late starter would find the
    1 an early one set, and leave it behind for the whole process).
    The first error of any worker is raised here.
    """
    queue = iter(chunks)
    lock = threading.Lock()
    errors: list[BaseException] = []
    count = max(1, workers)
    all_found = threading.Barrier(count)

    def run() -> None:
        found = torch.get_num_threads()
        all_found.wait()
        torch.set_num_threads(1)
        try:
            while not errors:
                with lock:
                    chunk = next(queue, None)
                if chunk is None:
                    return
                work(chunk)
        except BaseException as err:  # handed to the caller below
            errors.append(err)
        finally:
            torch.set_num_threads(found)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def fast_scores(
    query_emb: Tensor,
    query_labels: Tensor,
    ref_emb: Tensor,
    ref_labels: Tensor,
    r_all: Tensor,
    *,
    same_set: bool,
    chunk_size: int,
) -> Tensor:
    """The scores ``exact_scores`` gives, for every query with R > 0, on the CPU in float32.

    Args:
        query_emb: finite float32 CPU query embeddings, (n_query, D).
        query_labels: (n_query,) int64 labels.
        ref_emb: finite float32 CPU reference embeddings, (n_ref, D).
        ref_labels: (n_ref,) int64 labels.
        r_all: (n_query,) R of each query (``per_query_r``).
        same_set: query i is reference i and is never its own neighbour.
        chunk_size: at most this many queries' distances are held at once per worker.

    Returns:
        (3, n_query) float64 scores, NaN where R = 0.
    """
    n_query, n_ref = query_emb.shape[0], ref_emb.shape[0]
    ref_aug = _augmented(ref_emb, query_side=False)  # (n_ref, D + 2)
    query_aug = _augmented(query_emb, query_side=True)  # (n_query, D + 2)
    stride = max(1, n_ref // SAMPLE_SIZE)
    out = np.full((3, n_query), np.nan)
    hard = np.zeros(n_query, dtype=bool)
    soft = np.zeros(n_query)

    rows_per_chunk = min(chunk_size, FAST_ROWS)
    chunks = []
    for columns, n_same, group in _class_groups(query_labels, ref_labels, r_all):
        class_aug = ref_aug[columns]  # (n_ref, D + 2), the query's class first
        where = torch.empty_like(columns)
        where[columns] = torch.arange(n_ref)  # reference j sits in column where[j]
        chunks += [(rows, class_aug, n_same, where) for rows in torch.split(group, rows_per_chunk)]
    local = threading.local()  # each worker's distance buffer, reused chunk after chunk

    def work(chunk: tuple[Tensor, Tensor, int, Tensor]) -> None:
        rows, class_aug, n_same, where = chunk
        if not hasattr(local, "buffer"):
            local.buffer = torch.empty(rows_per_chunk, n_ref)
        # (c, n_ref) squared distances, as torch.cdist's matmul path computes them
        d2 = torch.mm(query_aug[rows], class_aug.T, out=local.buffer[: rows.numel()]).numpy()
        if same_set:  # query i is reference i, never its own neighbour
            d2[np.arange(rows.numel()), where[rows].numpy()] = np.inf
        r = int(r_all[rows[0]])
        picked = rows.numpy()
        out[:, picked], hard[picked], soft[picked] = _chunk_scores(
            _chunk_top(d2, n_same, r, stride), r
        )

    _in_workers(work, chunks, min(torch.get_num_threads(), 4))
    scores = torch.from_numpy(out)
    redo = _rows_to_redo(hard, soft, TIE_TOLERANCE * int((r_all > 0).sum()))
    if redo.size:
        rows = torch.from_numpy(redo)
        scores[:, rows] = exact_scores(
            query_emb, query_labels, ref_emb, ref_labels, rows, r_all,
            same_set=same_set, chunk_size=chunk_size,
        )  # fmt: skip
    return scores
