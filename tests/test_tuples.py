import itertools

import pytest
import torch

from dml_core.tuples import (
    EASY,
    HARD,
    SEMI_HARD,
    Pairs,
    Triplets,
    all_pairs,
    all_triplets,
    to_pairs,
    to_triplets,
    triplet_kinds,
)


def brute_force_triplets(labels: list[int]) -> set[tuple[int, int, int]]:
    idx = range(len(labels))
    return {
        (a, p, n)
        for a, p, n in itertools.product(idx, idx, idx)
        if a != p and labels[a] == labels[p] and labels[a] != labels[n]
    }


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 1, 2, 2], [3, 1, 3, 1, 1, 5], [0, 0]])
def test_all_triplets_equal_brute_force(labels: list[int]) -> None:
    t = all_triplets(torch.tensor(labels))
    assert set(zip(*(x.tolist() for x in t), strict=True)) == brute_force_triplets(labels)
    assert all(x.dtype == torch.int64 for x in t)


def test_all_pairs_counts_for_pk_batch() -> None:
    labels = torch.arange(3).repeat_interleave(4)  # P=3, K=4
    a1, p, a2, n = all_pairs(labels)
    assert len(a1) == 12 * 3
    assert len(a2) == 12 * 8
    assert (labels[a1] == labels[p]).all()
    assert (a1 != p).all()
    assert (labels[a2] != labels[n]).all()


def test_to_pairs_dedups_and_to_triplets_inverts_all_pairs() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    triplets = all_triplets(labels)
    pairs = to_pairs(triplets)
    expected = all_pairs(labels)
    # anchor 4 has no positive, so it anchors no triplet and none of its pairs survive
    keep = expected.anchor_neg != 4
    got_neg = set(zip(pairs.anchor_neg.tolist(), pairs.neg.tolist(), strict=True))
    want_neg = set(
        zip(expected.anchor_neg[keep].tolist(), expected.neg[keep].tolist(), strict=True)
    )
    assert got_neg == want_neg
    assert len(got_neg) == len(pairs.neg)  # no duplicates
    rebuilt = to_triplets(pairs)
    assert set(zip(*(x.tolist() for x in rebuilt), strict=True)) == brute_force_triplets(
        labels.tolist()
    )


def test_conversions_of_empty_tuples() -> None:
    empty = torch.empty(0, dtype=torch.int64)
    assert len(to_pairs(Triplets(empty, empty, empty)).pos) == 0
    assert len(to_triplets(Pairs(empty, empty, empty, empty)).anchor) == 0
    one_class = torch.zeros(5, dtype=torch.int64)
    assert len(all_triplets(one_class).anchor) == 0


def test_triplet_kinds() -> None:
    d_ap = torch.tensor([0.5, 0.5, 0.5, 0.5])
    d_an = torch.tensor([0.4, 0.6, 0.8, 0.5])
    assert triplet_kinds(d_ap, d_an, margin=0.2).tolist() == [HARD, SEMI_HARD, EASY, HARD]
