"""The ranking kernel behind P@1, R-Precision and MAP@R: each query's first R neighbours.

For a query with R same-class references (Musgrave, Belongie and Lim 2020, "A Metric Learning
Reality Check", sec. 3.2), the three scores depend only on which of its first R neighbours share
its label, in order. Two ways to get them, with the same results:

* ``exact_scores``: ``torch.topk`` of k = max R neighbours on each query's distance row, as
  pytorch-metric-learning's ``AccuracyCalculator`` with ``CustomKNN(LpDistance(
  normalize_embeddings=False))`` does, ties and the removal of the query itself included. Any
  device and dtype. Its ``topk`` costs most of the time (a partial sort of 60k distances per
  query for FashionMNIST).
* ``fast_scores`` (CPU, float32): squared distances from matmuls (the augmented vectors of
  ``torch.cdist``'s matmul path, so the same values), then a compiled kernel
  (``ranking_kernel``): a per-query threshold read from a strided sample of the references,
  the distances below it packed with a one-bit "other class" flag into 32-bit keys, and a
  radix sort of those (about R + 20%) instead of a selection over all references. Every
  reference that can be among the first R passes the threshold (rows where too few pass are
  widened to all references), so the ranking is exact up to ties. The distances come in
  blocks of ``BLOCK_COLUMNS`` references that the kernel reads while they are in cache (a
  whole (64, 60k) chunk went to memory and back: 20% more CPU). Chunks of queries go to one
  worker thread per core, each running its matmuls on one torch thread and the kernel without
  the GIL (an OpenMP team beside busy workers spun on the cores they needed).

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

FAST_ROWS = 64  # queries per chunk on the fast path
BLOCK_COLUMNS = 4096  # references per matmul: a (64, 4096) float32 block (1 MB) stays in L2
SAMPLE_SIZE = 2048  # about this many references (every s-th) set each query's threshold
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


def _kth(n_ref: int, r: int, stride: int) -> int:
    """Rank in the sample of every ``stride``-th reference that sets a row's threshold.

    About ``need / stride`` sample points lie below the row's (R + 1)-th distance; three
    standard deviations and 8 more make a row with too few candidates rare (it then takes
    every reference).
    """
    expected = min(r + 1, n_ref) / stride
    return math.ceil(expected + 3.0 * math.sqrt(expected) + 8)


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
    from dml_core import ranking_kernel  # numba: loaded only where metrics are computed

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
        sample_aug = class_aug[::stride]  # (n_sample, D + 2), every stride-th column
        where = torch.empty_like(columns)
        where[columns] = torch.arange(n_ref)  # reference j sits in column where[j]
        chunks += [
            (rows, class_aug, sample_aug, n_same, where)
            for rows in torch.split(group, rows_per_chunk)
        ]
    local = threading.local()  # each worker's buffers, reused chunk after chunk

    def collect(
        rows: Tensor, class_aug: Tensor, n_same: int, where: Tensor, t: np.ndarray, keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's keys at or below its threshold ``t``, block of columns after block."""
        c = rows.numel()
        counts = np.zeros(c, dtype=np.int64)
        kmins = np.full(c, ranking_kernel.NO_KEY)
        query = query_aug[rows]  # (c, D + 2)
        own = where[rows].numpy()  # with same_set, each row's own column
        for col0 in range(0, n_ref, BLOCK_COLUMNS):
            width = min(BLOCK_COLUMNS, n_ref - col0)
            # (c, width) squared distances, as torch.cdist's matmul path computes them
            block = torch.mm(
                query, class_aug[col0 : col0 + width].T, out=local.block[: c * width].view(c, width)
            ).numpy()
            if same_set:  # query i is reference i, never its own neighbour
                inside = np.flatnonzero((own >= col0) & (own < col0 + width))
                block[inside, own[inside] - col0] = np.inf
            ranking_kernel.collect_block(block, col0, n_same, t, keys, counts, kmins)
        return keys, counts, kmins

    def work(chunk: tuple[Tensor, Tensor, Tensor, int, Tensor]) -> None:
        rows, class_aug, sample_aug, n_same, where = chunk
        if not hasattr(local, "block"):
            local.block = torch.empty(rows_per_chunk * min(BLOCK_COLUMNS, n_ref))  # contiguous
            local.keys = np.empty((rows_per_chunk, n_ref + 1), dtype=np.uint32)
        r = int(r_all[rows[0]])
        kth = _kth(n_ref, r, stride)
        t = np.full(rows.numel(), np.inf, dtype=np.float32)
        if kth < sample_aug.shape[0]:
            ranking_kernel.thresholds(torch.mm(query_aug[rows], sample_aug.T).numpy(), kth, t)
        keys, counts, kmins = collect(rows, class_aug, n_same, where, t, local.keys[: rows.numel()])
        short = np.flatnonzero(counts < min(r + 1, n_ref))
        if short.size:  # too few at or below the threshold: every reference
            t[short] = np.inf
            keys[short], counts[short], kmins[short] = collect(
                rows[torch.from_numpy(short)], class_aug, n_same, where, t[short],
                np.empty_like(keys[short]),
            )  # fmt: skip
        picked = rows.numpy()
        scores = np.empty((3, picked.size))
        tie_hard = np.empty(picked.size, dtype=bool)
        tie_soft = np.empty(picked.size)
        ranking_kernel.finish(keys, counts, kmins, t, r, scores, tie_hard, tie_soft)
        out[:, picked], hard[picked], soft[picked] = scores, tie_hard, tie_soft

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
