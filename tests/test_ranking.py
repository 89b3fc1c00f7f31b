"""The two ranking paths behind MAP@R agree query by query (dml_core.ranking)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from dml_core import ranking, ranking_kernel
from tests.thread_counts import fresh_thread_count


def _both(q, ql, ref, rl, same_set: bool, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r_all = ranking.per_query_r(ql, rl, same_set)
    fast = ranking.fast_scores(q, ql, ref, rl, r_all, same_set=same_set, chunk_size=chunk_size)
    rows = torch.nonzero(r_all > 0).squeeze(1)
    exact = torch.full_like(fast, float("nan"))
    exact[:, rows] = ranking.exact_scores(
        q, ql, ref, rl, rows, r_all, same_set=same_set, chunk_size=chunk_size
    )
    return fast, exact


@pytest.mark.parametrize("same_set", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_fast_path_equals_topk_per_query(same_set: bool, chunk_size: int) -> None:
    """Catches a wrong class flag, a lost row, a mis-assigned chunk or a self-match.

    (Tried: flagging the query's own class as "other" instead of the rest, and leaving the
    query itself among its neighbours with same_set: both fail here.)
    """
    gen = torch.Generator().manual_seed(4)
    ref = torch.randn(700, 6, generator=gen)
    rl = torch.randint(0, 6, (700,), generator=gen)
    rl[-1] = 6  # a singleton class: R = 0 for it when same_set
    ref = ref + 0.8 * torch.nn.functional.one_hot(rl % 6, 6).float()
    if same_set:
        q, ql = ref[:300], rl[:300]  # references extend past the queries
    else:
        q, ql = torch.randn(90, 6, generator=gen), torch.randint(0, 8, (90,), generator=gen)
    fast, exact = _both(q, ql, ref, rl, same_set, chunk_size)
    assert torch.isnan(exact[2]).any() == (not same_set)  # labels 6, 7 absent from refs
    torch.testing.assert_close(fast, exact, atol=1e-12, rtol=0, equal_nan=True)


@pytest.mark.parametrize("same_set", [False, True])
def test_fast_path_in_blocks_of_columns_equals_topk(monkeypatch, same_set: bool) -> None:
    """Distances computed 96 columns at a time: the class boundary and each query's own
    column fall inside blocks.

    Catches a block's columns flagged from its own start instead of the row's (tried: the
    class split at ``n_same`` within every block) and the query's own column masked in the
    wrong block (tried: every block before the own column's too: fails with same_set).
    """
    monkeypatch.setattr(ranking, "BLOCK_COLUMNS", 96)
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn(700, 4, generator=gen)
    rl = torch.randint(0, 5, (700,), generator=gen)
    ref = ref + 0.8 * torch.nn.functional.one_hot(rl, 5)[:, :4].float()
    q, ql = (ref[:250], rl[:250]) if same_set else (ref[:250] + 0.05, rl[:250])
    fast, exact = _both(q, ql, ref, rl, same_set, 1024)
    torch.testing.assert_close(fast, exact, atol=1e-12, rtol=0, equal_nan=True)


def test_rows_with_too_few_candidates_take_every_reference(monkeypatch) -> None:
    """The sampled threshold can pass fewer than R + 1 references: the row is widened.

    Catches dropping the widening (the row's missing candidates read as misses). Here every
    20th column (the sample) is near the query and everything else far, so the threshold
    passes 21 references while R = 100.
    """
    monkeypatch.setattr(ranking, "SAMPLE_SIZE", 100)
    n_ref = 2000
    rl = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(n_ref - 100, dtype=torch.long)])
    ref = torch.full((n_ref, 2), 5.0) + torch.linspace(0, 1, n_ref).unsqueeze(1)
    # Columns are class 0 (100) then the others in index order: column p >= 100 is ref p.
    sampled = torch.arange(120, 520, 20)  # sampled columns, other class, near the query
    ref[sampled] = 0.01 * torch.arange(1, sampled.numel() + 1).float().unsqueeze(1)
    q, ql = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    fast, exact = _both(q, ql, ref, rl, False, 1024)
    torch.testing.assert_close(fast, exact, atol=1e-12, rtol=0)
    # The 20 decoys first, then class 0 (indices 0-99 lie nearest of the rest): 80 of 100.
    assert float(fast[0, 0]) == 0.0
    assert float(fast[1, 0]) == pytest.approx(0.8, abs=1e-12)


def test_rows_to_redo_spends_the_budget_on_the_smallest_bounds() -> None:
    """Catches keeping the largest bounds (or ignoring hard rows) instead."""
    hard = np.array([False, True, False, False, False])
    soft = np.array([0.5, 0.0, 0.1, 0.2, 0.0])
    np.testing.assert_array_equal(ranking._rows_to_redo(hard, soft, budget=0.35), [0, 1])
    np.testing.assert_array_equal(ranking._rows_to_redo(hard, soft, budget=0.05), [0, 1, 2, 3])
    np.testing.assert_array_equal(ranking._rows_to_redo(hard, soft, budget=1.0), [1])


def _keys(dist: list[float], miss: list[int]) -> np.ndarray:
    d2 = np.square(np.array(dist, dtype=np.float32))
    return (d2.view(np.uint32) << 1) | np.array(miss, dtype=np.uint32)


def _row(keys: np.ndarray, r: int) -> tuple[np.ndarray, bool, float]:
    """(P@1, R-Precision, AP@R), hard and soft of one row of sorted keys."""
    p1, rp, ap, hard, soft = ranking_kernel.row_scores(keys, r)
    return np.array([p1, rp, ap]), hard, soft


def test_tie_bounds_cover_the_other_order() -> None:
    """An isolated hit/miss tie at ranks i, i + 1 moves AP@R by exactly j / (R i (i + 1)),
    its hit being the j-th.

    Catches a bound off by one rank or one hit, in either order of the pair (tried: j counted
    before the pair's hit when it comes second gives 1/48 for miss_first), and a tie at ranks
    1-2 or at the R-th place not marked hard.
    """
    r = 4
    hit_first = _keys([1.0, 2.0, 3.0, 3.0, 9.0], [1, 0, 0, 1, 0])  # tie at ranks 3, 4
    miss_first = _keys([1.0, 2.0, 3.0, 3.0, 9.0], [1, 0, 1, 0, 0])
    scores_a, hard_a, soft_a = _row(hit_first, r)
    scores_b, hard_b, soft_b = _row(miss_first, r)
    assert not hard_a
    assert not hard_b
    assert soft_a == pytest.approx(2 / (r * 3 * 4)) == soft_b  # the 2nd hit, ranks 3 and 4
    assert abs(scores_a[2] - scores_b[2]) == pytest.approx(soft_a, rel=1e-12)
    assert scores_a[1] == scores_b[1]  # R-Precision does not see it
    at_top = _keys([1.0, 1.0, 3.0, 4.0, 9.0], [1, 0, 0, 0, 0])
    at_r = _keys([1.0, 2.0, 3.0, 4.0, 4.0], [0, 0, 0, 0, 0])
    triple = _keys([1.0, 2.0, 2.0, 2.0, 9.0], [0, 0, 1, 0, 0])
    for keys in (at_top, at_r, triple):
        assert _row(keys, r)[1]


def test_workers_give_the_thread_count_back() -> None:
    """Each worker runs torch on one thread and restores the count new threads adopt.

    Catches a worker that keeps ``torch.set_num_threads(1)``: every thread started later (a
    training job's) would then run torch on one core. Tried: without the restore, this fails.
    """
    before = fresh_thread_count()
    gen = torch.Generator().manual_seed(0)
    ref, rl = torch.randn(300, 4, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    r_all = ranking.per_query_r(rl, rl, True)
    ranking.fast_scores(ref, rl, ref, rl, r_all, same_set=True, chunk_size=16)
    assert fresh_thread_count() == before


def test_workers_that_start_late_give_back_the_count_from_before_all_of_them() -> None:
    """Catches workers that each restore the count they found on starting: one that starts
    after another set 1 finds 1, and if it ends last leaves 1 to every later thread of the
    process (seen on CI: a training job then ran on one core, with other float sums).
    Tried: without the barrier, this fails."""
    before = fresh_thread_count()
    for _ in range(5):
        started = threading.Event()

        def work(chunk: int, started: threading.Event = started) -> None:
            if chunk == 0:  # the first worker holds on until the second one is at work
                started.wait(5)
            else:
                started.set()
                time.sleep(0.05)  # and the second one ends last

        ranking._in_workers(work, [0, 1], 2)
        assert fresh_thread_count() == before


def test_a_worker_error_reaches_the_caller() -> None:
    """Catches an error swallowed in a worker thread (its rows would silently stay NaN)."""
    seen: list[int] = []

    def work(chunk: int) -> None:
        if chunk == 3:
            raise ValueError("chunk 3")
        seen.append(chunk)

    with pytest.raises(ValueError, match="chunk 3"):
        ranking._in_workers(work, list(range(8)), 2)
