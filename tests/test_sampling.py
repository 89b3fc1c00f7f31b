import pytest
import torch

from dml_core.sampling import PKSampler


def test_batches_are_p_classes_by_k_distinct_samples() -> None:
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 7 + [3] * 4)
    sampler = PKSampler(labels, P=3, K=3, seed=1)
    seen_classes = set()
    for _ in range(50):
        idx = sampler.sample()
        assert len(idx) == 9
        assert len(set(idx.tolist())) == 9  # no sample twice
        groups = labels[idx].view(3, 3)
        assert (groups == groups[:, :1]).all()  # K of each class, grouped
        assert len(set(groups[:, 0].tolist())) == 3  # P distinct classes
        seen_classes |= set(groups[:, 0].tolist())
    assert seen_classes == {0, 1, 2, 3}


def test_seeded_and_reproducible() -> None:
    labels = torch.arange(10).repeat_interleave(20)
    a = [PKSampler(labels, 4, 5, seed=7).sample() for _ in range(1)]
    b = [PKSampler(labels, 4, 5, seed=7).sample() for _ in range(1)]
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], PKSampler(labels, 4, 5, seed=8).sample())


def test_every_sample_of_a_class_can_be_drawn() -> None:
    labels = torch.tensor([0] * 6 + [1] * 6)
    sampler = PKSampler(labels, 2, 2, seed=0)
    drawn = torch.cat([sampler.sample() for _ in range(200)])
    assert set(drawn.tolist()) == set(range(12))


@pytest.mark.parametrize(("P", "K"), [(5, 2), (2, 7)])
def test_impossible_batches_are_refused(P: int, K: int) -> None:
    labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 6 + [3] * 6)
    with pytest.raises(ValueError, match="Cannot draw"):
        PKSampler(labels, P, K)
