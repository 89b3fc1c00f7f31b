"""The compiled ranking kernel's parts (dml_core.ranking_kernel), each against a plain reference.

End to end, the kernel is checked query by query against ``torch.topk`` in test_ranking.py and
against pytorch-metric-learning in test_metrics.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dml_core import ranking_kernel as kernel


def _sorted(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.uint32)
    a, b = keys.copy(), np.empty_like(keys)
    hist = np.empty((2, 2048), dtype=np.int32)
    return kernel._sort(a, b, keys.size, keys.min(), keys.max(), hist)[: keys.size].copy()


@pytest.mark.parametrize("span", [1 << 20, 1 << 31])
def test_radix_sort_orders_keys_as_np_sort(span: int) -> None:
    """A span over 22 bits leaves keys equal in the top 22 bits to the insertion pass.

    Catches skipping the insertion pass (tried: 20,000 keys over 2^31 hold ~50 such pairs) and
    a pass on the wrong digit (tried: the second pass on the first one's digit).
    """
    rng = np.random.default_rng(0)
    keys = rng.integers(1 << 20, (1 << 20) + span, 20_000, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(_sorted(keys), np.sort(keys))


def test_radix_sort_of_many_nearly_equal_keys_sorts_all_bits() -> None:
    """Thousands of keys within 2^9 of each other, spread over a 2^30 span.

    The insertion pass would take millions of moves; the bounded one hands over to a radix sort
    of all bits. Catches a wrong shift in that sort (tried: starting at 11 bits instead of 0
    leaves the low bits unsorted).
    """
    rng = np.random.default_rng(1)
    near = rng.integers(5_000_000, 5_000_512, 5_000, dtype=np.int64)
    keys = np.concatenate([near, [0, 1 << 30]]).astype(np.uint32)
    rng.shuffle(keys)
    np.testing.assert_array_equal(_sorted(keys), np.sort(keys))


@pytest.mark.parametrize("seed", range(4))
def test_upper_bound_is_at_or_above_the_kth_smallest(seed: int) -> None:
    """The threshold is at or above the kth smallest sample and within one bucket of it.

    Catches a bucket walk off by one (tried: ``<`` for ``<=`` returns the bucket below, under
    the kth value).
    """
    rng = np.random.default_rng(seed)
    sample = (rng.random(2069) ** 3 * 4.0).astype(np.float32)
    sample[:3] = [-1e-7, -0.0, 0.0]  # rounding below 0 counts as 0
    hist = np.empty(2048, dtype=np.int32)
    ordered = np.sort(np.maximum(sample, 0))
    # buckets of a power of two of float bits, at most 2 / 2048 of the range each
    width = (ordered[-1].view(np.uint32) - ordered[0].view(np.uint32)) / 1024 + 1
    for kth in (0, 1, 257, 2068):
        t = kernel._upper_bound(sample, kth, hist)
        assert t >= ordered[kth]
        assert int(np.float32(t).view(np.uint32)) - int(ordered[kth].view(np.uint32)) <= width


def _run(d2: list[list[float]], n_same: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d2_rows = np.array(d2, dtype=np.float32)
    c, n_ref = d2_rows.shape
    t = np.full(c, np.inf, dtype=np.float32)  # every reference
    keys = np.empty((c, n_ref + 1), dtype=np.uint32)
    counts, kmins = np.zeros(c, dtype=np.int64), np.full(c, kernel.NO_KEY)
    kernel.collect_block(d2_rows, 0, n_same, t, keys, counts, kmins)
    out, hard, soft = np.empty((3, c)), np.empty(c, dtype=bool), np.empty(c)
    kernel.finish(keys, counts, kmins, t, r, out, hard, soft)
    return out, hard, soft


def test_negative_squared_distances_count_as_zero() -> None:
    """d^2 rounds below 0 for near-duplicates; torch.cdist clamps it to 0 (and -0.0 to 0.0).

    Catches keys from the raw bits (tried: a negative float's sign bit makes it the largest key,
    so the same-class neighbour at -1e-7 sinks to the end and P@1 becomes 0).
    """
    out, hard, _ = _run([[-1e-7, 0.5, 0.2, 0.9], [-0.0, 0.5, 0.2, 0.9]], n_same=2, r=2)
    np.testing.assert_array_equal(out[0], [1.0, 1.0])  # the nearest is the same-class one
    np.testing.assert_array_equal(out[2], [0.5, 0.5])  # a hit at rank 1, a miss at rank 2
    assert not hard.any()
    _, hard_tied, _ = _run([[-1e-7, 0.5, 0.0, 0.9]], n_same=2, r=2)
    assert hard_tied[0]  # 0 and clamped -1e-7 tie at rank 1 across classes: P@1 is topk's


def test_distinct_squares_with_equal_roots_are_ties() -> None:
    """d^2 = 1.0 and the next float32 up have the same square root: cdist sees a tie.

    Catches comparing the squared distances' bits instead (tried: the pair at ranks 2-3 is then
    not a tie and ``soft`` stays 0).
    """
    up = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    # same class: 0.25, 1.0, 9.0; other class: 1.0 + 1 ulp, 16.0 (R = 3)
    _, hard, soft = _run([[0.25, 1.0, 9.0, up, 16.0]], n_same=3, r=3)
    assert not hard[0]
    assert soft[0] == pytest.approx(1 / (3 * 3))  # the tie at ranks 2, 3: 1 / (R (i + 1))
