"""Tests for dml_core.user_data: image folders, the cache, splits and the P x K checks.

Tables, archives and the safety cases are in test_user_data_tables.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core.data import Dataset, DatasetError, Split
from dml_core.user_data import (
    BadImage,
    ClassTooSmall,
    TooFewClasses,
    TooManyClassesPerBatch,
    UserDataError,
    UserDataset,
    check_user_data,
    default_batch,
    load_user_dataset,
)
from dml_core.user_data import images as images_module
from dml_core.user_data.images import decode_images
from dml_core.user_data.splits import held_out_classes, stratified_test_mask
from tests.user_data_files import SHAPES, write_shapes, write_solid


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("DML_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def shapes_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4-class folder of noisy 32x32 shapes, 60 each (generated once)."""
    return write_shapes(tmp_path_factory.mktemp("h8_shapes") / "shapes")


@pytest.fixture
def shapes(shapes_source: Path, tmp_path: Path) -> Path:
    """A private copy of the shapes folder, free to modify."""
    return Path(shutil.copytree(shapes_source, tmp_path / "shapes"))


def test_folder_follows_the_dataset_contract(shapes: Path) -> None:
    """Class names are the sorted folder names; standard split: train = reference, query apart."""
    ds = load_user_dataset(shapes)
    assert isinstance(ds, Dataset)
    assert ds.kind == "images"
    assert ds.name == str(shapes)
    assert ds.class_names == SHAPES
    assert ds.train.x.dtype == torch.uint8
    assert ds.train.x.shape[1:] == (1, 28, 28)
    assert ds.image_shape == (1, 28, 28)
    assert ds.reference is ds.train
    assert len(ds.train) + len(ds.query) == 240
    assert ds.query.y.bincount().tolist() == [12, 12, 12, 12]  # round(0.2 * 60) per class
    assert "240 images" in ds.source
    assert "80/20 split (seed 0)" in ds.source


def test_labels_follow_the_folders(tmp_path: Path) -> None:
    """Label i holds the images of the i-th sorted folder (catches unsorted or mixed labels)."""
    for name, level in (("b_gray", 128), ("a_black", 0), ("c_white", 255)):
        for i in range(5):
            write_solid(tmp_path / "d" / name / f"{i}.png", level, (28, 28))
    ds = load_user_dataset(tmp_path / "d")
    assert ds.class_names == ("a_black", "b_gray", "c_white")
    for part in (ds.train, ds.query):
        means = part.x.float().mean(dim=(1, 2, 3))
        assert means.tolist() == [(0.0, 128.0, 255.0)[int(c)] for c in part.y]


def test_rgb_size_and_centre_crop(tmp_path: Path) -> None:
    """RGB keeps channel order; a wide image is centre-cropped, not squashed.

    Catches: channels swapped or last; resizing the whole 60x30 image (its white left
    quarter would show up in the output).
    """
    for i in range(4):
        write_solid(tmp_path / "d" / "red" / f"{i}.png", (255, 0, 0), (40, 40))
        im = np.zeros((30, 60), np.uint8)
        im[:, :15] = 255  # the left quarter, outside the centred 30x30 square
        path = tmp_path / "d" / "wide" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(im).save(path)
    ds = load_user_dataset(tmp_path / "d", image_size=64, color="rgb")
    assert ds.image_shape == (3, 64, 64)
    x = torch.cat([ds.train.x, ds.query.x])
    y = torch.cat([ds.train.y, ds.query.y])
    assert x[y == 0].float().mean(dim=(0, 2, 3)).tolist() == [255.0, 0.0, 0.0]
    assert int(x[y == 1].max()) == 0


def test_train_and_test_folders_give_the_split(tmp_path: Path) -> None:
    """``train/`` and ``test/`` decide the parts; no random split is applied."""
    for part, n in (("train", 6), ("test", 3)):
        for name, level in (("a", 10), ("b", 200)):
            for i in range(n):
                write_solid(tmp_path / "d" / part / name / f"{i}.png", level, (28, 28))
    ds = load_user_dataset(tmp_path / "d")
    assert ds.class_names == ("a", "b")
    assert ds.train.y.bincount().tolist() == [6, 6]
    assert ds.query.y.bincount().tolist() == [3, 3]
    assert "80/20" not in ds.source


def test_stratified_split_is_exact_and_seeded() -> None:
    """Each class gives round(0.2 n) to the test part (at least 1 when n >= 2, never all).

    Catches: a split of all samples regardless of class (per-class counts then vary); an
    unseeded or ignored seed.
    """
    y = np.repeat(np.arange(5), [60, 60, 60, 5, 2])
    masks = [stratified_test_mask(y, seed) for seed in (0, 0, 1)]
    counts = np.bincount(y[masks[0]], minlength=5)
    assert counts.tolist() == [12, 12, 12, 1, 1]
    assert np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])
    small = stratified_test_mask(np.array([0, 1, 1]), 0)
    assert not small[0]
    assert small[1:].sum() == 1


def test_open_set_holds_out_a_seeded_40_percent(tmp_path: Path) -> None:
    """Open-set: 40% of 5 classes (2) never trained on; reference/query are theirs.

    Catches: held-out classes leaking into train, query from the train part, no seeding.
    """
    for c in range(5):
        for i in range(10):
            write_solid(tmp_path / "d" / f"c{c}" / f"{i}.png", 40 * c, (28, 28))
    ds = load_user_dataset(tmp_path / "d", split="open-set", seed=3)
    held = set(held_out_classes(5, 3).tolist())
    assert len(held) == 2
    assert held == set(ds.reference.y.tolist()) == set(ds.query.y.tolist())
    assert set(ds.train.y.tolist()) == set(range(5)) - held
    assert len(ds.reference) == 16
    assert len(ds.query) == 4
    again = load_user_dataset(tmp_path / "d", split="open-set", seed=3)
    assert torch.equal(again.query.y, ds.query.y)
    with pytest.raises(DatasetError, match=r"'split' parameter .* Got 'closed'"):
        load_user_dataset(tmp_path / "d", split="closed")


def test_cache_hit_and_atomic_write(shapes: Path, cache_dir: Path) -> None:
    """A second open reads the cache (same arrays); no temporary file is left behind."""
    first = load_user_dataset(shapes)
    assert "decoded and cached" in first.source
    files = list((cache_dir / "user_images").iterdir())
    assert len(files) == 1
    assert files[0].suffix == ".npz"
    second = load_user_dataset(shapes)
    assert "from the cache" in second.source
    assert torch.equal(first.train.x, second.train.x)
    assert torch.equal(first.query.y, second.query.y)


def test_a_changed_file_invalidates_the_cache(tmp_path: Path) -> None:
    """Same path, same size, mtime put back: the new pixels are read, not the cached ones.

    Catches: a key of paths only, or of paths, sizes and mtimes (the file is rewritten with
    the same size and its mtime restored, as ``cp -p`` or ``rsync -t`` would do).
    """
    for name in ("a", "b"):
        for i in range(5):
            write_solid(tmp_path / "d" / name / f"{i}.bmp", 0, (28, 28))
    target = tmp_path / "d" / "a" / "0.bmp"
    before = target.stat()
    load_user_dataset(tmp_path / "d")
    write_solid(target, 255, (28, 28))  # BMP: the same size whatever the pixels
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    ds = load_user_dataset(tmp_path / "d")
    assert "from the cache" not in ds.source
    x = torch.cat([ds.train.x, ds.query.x])
    assert int((x.flatten(1).amax(1) == 255).sum()) == 1


def test_corrupt_image_is_named_or_skipped(shapes: Path) -> None:
    """A damaged file stops the load naming it; with skip_bad_files it is skipped and counted."""
    (shapes / "square" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (shapes / "circle" / "000.png").read_bytes()
    (shapes / "circle" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(BadImage) as err:
        load_user_dataset(shapes)
    message = str(err.value)
    assert str(shapes / "circle" / "cut.png") in message
    assert "skip the 2 unreadable files with skip_bad_files=True (--skip-bad-files)" in message
    ds = load_user_dataset(shapes, skip_bad_files=True)
    assert [rel for rel, _ in ds.skipped] == ["circle/cut.png", "square/bad.png"]
    assert "2 unreadable files skipped" in ds.source
    assert len(ds.train) + len(ds.query) == 240
    cached = load_user_dataset(shapes, skip_bad_files=True)  # the cache keeps the bad list
    assert "from the cache" in cached.source
    assert "2 unreadable files skipped" in cached.source
    with pytest.raises(BadImage, match=r"cut\.png"):
        load_user_dataset(shapes)


def test_image_over_the_size_cap_is_a_bad_file(tmp_path: Path) -> None:
    """An image larger than max_bytes is not read: named, or skipped."""
    for name in ("a", "b"):
        for i in range(5):
            write_solid(tmp_path / "d" / name / f"{i}.png", 9, (28, 28))
    write_solid(tmp_path / "d" / "b" / "big.bmp", 9, (200, 200))
    with pytest.raises(BadImage, match=r"big\.bmp cannot be read \(0\.0\d+ MB, over the size cap"):
        load_user_dataset(tmp_path / "d", max_bytes=10_000)
    assert (
        len(load_user_dataset(tmp_path / "d", max_bytes=10_000, skip_bad_files=True).skipped) == 1
    )


def test_parallel_decode_matches_serial(shapes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool returns the same arrays and failures, in file order (catches chunk reordering)."""
    (shapes / "cross" / "zz.png").write_bytes(b"garbage")
    paths = sorted(str(p) for p in shapes.rglob("*.png"))
    monkeypatch.setattr(images_module, "CHUNK", 16)
    x1, r1 = decode_images(paths, 28, "gray", workers=1)
    x2, r2 = decode_images(paths, 28, "gray", workers=2)
    assert np.array_equal(x1, x2)
    assert r1 == r2
    assert [bool(r) for r in r2].count(True) == 1
    assert r2[paths.index(str(shapes / "cross/zz.png"))]


@pytest.mark.parametrize(
    ("layout", "error", "message"),
    [
        ({"x.png": 0}, TooFewClasses, r"has no class folders; put each class's images in"),
        (
            {"a/1.png": 0, "a/2.png": 0},
            TooFewClasses,
            r"has 1 class\(es\) \('a'\) but the standard",
        ),
        (
            {"a/1.png": 0, "b/notes.txt": None},
            ClassTooSmall,
            r"Class folder 'b' .* holds no images",
        ),
        ({"a/1.png": 0, "b/1.png": 0, "c.png": 0}, UserDataError, r"c\.png lies outside any class"),
        ({"train/a/1.png": 0, "test/a/1.png": 0, "extra/1.png": 0}, UserDataError, r"also extra/"),
    ],
)
def test_folder_layout_errors(tmp_path: Path, layout: dict, error: type, message: str) -> None:
    """Each layout fault raises its own error, naming the folder or file."""
    for rel, level in layout.items():
        path = tmp_path / "d" / rel
        if level is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not an image")
        else:
            write_solid(path, level, (28, 28))
    with pytest.raises(error, match=message):
        load_user_dataset(tmp_path / "d")


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    """Paths that are not data say what would work."""
    with pytest.raises(UserDataError, match=r"does not exist; give an image folder or a table"):
        load_user_dataset(tmp_path / "nothing")
    (tmp_path / "data.txt").write_text("1,2")
    with pytest.raises(UserDataError, match=r"data\.txt is neither a folder nor a \.npz"):
        load_user_dataset(tmp_path / "data.txt")


def _dataset(counts: list[int]) -> Dataset:
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    part = Split(x=torch.zeros((len(y), 3), dtype=torch.float32), y=y)
    names = tuple(f"k{i}" for i in range(len(counts)))
    return UserDataset("t.npz", "standard", "test", names, part, part, part, "table")


def test_default_batch_adapts() -> None:
    """(min(6, classes), min(16, smallest class)); a class absent from train is not counted."""
    assert default_batch(_dataset([48, 48, 48, 48])) == (4, 16)
    assert default_batch(_dataset([30, 9, 30, 30, 30, 30, 30, 30])) == (6, 9)
    assert default_batch(_dataset([5, 0, 7])) == (2, 5)


def test_check_user_data_messages() -> None:
    """Too few classes, P over the classes, a class under K: each named, with what works."""
    check_user_data(_dataset([20, 9, 20]), 3, 9)
    with pytest.raises(TooFewClasses, match=r"t\.npz has 1 training class\(es\) but .* at least 2"):
        check_user_data(_dataset([20, 0]), 2, 4)
    with pytest.raises(TooManyClassesPerBatch, match=r"at most 3, the number .* Got 4\.$"):
        check_user_data(_dataset([20, 9, 20]), 4, 4)
    with pytest.raises(
        ClassTooSmall,
        match=r"^Class 'k1' of t\.npz has 9 training samples, fewer than K = 16 per batch; "
        r"use K = 9 or less\.$",
    ):
        check_user_data(_dataset([20, 9, 20]), 3, 16)
    with pytest.raises(ClassTooSmall, match=r"has 1 training sample, .* add samples to it"):
        check_user_data(_dataset([20, 1, 20]), 3, 2)


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    """Catches: 16-bit values clipped at 255 (every mid-grey 16-bit image would read white)."""
    from PIL import Image

    from dml_core.user_data.images import decode_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((28, 28), 32896, np.uint16)).save(path)  # 128 x 257
    assert int(decode_image(str(path), 28, "gray").max()) == 128


def test_transparency_is_laid_on_white(tmp_path: Path) -> None:
    """Catches: a transparent background laid on black (a logo on transparency would turn
    into a black square)."""
    from PIL import Image

    from dml_core.user_data.images import decode_image

    path = tmp_path / "clear.png"
    Image.new("RGBA", (28, 28), (0, 0, 0, 0)).save(path)
    assert int(decode_image(str(path), 28, "gray").min()) == 255


def test_a_tall_image_keeps_its_centred_square(tmp_path: Path) -> None:
    """60 x 30 with a white top quarter, outside the centred 30 x 30 square. Catches: the crop
    taken from the top (only a wide image was tested)."""
    from PIL import Image

    from dml_core.user_data.images import decode_image

    pixels = np.zeros((60, 30), np.uint8)
    pixels[:15] = 255
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    assert int(decode_image(str(tmp_path / "tall.png"), 30, "gray").max()) == 0


def test_the_test_share_of_a_class_is_rounded() -> None:
    """Two classes of 8 with a 20% test share: 1.6 rounds to 2 test samples each. Catches: the
    share truncated (1 each)."""
    labels = np.repeat([0, 1], 8)
    held = stratified_test_mask(labels, 0)
    assert np.bincount(labels[held]).tolist() == [2, 2]
