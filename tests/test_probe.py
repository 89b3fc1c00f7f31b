"""What a snapshot measures beyond retrieval: geometry, class weights, both kinds of collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dml_core import metrics
from dml_core.config import make_config
from dml_core.probe import (
    GEOMETRY_POINTS,
    ProbeMeter,
    collapse_advice,
    collapse_kind,
    geometry,
    geometry_subset,
    rank_floor,
)
from dml_core.train import Trainer

FAST = {"steps": 20, "snapshot_every": 10, "probe_size": 300, "embedding_dim": 16}


class LineNet(nn.Module):
    """A 'net' that puts every image on one line through the origin, points kept apart.

    Image i goes to s_i u with s_i a fixed random projection of its pixels, standardised: a
    rank-one embedding (effective rank 1) whose points stay spread along the line.
    """

    def __init__(self, dim: int, scale: float = 3.0) -> None:
        super().__init__()
        self.direction = nn.functional.normalize(torch.ones(dim), dim=0)  # (D,)
        self.scale = scale

    def forward(self, x: torch.Tensor, low_precision: torch.dtype | None = None) -> torch.Tensor:
        pixels = x.float().flatten(1)  # (n, H W)
        w = torch.randn(pixels.shape[1], generator=torch.Generator().manual_seed(0))
        s = pixels @ w  # (n,)
        s = (s - s.mean()) / s.std() * self.scale
        return s[:, None] * self.direction  # (n, D)


def measure(trainer: Trainer, net: nn.Module, step: int):
    return trainer.probe.measure(
        net, trainer.loss, trainer.device, None, {}, step=step, samples_seen=0, elapsed=0.0
    )


def test_stored_geometry_equals_the_metric_functions_on_the_stored_embeddings() -> None:
    """Catches: alignment and uniformity swapped, computed on other points (e.g. before the
    net's normalisation, or on a different probe), or the rank of a different matrix."""
    trainer = Trainer(make_config(**FAST))
    for snap in trainer.run():
        emb, labels = torch.from_numpy(snap.probe_emb), torch.from_numpy(snap.probe_labels)
        expected = metrics.alignment_uniformity(emb, labels)
        assert snap.geometry["alignment"] == pytest.approx(expected["alignment"], rel=1e-9)
        assert snap.geometry["uniformity"] == pytest.approx(expected["uniformity"], rel=1e-9)
        rank = metrics.effective_rank(emb)
        assert snap.geometry["effective_rank"] == pytest.approx(rank, rel=1e-9)
        row = snap.scalars()  # the metrics table keeps them
        assert {k: row[k] for k in snap.geometry} == snap.geometry


def test_geometry_of_a_large_probe_uses_a_class_balanced_sample_close_to_all_points() -> None:
    """Catches: a subsample that drops classes or distorts the means (a stride of 5 over
    labels in the order 0, 1, ..., 9, 0, ... keeps only classes 0 and 5: uniformity -2.67
    instead of -3.28; or the first points of a class-sorted probe)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2500) % 10  # (2500,)
    centres = nn.functional.normalize(torch.randn(10, 16, generator=g), dim=1)
    emb = nn.functional.normalize(centres[labels] + 0.3 * torch.randn(2500, 16, generator=g), dim=1)
    rows = geometry_subset(labels.numpy(), seed=0)
    assert len(rows) == GEOMETRY_POINTS
    assert np.bincount(labels.numpy()[rows]).tolist() == [GEOMETRY_POINTS // 10] * 10
    assert geometry_subset(labels[:GEOMETRY_POINTS].numpy(), seed=0) is None  # small: all
    shape = geometry(emb, labels, rows)
    assert shape["alignment"] == pytest.approx(
        metrics.alignment_uniformity(emb[rows], labels[rows])["alignment"], rel=1e-9
    )
    full = metrics.alignment_uniformity(emb, labels)
    assert shape["alignment"] == pytest.approx(full["alignment"], rel=0.03)
    assert shape["uniformity"] == pytest.approx(full["uniformity"], rel=0.03)
    assert shape["effective_rank"] == pytest.approx(metrics.effective_rank(emb), rel=1e-9)


def test_geometry_of_non_finite_embeddings_is_nan_not_an_error() -> None:
    emb = torch.full((20, 4), float("nan"))
    assert math.isnan(geometry(emb, torch.arange(20) % 2)["effective_rank"])


@pytest.mark.parametrize(("loss", "per_class"), [("arcface", 1), ("sub_center_arcface", 3)])
def test_class_weights_are_stored_normalised_with_their_classes(loss: str, per_class: int) -> None:
    """Catches: weights stored as raw parameters (not as the loss compares them), or rows
    labelled r % C instead of r // K (sub-centres: K rows per class, class-major)."""
    trainer = Trainer(make_config(**FAST, loss=loss, miner="all"))
    snap = trainer.snapshot({})
    raw = trainer.loss.class_weights().cpu().numpy()  # (C K, D)
    assert snap.class_weights.shape == raw.shape == (10 * per_class, 16)
    np.testing.assert_allclose(np.linalg.norm(snap.class_weights, axis=1), 1.0, atol=1e-6)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(snap.class_weights, unit, atol=1e-6)
    np.testing.assert_array_equal(snap.class_weight_labels, np.repeat(np.arange(10), per_class))


def test_losses_without_class_weights_store_none() -> None:
    snap = Trainer(make_config(**FAST)).snapshot({})
    assert snap.class_weights is None
    assert snap.class_weight_labels is None


def test_rank_floor_is_half_way_from_the_reference_down_to_one() -> None:
    """Catches: the reference taken as the largest of r0, D, C (a healthy supervised run,
    rank about C, would then read as collapsed) or the share misapplied."""
    assert rank_floor(19.2, 32, 10) == pytest.approx(1 + 0.5 * 9)  # C is the smallest
    assert rank_floor(2.8, 3, 10) == pytest.approx(1 + 0.5 * 1.8)  # r0 is the smallest
    assert rank_floor(None, 3, 10) == pytest.approx(2.0)  # r0 unknown: D
    assert rank_floor(float("nan"), 64, 10) == pytest.approx(5.5)
    assert rank_floor(1.0, 32, 10) == pytest.approx(1.0)


def test_a_rank_one_embedding_with_points_apart_is_dimensional_collapse() -> None:
    """Catches: a dimensional-collapse rule that never fires (or only with point collapse),
    and advice that calls it point collapse."""
    cfg = make_config(**FAST, normalize=False)
    trainer = Trainer(cfg)
    first = trainer.snapshot({})  # the untrained net sets r0
    assert first.collapse["dimensional_collapse"] == 0.0
    line = measure(trainer, LineNet(16), step=10)
    assert line.geometry["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert line.collapse["collapsed_fraction"] < 0.2  # the points stay apart
    assert line.collapse["mean_distance"] > first.collapse["mean_distance"]
    assert line.collapse["collapsing"] == 0.0  # point collapse, as in every earlier run
    assert line.collapse["dimensional_collapse"] == 1.0
    assert collapse_kind(line.collapse) == "dimensional"  # the page warns
    advice = collapse_advice(cfg, line.scalars())
    assert advice.startswith("Dimensional collapse")
    assert "effective rank 1.0" in advice


def test_healthy_training_never_signals_dimensional_collapse() -> None:
    """Catches: a rule that always fires (e.g. a floor relative to D alone at D > C)."""
    snaps = list(Trainer(make_config(**{**FAST, "steps": 60, "snapshot_every": 20})).run())
    assert [s.collapse["dimensional_collapse"] for s in snaps] == [0.0] * 4
    assert all(collapse_kind(s.collapse) is None for s in snaps)


def test_point_collapse_is_named_as_such() -> None:
    """Catches: advice that says dimensional collapse when the points merged (both fire)."""
    cfg = make_config(**FAST)
    trainer = Trainer(cfg)
    trainer.snapshot({})
    snap = measure(trainer, LineNet(16, scale=1e-6), step=10)  # every point at the origin
    assert snap.collapse["collapsing"] == 1.0
    assert snap.collapse["dimensional_collapse"] == 1.0  # merged points are low-rank too
    assert collapse_kind(snap.collapse) == "point"
    advice = collapse_advice(cfg, snap.scalars())
    assert advice.startswith("Point collapse")
    assert collapse_advice(cfg).startswith("Point collapse")  # runs saved before the split


def test_old_checkpoints_without_the_untrained_rank_use_d_and_c() -> None:
    trainer = Trainer(make_config(**FAST))
    trainer.probe.restore({"initial_mean_distance": 1.0})  # a checkpoint from before r0
    snap = measure(trainer, trainer.net, step=10)
    assert snap.collapse["rank_floor"] == pytest.approx(rank_floor(None, 16, 10))
    state = ProbeMeter(make_config(**FAST), trainer.data.query).state()
    assert "initial_rank" in state
