"""scikit-learn's 8x8 digits, split 70 / 30 (stratified, seed 0), kept on disk as arrays.

Importing scikit-learn costs about a second of CPU in every new process that trains digits
(the CLI, each job's child, each Ray worker, each fault-test child). The split is made with
scikit-learn once per scikit-learn version and kept in
``~/.cache/dml_playground/digits-sklearn-<version>.npz``; later processes read it back with
numpy alone. The arrays are the very ones scikit-learn gives, so results do not change.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import zipfile
from pathlib import Path

import numpy as np

from dml_core.data import TORCHVISION_ROOT

CACHE_DIR = TORCHVISION_ROOT  # ~/.cache/dml_playground
LAYOUT = {  # each array of the split, in order: (shape, dtype)
    "train_x": ((1257, 8, 8), np.uint8),
    "train_y": ((1257,), np.int64),
    "test_x": ((540, 8, 8), np.uint8),
    "test_y": ((540,), np.int64),
}
KEYS = tuple(LAYOUT)
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, y, test x, y


def digits_split() -> Split:
    """(train images, train labels, test images, test labels): uint8 (N, 8, 8) and int64 (N,).

    Read from the cache when it holds this scikit-learn version's split whole; otherwise made
    with scikit-learn and written there (atomically; a cache that cannot be written is
    skipped).
    """
    file = cache_file()
    cached = _read(file) if file is not None else None
    if cached is not None:
        return cached
    arrays = split_with_sklearn()
    if file is not None:
        from dml_core.runs import atomic_write_bytes  # runs imports much more than numpy

        buffer = io.BytesIO()
        np.savez(buffer, **dict(zip(KEYS, arrays, strict=True)))
        with contextlib.suppress(OSError):
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(file, buffer.getvalue())
    return arrays


def split_with_sklearn() -> Split:
    """``load_digits`` scaled to 0-255, split by ``train_test_split`` (30 % test, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.round(digits.images * 255 / 16).astype(np.uint8)  # (1797, 8, 8)
    y = digits.target.astype(np.int64)
    tx, sx, ty, sy = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return tx, ty, sx, sy


def cache_file() -> Path | None:
    """Where this scikit-learn version's split is kept (None without scikit-learn)."""
    try:
        version = importlib.metadata.version("scikit-learn")  # reads metadata, imports nothing
    except importlib.metadata.PackageNotFoundError:
        return None
    return CACHE_DIR / f"digits-sklearn-{version}.npz"


def _read(file: Path) -> Split | None:
    """The cached split, or None when absent, unreadable or not the expected arrays."""
    try:
        with np.load(file, allow_pickle=False) as f:
            arrays = {k: f[k] for k in KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    for key, array in arrays.items():
        if (array.shape, array.dtype) != LAYOUT[key]:
            return None
    return tuple(arrays[k] for k in KEYS)  # type: ignore[return-value]
