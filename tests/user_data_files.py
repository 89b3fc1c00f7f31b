"""Generated user data for the tests: a folder of noisy shapes and Gaussian feature tables."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "cross", "square", "triangle")  # sorted: the class names
TABLE_CLASSES = ("alpha", "beta", "delta", "epsilon", "gamma", "zeta")  # sorted


def shape_image(shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A white shape of random size and position on black, plus Gaussian pixel noise."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
    else:
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    noisy = np.asarray(im, np.float32) + rng.normal(0, 30, (size, size))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_shapes(root: Path, per_class: int = 60, seed: int = 0, size: int = 32) -> Path:
    """``root/<shape>/<i>.png`` for the 4 :data:`SHAPES`, ``per_class`` noisy images each."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(shape, rng, size).save(root / shape / f"{i:03d}.png")
    return root


def write_solid(path: Path, value: int | tuple[int, int, int], size: tuple[int, int]) -> Path:
    """One image of a single gray level (mode L) or colour (mode RGB)."""
    mode = "L" if isinstance(value, int) else "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def gaussian_table(
    per_class: int = 60, dim: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """6 well separated Gaussian classes: ``x`` (6 n, dim) float32, ``y`` (6 n,) string labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (len(TABLE_CLASSES), dim))
    x = np.concatenate([c + rng.normal(0, 1, (per_class, dim)) for c in centres])
    y = np.repeat(np.array(TABLE_CLASSES), per_class)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


def write_npz(path: Path, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> Path:
    """``np.savez(path, x=x, y=y, **extra)``."""
    np.savez(path, x=x, y=y, **extra)
    return path


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, split: np.ndarray | None = None) -> Path:
    """A CSV with columns ``f0 .. f{d-1}``, ``label`` (and ``split``)."""
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])])
    frame["label"] = y
    if split is not None:
        frame["split"] = split
    frame.to_csv(path, index=False)
    return path


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    """Zip ``folder``'s files, under the top folder ``top`` if given."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{rel}" if top else rel)
    return archive
