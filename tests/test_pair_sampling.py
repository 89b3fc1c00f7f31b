"""Uniform pair samples of one kind: listed when few, drawn by rejection when many."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pytest
import torch

from dml_core.pair_sampling import DENSE, pair_counts, sample_pairs

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])  # 12 points, 3 classes of 4
KINDS = {  # positive -> every i < j pair of that kind
    kind: {(i, j) for i, j in combinations(range(12), 2) if (LABELS[i] == LABELS[j]) == kind}
    for kind in (True, False)
}


def pairs(i: torch.Tensor, j: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(i.tolist(), j.tolist(), strict=True))


def test_pair_counts_split_the_i_lt_j_pairs_by_label() -> None:
    assert pair_counts(LABELS) == (len(KINDS[True]), len(KINDS[False])) == (18, 48)


@pytest.mark.parametrize("positive", [True, False])
def test_a_kind_with_no_more_pairs_than_asked_comes_whole(positive: bool) -> None:
    got = pairs(*sample_pairs(LABELS, positive, 1000, torch.Generator().manual_seed(0)))
    assert sorted(got) == sorted(KINDS[positive])
    assert sample_pairs(LABELS, positive, 0)[0].numel() == 0


# (kind, k, drawn): drawn when the kind has more than DENSE * k pairs (18 and 48), else listed
SAMPLES = [(True, 2, True), (False, 5, True), (True, 5, False), (False, 40, False)]


@pytest.mark.parametrize(("positive", "k", "drawn"), SAMPLES)
def test_each_sample_is_k_distinct_pairs_of_its_kind(positive: bool, k: int, drawn: bool) -> None:
    """Drawn and listed samples alike.

    Catches: drawing with replacement (repeated pairs), a pair (i, i), a pair of the other
    kind, a pair with i > j.
    """
    assert (len(KINDS[positive]) > DENSE * k) == drawn
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        got = pairs(*sample_pairs(LABELS, positive, k, gen))
        assert len(got) == len(set(got)) == k
        assert set(got) <= KINDS[positive]


@pytest.mark.parametrize(("positive", "k", "drawn"), SAMPLES)
def test_every_pair_of_the_kind_is_equally_likely(positive: bool, k: int, drawn: bool) -> None:
    """Counts over 4,000 samples against k / m per pair: a chi-square statistic (df m - 1).

    Catches: a draw that is not uniform over unordered pairs (i uniform, then j uniform above
    i: pairs of a large i come up several times too often at n = 12), and a listed kind cut
    to its first k pairs without a shuffle.
    """
    m = len(KINDS[positive])
    assert (m > DENSE * k) == drawn
    gen = torch.Generator().manual_seed(2)
    repeats = 4000
    counts = Counter(
        p for _ in range(repeats) for p in pairs(*sample_pairs(LABELS, positive, k, gen))
    )
    assert set(counts) == KINDS[positive]
    expected = repeats * k / m
    chi2 = sum((counts[p] - expected) ** 2 / expected for p in KINDS[positive])
    # df = m - 1 (17 or 47); a uniform sampler's statistic is below df + 6 sd about always
    assert chi2 < (m - 1) + 6 * (2 * (m - 1)) ** 0.5, chi2


def test_a_large_probe_set_is_sampled_without_listing_its_pairs() -> None:
    """2,000 points over 10 classes: both kinds are drawn, and what is drawn is exact."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    positive, negative = pair_counts(labels)
    assert positive > DENSE * 5000
    assert negative > DENSE * 5000
    for kind in (True, False):
        i, j = sample_pairs(labels, kind, 5000, gen)
        assert len(set(pairs(i, j))) == 5000
        assert bool((i < j).all())
        assert bool(((labels[i] == labels[j]) == kind).all())
