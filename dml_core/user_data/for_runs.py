"""What a run needs of a user's data: the path check, loading by config, pictures and captions.

``RunConfig.dataset`` is a built-in name or a path; :func:`data_path_problem` says what is
wrong with a path before anything is read, so a bad one is refused with the other settings.
:func:`load_config_dataset` loads a path with the config's image size, colour, split and
``skip_bad_files``. The 80/20 split (when the data gives none) and the open-set choice of
held-out classes are seeded with :data:`SPLIT_SEED`, not the run's seed: runs with different
seeds see the same data, as they do on the built-in datasets.

For the pages: :func:`gray_pictures` gives thumbnails of any image tensor, and
:func:`sample_captions` names samples (``row 12: beta`` for a table, the file for an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dml_core.data import Dataset
from dml_core.user_data.archive import DEFAULT_MAX_BYTES
from dml_core.user_data.tables import TABLE_SUFFIXES

DATA_SUFFIXES = (*TABLE_SUFFIXES, ".zip")
MAX_BYTES = DEFAULT_MAX_BYTES  # size cap of a run's table, archive and each image file
SPLIT_SEED = 0
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B: Pillow's "L" conversion


class DataSettings(Protocol):
    """The fields of a run config that say how to read its data (``RunConfig`` has them)."""

    dataset: str
    split: str
    image_size: int
    color: str
    skip_bad_files: bool


def data_path_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as the path of a user's data, or None if it may be loaded.

    Only the path is checked (exists; a folder, a table or a ``.zip``): its content is read
    by :func:`load_config_dataset`.
    """
    if not isinstance(value, str) or not value.strip():
        return f"{value!r} is not a path"
    path = Path(value).expanduser()
    if not path.exists():
        return f"{value} does not exist"
    if path.is_dir() or (path.is_file() and path.suffix.lower() in DATA_SUFFIXES):
        return None
    return f"{value} is neither a folder nor a {', '.join(DATA_SUFFIXES)} file"


def absolute_data_path(value: str) -> str:
    """``value`` with ``~`` expanded, made absolute: a saved run finds it from any folder."""
    return str(Path(value).expanduser().absolute())


def is_table_path(value: str) -> bool:
    """Whether ``value`` names a feature table file (a ``.zip`` is known only once opened)."""
    return Path(value).suffix.lower() in TABLE_SUFFIXES


def load_config_dataset(cfg: DataSettings) -> Dataset:
    """Load the user's data a run config names (``cfg.dataset`` is a path).

    Raises:
        DatasetError: a :mod:`dml_core.user_data.errors` fault, named in one sentence.
    """
    from dml_core.user_data import load_user_dataset  # the package imports this module

    return load_user_dataset(
        cfg.dataset,
        image_size=cfg.image_size,
        color=cfg.color,
        split=cfg.split,
        seed=SPLIT_SEED,
        skip_bad_files=cfg.skip_bad_files,
        max_bytes=MAX_BYTES,
    )


def is_table(dataset: Dataset) -> bool:
    """Whether the samples are feature vectors ``(N, d)`` rather than images."""
    return dataset.train.x.dim() == 2


def gray_pictures(x: torch.Tensor) -> np.ndarray:
    """Thumbnails of images ``(n, C, H, W)`` uint8 as ``(n, H, W)`` uint8.

    One channel is taken as it is; RGB is turned to luminance with :data:`LUMA` (as Pillow's
    ``convert("L")``), so an RGB folder is not shown by its red channel alone.

    Raises:
        ValueError: ``x`` holds feature vectors, which have no picture.
    """
    if x.dim() != 4:
        raise ValueError(f"Feature vectors of shape {tuple(x.shape)} have no picture.")
    if x.shape[1] == 1:
        return x[:, 0].numpy().astype(np.uint8)
    weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    luma = (x[:, :3].float() * weights).sum(1)  # (n, H, W)
    return luma.round().clamp(0, 255).to(torch.uint8).numpy()


BLANK_TILE = (8, 8)  # the thumbnail of a table's row, which has no picture


def thumbnails(x: torch.Tensor) -> np.ndarray:
    """Thumbnails ``(n, H, W)`` uint8 of images (:func:`gray_pictures`), or blank tiles.

    A table's rows have no picture, so they get blank :data:`BLANK_TILE` tiles (captions say
    which row they are).
    """
    if x.dim() == 4:
        return gray_pictures(x)
    return np.zeros((len(x), *BLANK_TILE), dtype=np.uint8)


PARTS = ("train", "reference", "query")


def sample_captions(dataset: Dataset, part: str, idx: Sequence[int] | np.ndarray) -> list[str]:
    """A caption per sample ``idx`` of ``dataset``'s ``part``: where it comes from and its class.

    A table's sample is its row (0-based data row of the file: ``row 12: beta``), a user's
    image its file (``circle/003.png: circle``); a built-in image is known by its class only.

    Args:
        dataset: a loaded dataset.
        part: ``train``, ``reference`` or ``query``.
        idx: indices into that part.
    """
    if part not in PARTS:
        raise ValueError(f"The 'part' parameter must be one of {PARTS}. Got {part!r}.")
    split = {"train": dataset.train, "reference": dataset.reference, "query": dataset.query}[part]
    idx = np.asarray(idx, dtype=np.int64)
    names = [dataset.class_names[int(y)] for y in split.y[idx]]
    if not dataset.rows:
        return names
    where = dataset.rows[PARTS.index(part)][idx].tolist()
    if dataset.files:
        return [f"{dataset.files[r]}: {name}" for r, name in zip(where, names, strict=True)]
    return [f"row {r}: {name}" for r, name in zip(where, names, strict=True)]
