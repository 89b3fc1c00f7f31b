"""Shared fixtures: fixed seeds, tiny batches, a temporary run store."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def pk_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A random P x K batch: 4 classes x 4 samples of 8-d unit vectors (float64)."""
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    emb = emb / emb.norm(dim=1, keepdim=True)
    labels = torch.arange(4).repeat_interleave(4)
    return emb, labels
