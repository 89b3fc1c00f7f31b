"""A user's own data as a :class:`dml_core.data.Dataset`: image folders, feature tables, zips.

``load_user_dataset(path)`` reads

- an image folder ``root/<class>/*.png|jpg|jpeg|bmp|webp`` (or ``root/train/<class>/...`` and
  ``root/test/<class>/...``) into uint8 images ``(N, C, S, S)``, cached (``images``);
- a feature table ``.npz`` / ``.csv`` / ``.parquet`` into float32 features ``(N, d)``
  (``tables``);
- a ``.zip`` of either, checked before extraction (``archive``);

and cuts it into train / reference / query like the built-in datasets (``splits``). Every
fault raises a :class:`dml_core.data.DatasetError` subclass (``errors``) whose message is one
sentence naming the file, column, class or row and what would work.

``default_batch`` gives the P x K that the data can fill; ``check_user_data`` checks an explicit
one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dml_core.data import Dataset
from dml_core.user_data.archive import DEFAULT_MAX_BYTES, check_file_size, extract_zip
from dml_core.user_data.errors import (
    BadImage,
    BadTable,
    ClassTooSmall,
    FileTooLarge,
    TooFewClasses,
    TooManyClassesPerBatch,
    UnsafeFile,
    UserDataError,
)
from dml_core.user_data.for_runs import (
    DATA_SUFFIXES,
    SPLIT_SEED,
    data_path_problem,
    gray_pictures,
    is_table,
    load_config_dataset,
    sample_captions,
)
from dml_core.user_data.images import COLORS, IMAGE_SIZES, IMAGE_SUFFIXES, load_image_folder
from dml_core.user_data.splits import check_split_name, cut, stratified_test_mask
from dml_core.user_data.tables import TABLE_SUFFIXES, load_table

DEFAULT_P, DEFAULT_K = 6, 16

__all__ = [
    "COLORS",
    "DATA_SUFFIXES",
    "DEFAULT_MAX_BYTES",
    "IMAGE_SIZES",
    "IMAGE_SUFFIXES",
    "SPLIT_SEED",
    "TABLE_SUFFIXES",
    "BadImage",
    "BadTable",
    "ClassTooSmall",
    "FileTooLarge",
    "TooFewClasses",
    "TooManyClassesPerBatch",
    "UnsafeFile",
    "UserDataError",
    "UserDataset",
    "check_user_data",
    "data_path_problem",
    "default_batch",
    "gray_pictures",
    "is_table",
    "load_config_dataset",
    "load_user_dataset",
    "sample_captions",
]


@dataclass(frozen=True)
class UserDataset(Dataset):
    """A :class:`Dataset` read from a user's path, with what the loader noticed.

    ``name`` is the path as given. For a feature table, ``train.x`` etc. are float32
    ``(N, d)`` features, not images: use :attr:`feature_dim`, :attr:`image_shape` refuses.

    Attributes:
        kind: ``"images"`` or ``"table"``.
        skipped: ``(relative path, reason)`` of each unreadable image skipped
            (``skip_bad_files=True``); the count is also in ``source``.
    """

    kind: str = "images"
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image; a feature table has none (:class:`UserDataError`)."""
        if self.kind == "table":
            raise UserDataError(
                f"{self.name} is a feature table of {self.feature_dim} columns, not images; "
                f"use an MLP on its feature vectors."
            )
        return super().image_shape

    @property
    def feature_dim(self) -> int:
        """Length of one sample flattened: ``d`` for a table, ``C * H * W`` for images."""
        return int(np.prod(self.train.x.shape[1:]))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def load_user_dataset(
    path: str | Path,
    *,
    image_size: int = 28,
    color: str = "gray",
    split: str = "standard",
    seed: int = 0,
    skip_bad_files: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> UserDataset:
    """Load an image folder, a feature table or a ``.zip`` of either.

    Args:
        path: a folder, a ``.npz``/``.csv``/``.parquet`` file or a ``.zip``.
        image_size: side of the square images (28, 32 or 64); ignored for tables.
        color: ``gray`` or ``rgb``; ignored for tables.
        split: ``standard`` or ``open-set`` (a seeded 40% of the classes held out).
        seed: seeds the 80/20 split (when the data gives none) and the held-out classes.
        skip_bad_files: skip unreadable images (counted in ``source`` and ``skipped``)
            instead of refusing the folder.
        max_bytes: size cap of a table, an archive (and its content) and each image file.

    Raises:
        DatasetError: one of the subclasses in :mod:`dml_core.user_data.errors`, or a missing
            path or unknown format; the message names what is wrong and what would work.
    """
    check_split_name(split)
    given = str(path)
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        path = extract_zip(path, max_bytes=max_bytes)
    if path.is_dir():
        arrays = load_image_folder(path, image_size=image_size, color=color, max_bytes=max_bytes)
        if arrays.bad and not skip_bad_files:
            rel, reason = arrays.bad[0]
            raise BadImage(
                f"Image {path / rel} cannot be read ({reason}); fix or remove it, or skip the "
                f"{_plural(len(arrays.bad), 'unreadable file')} with skip_bad_files=True "
                f"(--skip-bad-files)."
            )
        x, y, is_test, names, kind = (*arrays[:4], "images")
        skipped, files = arrays.bad, arrays.files
        shape = f"{image_size}x{image_size} {color}"
        detail = f"{_plural(len(y), 'image')}, {shape}, {arrays.cache_note}"
        if skipped:
            detail += f"; {_plural(len(skipped), 'unreadable file')} skipped"
        source = f"image folder {path} ({detail})"
    elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        check_file_size(path, max_bytes)
        x, y, is_test, names = load_table(path)
        kind, skipped, files = "table", (), ()
        source = f"feature table {path} ({_plural(len(y), 'row')} x {x.shape[1]} features)"
    elif path.exists():
        raise UserDataError(
            f"{path} is neither a folder nor a {', '.join(TABLE_SUFFIXES)} or .zip file; give an "
            f"image folder (<class>/<images>) or a feature table."
        )
    else:
        raise UserDataError(f"{path} does not exist; give an image folder or a table file path.")
    if is_test is None:
        is_test = stratified_test_mask(y, seed)
        source += f"; seeded 80/20 split (seed {seed})"
    train, reference, query = cut(x, y, is_test, names, split, seed, str(path))
    rows = tuple(part.x for part in cut(np.arange(len(y)), y, is_test, names, split, seed, ""))
    return UserDataset(
        given, split, source, names, train, reference, query, rows, files, kind, skipped
    )


def _train_counts(dataset: Dataset) -> torch.Tensor:
    counts = torch.bincount(dataset.train.y, minlength=len(dataset.class_names))
    return counts


def default_batch(dataset: Dataset) -> tuple[int, int]:
    """``(P, K)`` the training part can fill: ``(min(6, classes), min(16, smallest class))``."""
    counts = _train_counts(dataset)
    counts = counts[counts > 0]
    return min(DEFAULT_P, len(counts)), min(DEFAULT_K, int(counts.min()))


def check_user_data(dataset: Dataset, classes_per_batch: int, samples_per_class: int) -> None:
    """Check that P x K batches can be drawn from ``dataset.train`` without repeats.

    Args:
        dataset: a loaded dataset.
        classes_per_batch: P, the classes in a batch.
        samples_per_class: K, the samples of each class in a batch.

    Raises:
        TooFewClasses: fewer than 2 training classes.
        TooManyClassesPerBatch: P larger than the number of training classes.
        ClassTooSmall: a training class with fewer than K samples (the smallest is named, with
            a K that works).
    """
    counts = _train_counts(dataset)
    present = torch.nonzero(counts).flatten()
    if len(present) < 2:
        raise TooFewClasses(
            f"{dataset.name} has {len(present)} training class(es) but metric learning needs at "
            f"least 2; add a folder or label per class."
        )
    if classes_per_batch > len(present):
        raise TooManyClassesPerBatch(
            f"The 'classes_per_batch' (P) parameter must be at most {len(present)}, the number "
            f"of training classes of {dataset.name}. Got {classes_per_batch}."
        )
    smallest = int(present[counts[present].argmin()])
    n = int(counts[smallest])
    if n < samples_per_class:
        works = (
            f"use K = {n} or less" if n >= 2 else "add samples to it or remove it (K must be >= 2)"
        )
        raise ClassTooSmall(
            f"Class {dataset.class_names[smallest]!r} of {dataset.name} has "
            f"{_plural(n, 'training sample')}, fewer than K = {samples_per_class} per batch; "
            f"{works}."
        )
