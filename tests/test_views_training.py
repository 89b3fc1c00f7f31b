"""Label-free training (``supervision="views"``) with every pair and triplet loss and miner.

Views act as classes of two, so every loss that does not learn per-class weights, and every
miner, must train on them; the loss and miner must see image ids, never the true classes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dml_core.config import make_config
from dml_core.data import load_dataset
from dml_core.registry import LOSSES, MINERS
from dml_core.train import Trainer

PAIR_AND_TRIPLET_LOSSES = [name for name, entry in LOSSES.items() if entry.kind != "classes"]
STEPS = 3


def views_trainer(**values: Any) -> Trainer:
    """A label-free digits run: MLP, D = 8, P x K = 4 x 8 (16 images x 2 views), CPU."""
    cfg = make_config(
        supervision="views",
        embedding_dim=8,
        classes_per_batch=4,
        samples_per_class=8,
        lr=0.01,
        probe_size=50,
        final_eval=False,
        device="cpu",
        **values,
    )
    return Trainer(cfg, load_dataset("digits"))


def train_recording_labels(trainer: Trainer) -> list[torch.Tensor]:
    """Train STEPS steps on the plain path; return the labels the miner saw at each step."""
    seen: list[torch.Tensor] = []
    miner = trainer.miner

    def recording(emb: torch.Tensor, labels: torch.Tensor) -> Any:
        seen.append(labels.clone())
        return miner(emb, labels)

    trainer.miner = recording
    trainer.fused = None  # the fused triplet path mines inside; record through the miner
    for _ in range(STEPS):
        stats = trainer.train_step()
        assert torch.isfinite(torch.as_tensor(stats["loss"])).all()
    return seen


def assert_view_labels(seen: list[torch.Tensor], n: int = 16) -> None:
    """Each batch: 2n labels, n distinct image ids, rows i and n + i the same image.

    True labels (digits have 10 classes) would give at most 10 distinct values.
    """
    assert len(seen) == STEPS
    for labels in seen:
        assert labels.shape == (2 * n,)
        assert torch.equal(labels[:n], labels[n:])
        assert len(set(labels.tolist())) == n


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.net.parameters()]


@pytest.mark.parametrize("loss", PAIR_AND_TRIPLET_LOSSES)
def test_every_pair_and_triplet_loss_trains_on_views(loss: str) -> None:
    """Catches a loss that cannot take classes of two (an error or a NaN), a trainer that
    feeds the true labels in views mode, and a loss whose step moves no weight."""
    trainer = views_trainer(loss=loss, miner="all")
    before = weights(trainer)
    assert_view_labels(train_recording_labels(trainer))
    moved = [not torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True)]
    assert any(moved), f"{loss}: no weight changed in {STEPS} steps"


@pytest.mark.parametrize("miner", list(MINERS))
def test_every_miner_mines_views(miner: str) -> None:
    """Each miner with a loss of its kind: catches a miner that finds nothing (or fails) when
    every class has exactly two members."""
    loss = "contrastive" if MINERS[miner].kind == "pairs" else "triplet"
    trainer = views_trainer(loss=loss, miner=miner)
    before = weights(trainer)
    assert_view_labels(train_recording_labels(trainer))
    moved = [not torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True)]
    assert any(moved), f"{miner}: no weight changed in {STEPS} steps"


def test_the_probe_and_final_metrics_use_the_true_labels() -> None:
    """Evaluation stays as with labels: catches the probe set relabelled by image id."""
    trainer = views_trainer(loss="ntxent", miner="all")
    snapshot = next(trainer.run(steps=0))
    assert set(snapshot.probe_labels.tolist()) <= set(range(10))
    assert len(set(snapshot.probe_labels.tolist())) == 10
