"""Cutting a user's samples into train / reference / query, as ``data.load_dataset`` does.

Where the test part comes from, in order: a ``split`` column (values ``train`` / ``test``),
``train/`` and ``test/`` top folders, else a seeded stratified 80/20 split (every class
keeps ``round(0.2 n)`` of its ``n`` samples for the test part, at least 1 when ``n >= 2``).

Then, like the built-in datasets:

- ``standard``: train = reference = the train part, query = the test part;
- ``open-set``: a seeded 40% of the classes (at least one) is held out of training;
  train = the train part of the other classes, reference = the train part of the held-out
  classes, query = their test part.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dml_core.data import SPLITS, DatasetError, Split
from dml_core.user_data.errors import BadTable, TooFewClasses, UserDataError

TEST_FRACTION = 0.2
OPEN_SET_FRACTION = 0.4
SPLIT_VALUES = {"train": False, "test": True}


def check_split_name(split: str) -> None:
    """Raise :class:`DatasetError` unless ``split`` is one of :data:`dml_core.data.SPLITS`."""
    if split not in SPLITS:
        options = ", ".join(repr(s) for s in SPLITS)
        raise DatasetError(
            f"The 'split' parameter of load_user_dataset must be one of {options}. Got {split!r}."
        )


def stratified_test_mask(y: np.ndarray, seed: int, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Which samples go to the test part: ``round(fraction * n)`` of each class, seeded.

    A class of ``n >= 2`` samples gives at least 1 to the test part and keeps at least 1;
    a single-sample class stays in the train part.

    Args:
        y: labels ``(N,)``.
        seed: seeds the choice within each class.
        fraction: share of each class held out.

    Returns:
        ``(N,)`` bool, True for test samples.
    """
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n = len(members)
        n_test = 0 if n < 2 else min(max(1, round(fraction * n)), n - 1)
        is_test[rng.permutation(members)[:n_test]] = True
    return is_test


def parse_split_values(values: Sequence[object], where: str) -> np.ndarray:
    """Read a ``split`` column of ``train`` / ``test`` values (any case) into a test mask.

    Args:
        values: one value per row.
        where: what to name in a message, e.g. ``"column 'split' of data.csv"``.

    Raises:
        BadTable: a value other than train/test (the row and the value are named).
    """
    is_test = np.zeros(len(values), dtype=bool)
    for row, value in enumerate(values):
        key = str(value).strip().lower()
        if key not in SPLIT_VALUES:
            raise BadTable(
                f"Row {row} of {where} holds {value!r}; every row must say 'train' or 'test' "
                f"(or drop the column to get a seeded 80/20 split)."
            )
        is_test[row] = SPLIT_VALUES[key]
    return is_test


def held_out_classes(
    num_classes: int, seed: int, fraction: float = OPEN_SET_FRACTION
) -> np.ndarray:
    """The classes the open-set split holds out of training: a seeded ``round(fraction * C)``.

    Returns:
        sorted int64 class indices, at least one.
    """
    n_held = max(1, round(fraction * num_classes))
    order = np.random.default_rng(seed).permutation(num_classes)
    return np.sort(order[:n_held]).astype(np.int64)


def _part(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> Split:
    return Split(x=torch.from_numpy(np.ascontiguousarray(x[keep])), y=torch.from_numpy(y[keep]))


def cut(
    x: np.ndarray,
    y: np.ndarray,
    is_test: np.ndarray,
    class_names: Sequence[str],
    split: str,
    seed: int,
    where: str,
) -> tuple[Split, Split, Split]:
    """Train, reference and query parts of a user's dataset.

    Args:
        x: samples, ``(N, C, H, W)`` uint8 images or ``(N, d)`` float32 features.
        y: labels ``(N,)`` int64, indices into ``class_names``.
        is_test: ``(N,)`` bool, the test part.
        class_names: all class names, indexed by label.
        split: ``standard`` or ``open-set``.
        seed: seeds the open-set choice of held-out classes.
        where: the file or folder, for messages.

    Raises:
        TooFewClasses: fewer than 2 training classes (3 classes for open-set).
        UserDataError: an empty train or test part.
    """
    check_split_name(split)
    y = y.astype(np.int64)
    present = np.unique(y)
    if len(present) < 2 or (split == "open-set" and len(present) < 3):
        need = 3 if split == "open-set" else 2
        found = ", ".join(repr(class_names[c]) for c in present) or "none"
        raise TooFewClasses(
            f"{where} has {len(present)} class(es) ({found}) but the {split} split needs at "
            f"least {need}: add a folder or label per class."
        )
    if not is_test.any() or is_test.all():
        empty = "test" if not is_test.any() else "train"
        raise UserDataError(
            f"{where} leaves the {empty} part empty; give both train and test samples "
            f"(each class needs at least 2 samples for the 80/20 split)."
        )
    if split == "standard":
        train = _part(x, y, ~is_test)
        if len(torch.unique(train.y)) < 2:
            raise TooFewClasses(
                f"The train part of {where} holds only class {class_names[int(train.y[0])]!r}; "
                f"give at least 2 classes training samples."
            )
        return train, train, _part(x, y, is_test)
    held = np.isin(y, present[held_out_classes(len(present), seed)])
    train = _part(x, y, ~is_test & ~held)
    reference, query = _part(x, y, ~is_test & held), _part(x, y, is_test & held)
    if len(torch.unique(train.y)) < 2 or not len(reference) or not len(query):
        raise UserDataError(
            f"The open-set split of {where} (seed {seed}) leaves fewer than 2 training classes "
            f"or no train/test samples in the held-out classes; use the standard split or give "
            f"every class both train and test samples."
        )
    return train, reference, query
