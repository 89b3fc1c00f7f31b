"""Compiled kernel of the fast ranking path: each query's first R + 1 neighbours and its scores.

``ranking.fast_scores`` hands it squared distances (one query per row, the query's own class
in the first ``n_same`` columns) and takes back P@1, R-Precision and AP@R (Musgrave, Belongie
and Lim 2020, "A Metric Learning Reality Check", sec. 3.2) with what ties of distance could
change in them. Per row, on one core, without the GIL (numba, ``nogil``):

1. **threshold** (``thresholds``): a value at or above the ``kth`` smallest of the distances
   to every ``stride``-th reference (the top edge of its bucket in a 2048-bucket histogram of
   the sample's bits), so that about R + 1 references and a margin pass;
2. **keys** (``collect_block``, one block of columns after another): every reference at or
   below it as a 32-bit key ``(bits(max(d^2, 0)) << 1) | other_class``: float bits of
   non-negative floats sort as the floats do. The row is read 64 columns at a time into a bit
   mask (one vector compare), then only the set bits are visited. The caller widens rows where
   fewer than R + 1 pass to every reference;
3. **sort** (``finish``): least-significant-digit radix sort of the keys' top 22 bits above
   the smallest key (two passes of 11 bits), then an insertion pass that orders the few keys
   equal in them (bounded: with many such keys the sort is redone on all the bits);
4. **scores** (``row_scores``): ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)`` with
   ``P(i) = (1/i) sum_{j<=i} rel(j)``, and the ties among the first R + 1 as ``ranking``
   describes them: ``hard`` where a tie can change P@1 or R-Precision or joins three or more
   references, ``soft`` how far isolated hit/miss pairs at ranks i, i + 1 can move AP@R:
   ``j / (R i (i + 1))`` each, the pair's hit being the j-th (the exact change; the bound
   ``1 / (R (i + 1))`` recomputed twice as many queries of class-clustered Gaussian
   embeddings, D = 32, with ``topk``).

numpy's ``np.sort`` is the alternative for step 3, but on this project's CPUs (AMD Zen 4, where
the AVX-512 compress-store that numpy's sort dispatches to is slow) it took about 90 us for a
row of 7,400 keys, against about 25 us here. The first call in a process loads the compiled
code from numba's disk cache (``NUMBA_CACHE_DIR``, set by ``dml_core.projection``), or compiles
it once (a few seconds).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from dml_core import projection  # noqa: F401  sets NUMBA_CACHE_DIR before numba compiles

__all__ = ["NO_KEY", "collect_block", "finish", "row_scores", "thresholds"]

NO_KEY = np.uint32(0xFFFFFFFF)  # padding key: flag 1 (a miss) and a NaN distance, never tied
_SIGN = np.uint32(1 << 31)  # negative d^2 (rounding) and -0.0 count as 0, as torch.cdist clamps
_DIGIT = 11  # radix digit: 2048 buckets of int32 (8 KB) stay in L1
_SORTED_BITS = 2 * _DIGIT  # key bits above the smallest key sorted by the radix passes
_HIST_SIZE = 1 << _DIGIT


@njit(nogil=True, cache=True)
def _upper_bound(sample: np.ndarray, kth: int, hist: np.ndarray) -> np.float32:
    """A value at or above the ``kth`` smallest (0-based) of ``sample``.

    The top edge of the bucket that holds it in a histogram of the sample's float bits
    (``len(hist)`` buckets of a power of two each): within ``2 / len(hist)`` of their range.
    """
    bits = sample.view(np.uint32)
    lo = NO_KEY
    hi = np.uint32(0)
    for i in range(bits.size):
        u = bits[i] if bits[i] < _SIGN else np.uint32(0)
        lo = min(lo, u)
        hi = max(hi, u)
    shift = 0
    while ((hi - lo) >> shift) >= hist.size:
        shift += 1
    hist[:] = 0
    for i in range(bits.size):
        u = bits[i] if bits[i] < _SIGN else np.uint32(0)
        hist[(u - lo) >> shift] += 1
    below = 0
    b = 0
    while below + hist[b] <= kth:
        below += hist[b]
        b += 1
    edge = np.uint64(lo) + (np.uint64(b + 1) << np.uint64(shift)) - np.uint64(1)
    return np.uint32(min(edge, np.uint64(hi))).view(np.float32)


@njit(nogil=True, cache=True)
def _collect(
    x: np.ndarray, flag: np.uint32, t: np.float32, keys: np.ndarray, m: int, kmin: np.uint32
) -> tuple[int, np.uint32]:
    """Appends at ``keys[m]`` the key of every column of ``x`` at or below ``t``.

    Returns the new count and the smallest key so far. The compare runs 64 columns at a time
    into a bit mask (``x`` must start at index 0 so that it vectorises); only set bits are
    visited.
    """
    xu = x.view(np.uint32)
    n = x.size
    blocks = n // 64
    for b in range(blocks + 1):
        j = b * 64
        mask = np.uint64(0)
        if b < blocks:
            for i in range(64):
                mask |= np.uint64(x[j + i] <= t) << np.uint64(i)
        else:
            for i in range(n - j):
                mask |= np.uint64(x[j + i] <= t) << np.uint64(i)
        while mask:
            u = xu[j + trailing_zeros(mask)]
            key = ((u if u < _SIGN else np.uint32(0)) << np.uint32(1)) | flag
            keys[m] = key
            m += 1
            kmin = min(kmin, key)
            mask &= mask - np.uint64(1)
    return m, kmin


@njit(nogil=True, cache=True)
def _radix_pass(
    src: np.ndarray, dst: np.ndarray, m: int, kmin: np.uint32, shift: int, count: np.ndarray
) -> None:
    """One stable counting-sort pass of ``src[:m]`` into ``dst``.

    The digit is the 11 bits at ``shift`` of ``key - kmin``; ``count`` holds its histogram on
    entry.
    """
    mask = _HIST_SIZE - 1
    total = 0
    for d in range(_HIST_SIZE):
        c = count[d]
        count[d] = total
        total += c
    for i in range(m):
        d = ((src[i] - kmin) >> shift) & mask
        dst[count[d]] = src[i]
        count[d] += 1


@njit(nogil=True, cache=True)
def _sort(
    a: np.ndarray, b: np.ndarray, m: int, kmin: np.uint32, kmax: np.uint32, hist: np.ndarray
) -> np.ndarray:
    """``a[:m]`` (keys in [kmin, kmax]) ascending, in ``a``; ``b`` is scratch space.

    Two radix passes order the keys by their top 22 bits above ``kmin``; insertion then orders
    keys equal there (neighbours within 2^(bits - 22)). Should that take more than 4 moves per
    key (many keys of nearly equal distance), all bits are radix-sorted instead.
    """
    mask = _HIST_SIZE - 1
    span = kmax - kmin
    bits = 0
    while bits < 32 and (span >> bits) > 0:
        bits += 1
    drop = max(bits - _SORTED_BITS, 0)
    low, high = hist[0], hist[1]
    low[:] = 0
    high[:] = 0
    for i in range(m):
        d = (a[i] - kmin) >> drop
        low[d & mask] += 1
        high[(d >> _DIGIT) & mask] += 1
    _radix_pass(a, b, m, kmin, drop, low)
    _radix_pass(b, a, m, kmin, drop + _DIGIT, high)
    if drop == 0:
        return a
    moves = 0
    for i in range(1, m):
        key = a[i]
        j = i
        while j > 0 and a[j - 1] > key:
            a[j] = a[j - 1]
            j -= 1
        a[j] = key
        moves += i - j
        if moves > 4 * m:
            break
    if moves <= 4 * m:
        return a
    for shift in range(0, bits, _DIGIT):
        low[:] = 0
        for i in range(m):
            low[((a[i] - kmin) >> shift) & mask] += 1
        _radix_pass(a, b, m, kmin, shift, low)
        a, b = b, a
    return a


@njit(nogil=True, cache=True)
def _tied(top: np.ndarray, i: int) -> bool:
    """Whether sorted keys i and i + 1 lie at equal distances (``sqrt(d^2)``, as cdist's)."""
    if i < 0:
        return False
    a = np.uint32(top[i] >> np.uint32(1)).view(np.float32)
    b = np.uint32(top[i + 1] >> np.uint32(1)).view(np.float32)
    return np.sqrt(a) == np.sqrt(b)


@njit(nogil=True, cache=True)
def row_scores(top: np.ndarray, r: int) -> tuple[float, float, float, bool, float]:
    """P@1, R-Precision, AP@R, ``hard`` and ``soft`` of one row from its sorted keys.

    ``top``: at least R + 1 ascending keys (``NO_KEY`` past the row's references).
    A tie is a pair of neighbours at equal distance within the first R + 1; ``hard`` where
    one can change P@1 or R-Precision (a hit/miss tie at ranks 1-2, any tie of the R-th with
    the (R + 1)-th) or touches another tie; ``soft`` sums, over the other hit/miss ties at
    ranks i, i + 1, how far the other order would move AP@R: the pair's hit, the j-th, has the
    term ``j / i`` in one order and ``j / (i + 1)`` in the other, ``j / (R i (i + 1))`` apart.
    """
    found = 0
    ap = 0.0
    hard = False
    soft = 0.0
    for i in range(r):
        hit = np.int64(1) - np.int64(top[i] & np.uint32(1))
        found += hit
        ap += hit * found / (i + 1)
        # Square roots of float32 values 4 or more ulps apart differ: check only closer ones.
        if (top[i + 1] >> np.uint32(1)) - (top[i] >> np.uint32(1)) <= 8 and _tied(top, i):
            if i == r - 1:
                hard = True
            if (top[i] ^ top[i + 1]) & np.uint32(1):
                if i == 0 or (i < r - 1 and (_tied(top, i - 1) or _tied(top, i + 1))):
                    hard = True
                elif i < r - 1:  # the pair's hit, j-th of them, moves between ranks
                    j = found + 1 - hit
                    soft += j / (r * (i + 1.0) * (i + 2.0))
    return 1.0 - float(top[0] & np.uint32(1)), found / r, ap / r, hard, soft


@njit(nogil=True, cache=True)
def thresholds(sample_d2: np.ndarray, kth: int, t: np.ndarray) -> None:
    """Each row's threshold ``t`` (c,): at or above the ``kth`` smallest of its sample.

    ``sample_d2`` (c, n_sample) holds the squared distances to every ``stride``-th column.
    """
    hist = np.empty(_HIST_SIZE, np.int32)
    for row in range(sample_d2.shape[0]):
        t[row] = _upper_bound(sample_d2[row], kth, hist)


@njit(nogil=True, cache=True)
def collect_block(
    block: np.ndarray,
    col0: int,
    n_same: int,
    t: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    kmins: np.ndarray,
) -> None:
    """Appends to each row of ``keys`` the keys of its columns at or below its threshold.

    ``block`` (c, w) holds the squared distances to columns ``col0`` to ``col0 + w``; columns
    below ``n_same`` are the rows' class. ``counts`` and ``kmins`` (c,) carry each row's key
    count and smallest key from block to block.
    """
    c, w = block.shape
    split = min(max(n_same - col0, 0), w)
    for row in range(c):
        m, kmin = counts[row], kmins[row]
        if split > 0:
            m, kmin = _collect(block[row, :split], np.uint32(0), t[row], keys[row], m, kmin)
        if split < w:
            m, kmin = _collect(block[row, split:], np.uint32(1), t[row], keys[row], m, kmin)
        counts[row], kmins[row] = m, kmin


@njit(nogil=True, cache=True)
def finish(
    keys: np.ndarray,
    counts: np.ndarray,
    kmins: np.ndarray,
    t: np.ndarray,
    r: int,
    out: np.ndarray,
    hard: np.ndarray,
    soft: np.ndarray,
) -> None:
    """Scores of rows whose keys (at least R + 1, or all of the row's) ``collect_block`` made.

    Written to ``out`` (3, c) float64 (P@1, R-Precision, AP@R), ``hard`` (c,) bool and
    ``soft`` (c,) float64. ``keys`` (c, >= R + 1) is sorted in place.
    """
    spare = np.empty(keys.shape[1], np.uint32)
    hist = np.empty((2, _HIST_SIZE), np.int32)
    for row in range(out.shape[1]):
        m = counts[row]
        kmax = (np.float32(t[row]).view(np.uint32) << np.uint32(1)) | np.uint32(1)
        top = _sort(keys[row], spare, m, kmins[row], kmax, hist) if m else keys[row]
        top[m : r + 1] = NO_KEY
        p1, rp, ap, tie_hard, tie_soft = row_scores(top, r)
        out[0, row] = p1
        out[1, row] = rp
        out[2, row] = ap
        hard[row] = tie_hard
        soft[row] = tie_soft
