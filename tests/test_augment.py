"""The view augmentations: geometry within the declared strengths, noise, seeding, the strip.

Each test names the wrong implementation it catches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dml_core import augment
from dml_core.augment import Augmentation, draw_views, example_views, view_affines
from dml_core.augment import augment as augment_views
from dml_core.config import make_config
from dml_core.data import load_dataset
from dml_core.sampling import ViewSampler
from dml_core.train import Trainer

NONE = Augmentation(crop_scale=1.0, rotation=0.0, translate=0.0, noise=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blob(size: int = 28, centre: tuple[int, int] = (14, 14)) -> torch.Tensor:
    """(1, 1, size, size) uint8: a bright 4x4 square on black."""
    image = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    r, c = centre
    image[..., r - 2 : r + 2, c - 2 : c + 2] = 255
    return image


def centroid(images: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) -> (n, 2) intensity centroids (row, column) in pixels."""
    h, w = images.shape[-2:]
    mass = images[:, 0].double()  # (n, H, W)
    rows = torch.arange(h, dtype=torch.float64)[None, :, None]
    cols = torch.arange(w, dtype=torch.float64)[None, None, :]
    total = mass.sum((1, 2))
    return torch.stack([(mass * rows).sum((1, 2)) / total, (mass * cols).sum((1, 2)) / total], 1)


def test_no_augmentation_returns_the_images() -> None:
    """Catches a grid/sampler convention mismatch (align_corners True in one call only shifts
    every view by half a pixel) and a crop that narrows one side even at crop_scale = 1."""
    images = load_dataset("digits").train.x[:64]
    views = augment_views(images, NONE, gen())
    assert views.dtype == torch.float32
    torch.testing.assert_close(views, images.float(), atol=1e-3, rtol=0)


def test_the_affines_stay_within_the_declared_strengths() -> None:
    """Recover area, aspect ratio and angle from each matrix. Catches degrees used as radians
    (angles up to 57x the limit), an area drawn outside [crop_scale, 1] and an unbounded
    aspect ratio; the spread check catches a strength that is ignored (always 0)."""
    aug = Augmentation(crop_scale=0.4, rotation=20.0, translate=0.0, noise=0.0)
    theta = view_affines(4000, aug, gen()).double()  # (n, 2, 3)
    linear = theta[:, :, :2]
    area = torch.linalg.det(linear)  # w h (rotation has det 1)
    w, h = linear[:, 0].norm(dim=1), linear[:, 1].norm(dim=1)
    phi = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 1, 1]))
    assert area.min() >= 0.4 - 1e-6
    assert area.max() <= 1 + 1e-6
    assert (w / h).min() >= 3 / 4 - 1e-6
    assert (w / h).max() <= 4 / 3 + 1e-6
    assert phi.abs().max() <= 20 + 1e-6
    assert phi.abs().max() > 19
    assert area.min() < 0.45
    # crop inside the image: centre +- half-extent within [-1, 1] (no translation here)
    assert ((theta[:, 0, 2].abs() + w) <= 1 + 1e-6).all()
    assert ((theta[:, 1, 2].abs() + h) <= 1 + 1e-6).all()


def test_translation_moves_content_by_at_most_the_declared_fraction() -> None:
    """A bright blob's centroid moves by at most translate x side pixels, and along each axis
    some views get close to it. Catches a shift left in [-1, 1] units without the factor 2 of a
    side (half the declared shift) and one doubled (twice)."""
    aug = Augmentation(crop_scale=1.0, rotation=0.0, translate=0.1, noise=0.0)
    images = blob().expand(500, -1, -1, -1)
    moved = centroid(augment_views(images, aug, gen())) - centroid(images[:1].float())
    limit = 0.1 * 28
    assert moved.abs().max() <= limit + 0.05
    assert (moved.abs().amax(dim=0) >= 0.9 * limit).all()  # each axis


def test_noise_has_the_declared_standard_deviation_on_the_pixel_scale() -> None:
    """Catches noise forgotten, or added on the [0, 1] scale (std 0.05 instead of 12.75)."""
    grey = torch.full((200, 1, 28, 28), 128, dtype=torch.uint8)
    aug = Augmentation(crop_scale=1.0, rotation=0.0, translate=0.0, noise=0.05)
    residual = augment_views(grey, aug, gen()) - 128.0
    assert residual.std().item() == pytest.approx(0.05 * 255, rel=0.03)
    assert residual.mean().abs().item() < 0.2


def test_views_keep_the_pixel_scale_the_net_normalises() -> None:
    """The Embedder subtracts the training pixels' mean and divides by their std (0-255
    scale), so views must stay on that scale. Catches views returned in [0, 1]."""
    images = load_dataset("digits").train.x
    views = augment_views(images, Augmentation(), gen())
    assert views.min() >= 0
    assert views.max() <= 255
    assert 0.6 < views.mean() / images.float().mean() < 1.6


def test_one_grid_sample_call_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectorised: catches a loop over views (one resampling per image)."""
    calls = []
    original = F.grid_sample

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(augment.F, "grid_sample", counted)
    augment_views(blob().expand(32, -1, -1, -1), Augmentation(), gen())
    assert len(calls) == 1


def test_the_generator_alone_decides_the_views() -> None:
    """Same state -> same views; another seed -> others. Catches randomness drawn from the
    global generator (a resumed run would see other views)."""
    images = load_dataset("digits").train.x
    g = gen(3)
    saved = g.get_state()
    torch.manual_seed(1)
    a, ia = draw_views(images, 16, Augmentation(), g)
    g.set_state(saved)
    torch.manual_seed(2)
    b, ib = draw_views(images, 16, Augmentation(), g)
    assert torch.equal(a, b)
    assert torch.equal(ia, ib)
    c, _ = draw_views(images, 16, Augmentation(), gen(4))
    assert not torch.equal(a, c)


def test_the_two_views_of_a_row_come_from_the_same_distinct_image() -> None:
    """Rows i and n + i are views of images[idx[i]] and the n images are distinct. Catches
    the two halves drawn separately (positives of different images) and repeated draws."""
    images = load_dataset("digits").train.x
    views, idx = draw_views(images, 40, NONE, gen())
    assert len(set(idx.tolist())) == 40
    torch.testing.assert_close(views[:40], images[idx].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(views[40:], images[idx].float(), atol=1e-3, rtol=0)
    sampler = ViewSampler(len(images), 40, NONE, seed=0, device=torch.device("cpu"))
    _, labels = sampler.batch(images, torch.zeros(len(images), dtype=torch.long))
    assert torch.equal(labels[:40], labels[40:])
    assert len(set(labels.tolist())) == 40


def test_example_views_are_the_first_images_of_the_runs_first_batch() -> None:
    """The strip shows what the run trains on. Catches a strip seeded otherwise than the
    run's sampler, or its two columns not being one image's two views."""
    cfg = make_config(supervision="views", loss="ntxent", device="cpu", probe_size=50)
    data = load_dataset("digits")
    n = cfg.images_per_batch
    strip = example_views(cfg, data, n=n)
    assert strip.shape == (n, 2, 8, 8)
    assert strip.dtype == np.float32
    assert strip.min() >= 0
    assert strip.max() <= 1
    trainer = Trainer(cfg, data)
    views, _ = trainer.sampler.batch(trainer.train_x, trainer.train_y)
    np.testing.assert_array_equal(strip[:, 0], views[:n, 0].numpy() / 255)
    np.testing.assert_array_equal(strip[:, 1], views[n:, 0].numpy() / 255)
    assert example_views(cfg, data, n=3).shape == (3, 2, 8, 8)
    assert not math.isclose(float(np.abs(strip[:, 0] - strip[:, 1]).max()), 0.0)
