"""Tests for dml_core.user_data: feature tables, zip archives and uploads, the safety refusals."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dml_core.user_data import (
    BadTable,
    FileTooLarge,
    UnsafeFile,
    UserDataError,
    load_user_dataset,
)
from dml_core.user_data.archive import extract_zip, store_upload
from tests.user_data_files import (
    SHAPES,
    TABLE_CLASSES,
    gaussian_table,
    write_csv,
    write_npz,
    write_shapes,
    zip_folder,
)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("DML_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def table() -> tuple[np.ndarray, np.ndarray]:
    """The 6-class Gaussian table: x (360, 8) float32, string labels."""
    return gaussian_table()


def _rows(ds) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([ds.train.x, ds.query.x]), torch.cat([ds.train.y, ds.query.y])


def test_npz_table_follows_the_contract(tmp_path: Path, table) -> None:
    """String labels -> sorted names; features kept row by row with their labels, float32.

    Catches: labels encoded in order of appearance, rows shuffled apart from their labels.
    """
    x, y = table
    ds = load_user_dataset(write_npz(tmp_path / "t.npz", x, y))
    assert ds.kind == "table"
    assert ds.class_names == TABLE_CLASSES
    assert ds.train.x.dtype == torch.float32
    assert ds.feature_dim == 8
    assert ds.query.y.bincount().tolist() == [12] * 6
    got_x, got_y = _rows(ds)
    by_row = {tuple(r): ds.class_names[int(c)] for r, c in zip(got_x.tolist(), got_y, strict=True)}
    assert by_row == {tuple(r): str(c) for r, c in zip(x.tolist(), y, strict=True)}
    with pytest.raises(UserDataError, match=r"is a feature table of 8 columns, not images"):
        _ = ds.image_shape


def test_csv_gives_the_same_dataset_as_npz(tmp_path: Path, table) -> None:
    """The same table as .csv, .parquet and .npz loads to the same parts (same seeded split)."""
    x, y = table
    a = load_user_dataset(write_npz(tmp_path / "t.npz", x, y))
    pq = tmp_path / "t.parquet"
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(8)]).assign(label=y)
    frame.to_parquet(pq)
    for other in (load_user_dataset(write_csv(tmp_path / "t.csv", x, y)), load_user_dataset(pq)):
        assert other.class_names == a.class_names
        for part in ("train", "query"):
            assert torch.allclose(getattr(other, part).x, getattr(a, part).x, atol=1e-6)
            assert torch.equal(getattr(other, part).y, getattr(a, part).y)


def test_numeric_labels_sort_by_value(tmp_path: Path) -> None:
    """Labels 10, 2, 1 name classes '1', '2', '10' (catches a string sort: '1', '10', '2')."""
    y = np.repeat([10, 2, 1], 5)
    ds = load_user_dataset(write_npz(tmp_path / "t.npz", np.ones((15, 2)) * y[:, None], y))
    assert ds.class_names == ("1", "2", "10")
    got_x, got_y = _rows(ds)
    assert [ds.class_names[int(c)] for c in got_y] == [str(int(v)) for v in got_x[:, 0].tolist()]


def test_split_column_decides_the_parts(tmp_path: Path, table) -> None:
    """A split column is obeyed exactly (no random split on top)."""
    x, y = table
    split = np.where(np.arange(len(y)) % 3 == 0, "Test", "train")
    ds = load_user_dataset(write_csv(tmp_path / "t.csv", x, y, split))
    assert len(ds.query) == int((split == "Test").sum())
    assert torch.allclose(ds.query.x[0], torch.from_numpy(x[0]))
    assert "80/20" not in ds.source
    npz = load_user_dataset(write_npz(tmp_path / "t.npz", x, y, split=split))
    assert torch.equal(npz.query.x, ds.query.x)


def _frame_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda f: f.drop(columns="label"),
            r"^\S+t\.csv has no 'label' column \(its columns are 'f0', 'f1', 'f2'\); name the "
            r"column holding the classes 'label'\.$",
        ),
        (
            lambda f: f.assign(color=["red"] * len(f)),
            r"^Column 'color' of \S+ is not numeric \(row 0 \(line 2 of the file\) holds 'red'\); "
            r"feature columns must hold numbers only, so drop or encode it\.$",
        ),
        (
            lambda f: f.assign(f1=[*f.f1[:7], "7 kg", *f.f1[8:]]),
            r"^Column 'f1' of \S+ is not numeric \(row 7 \(line 9 of the file\) holds '7 kg'\)",
        ),
        (
            lambda f: f.assign(f2=[*f.f2[:5], np.nan, *f.f2[6:]]),
            r"^Column 'f2' of \S+ is NaN or infinite \(or beyond float32\) at row 5 \(line 7 of "
            r"the file\); fill or drop the missing values before loading\.$",
        ),
        (
            lambda f: f.assign(f0=[*f.f0[:3], np.inf, *f.f0[4:]]),
            r"^Column 'f0' of \S+ is NaN or infinite .* at row 3 \(line 5 of the file\)",
        ),
        (
            lambda f: f.assign(label=[*f.label[:4], None, *f.label[5:]]),
            r"^Row 4 \(line 6 of the file\) of \S+ has no label; give every row a 'label'\.$",
        ),
        (
            lambda f: f.assign(split=["train"] * 9 + ["valid"] + ["test"] * (len(f) - 10)),
            r"^Row 9 of column 'split' of \S+ holds 'valid'; every row must say 'train' or 'test'",
        ),
        (lambda f: f[["label"]], r"has no feature columns besides 'label'"),
        (
            lambda f: f.assign(label="one"),
            r"has 1 class\(es\) \('one'\) but the standard split needs at least 2",
        ),
    ],
)
def test_csv_faults_are_named(tmp_path: Path, edit, message: str) -> None:
    """Each fault: one sentence naming the column and row (line counted with the header)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20, 3)), columns=["f0", "f1", "f2"])
    frame["label"] = np.repeat(["a", "b"], 10)
    with pytest.raises(UserDataError, match=message):
        load_user_dataset(_frame_csv(tmp_path / "t.csv", edit(frame)))


def test_npz_faults_are_named(tmp_path: Path) -> None:
    """Inf in x (column and row named), missing y, strings as features, shape mismatch."""
    x = np.ones((10, 3), np.float32)
    x[4, 1] = np.inf
    y = np.repeat([0, 1], 5)
    with pytest.raises(BadTable, match=r"^Column 1 of 'x' of \S+ is NaN or infinite .* at row 4;"):
        load_user_dataset(write_npz(tmp_path / "a.npz", x, y))
    np.savez(tmp_path / "b.npz", x=np.ones((10, 3)))
    with pytest.raises(BadTable, match=r"has no array 'y' \(it holds x\); save it as np\.savez"):
        load_user_dataset(tmp_path / "b.npz")
    with pytest.raises(BadTable, match=r"'x' of \S+ must be numbers of shape \(n, d\); got <U1"):
        load_user_dataset(write_npz(tmp_path / "c.npz", np.full((10, 3), "a"), y))
    with pytest.raises(BadTable, match=r"has 10 rows in 'x' but 9 labels in 'y'"):
        load_user_dataset(write_npz(tmp_path / "d.npz", np.ones((10, 3)), y[:9]))
    wide = np.ones((10, 3))
    wide[4, 1] = 1e39  # finite in float64, infinite in float32
    with pytest.raises(BadTable, match=r"Column 1 of 'x' .* at row 4"):
        load_user_dataset(write_npz(tmp_path / "e.npz", wide, y))


class _Payload:
    """Unpickling this creates the marker file: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("key", ["x", "y"])
def test_object_array_npz_is_refused_without_unpickling(tmp_path: Path, key: str) -> None:
    """An object array whose unpickling would create a file: refused, and the file never appears.

    Catches: ``numpy.load(..., allow_pickle=True)`` (the marker file would be created).
    """
    marker = tmp_path / "h8_pickle_ran"
    arrays = {"x": np.ones((4, 2)), "y": np.array([0, 0, 1, 1])}
    arrays[key] = np.array([_Payload(marker)] * 4, dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    assert not marker.exists()
    with pytest.raises(
        UnsafeFile,
        match=rf"^Array '{key}' of \S+evil\.npz holds Python objects, which are refused because "
        r"loading them would run pickle; save plain arrays instead",
    ):
        load_user_dataset(tmp_path / "evil.npz")
    assert not marker.exists()


def test_table_over_the_size_cap(tmp_path: Path, table) -> None:
    """A table larger than max_bytes is refused before it is parsed."""
    path = write_csv(tmp_path / "t.csv", *table)
    with pytest.raises(
        FileTooLarge, match=r"t\.csv is 0\.\d+ MB, over the size cap of 0\.00954 MB"
    ):
        load_user_dataset(path, max_bytes=10_000)


@pytest.fixture(scope="module")
def shapes_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes folder (4 classes of 10) for the archive tests."""
    return write_shapes(tmp_path_factory.mktemp("h8_zip_shapes") / "shapes", per_class=10)


@pytest.mark.parametrize("top", ["my_shapes", None])
def test_zip_of_a_folder_loads_like_the_folder(
    tmp_path: Path, shapes_source: Path, top: str | None, cache_dir: Path
) -> None:
    """With or without a top folder in the archive; extracted once, under the cache."""
    archive = zip_folder(shapes_source, tmp_path / "up.zip", top)
    ds = load_user_dataset(archive)
    assert ds.class_names == SHAPES
    assert ds.name == str(archive)
    assert len(ds.train) + len(ds.query) == 40
    root = extract_zip(archive)
    assert root.is_relative_to(cache_dir / "extracted")
    # class folders at the archive's top get a folder named after it (the dataset's name in
    # the app), never the cache's content-hash folder
    assert root.name == (top or "up")
    assert root.parent.parent.name == "extracted"
    assert extract_zip(archive) == root
    assert not [p for p in (cache_dir / "extracted").iterdir() if p.name.startswith(".")]


def test_an_uploaded_archive_is_named_after_its_file_and_macos_extras_are_ignored(
    cache_dir: Path,
) -> None:
    """Catches: an upload named by its content hash (its classes at the archive's top), and a
    wrapper folder added around the one top folder because of macOS's ``__MACOSX`` entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("circle/1.png", b"")
        zf.writestr("square/1.png", b"")
    flat = store_upload("My shapes!.zip", buffer.getvalue())
    assert flat.name == "My_shapes_"
    assert sorted(p.name for p in flat.iterdir()) == ["circle", "square"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("mine/circle/1.png", b"")
        zf.writestr("__MACOSX/mine/._1.png", b"")
        zf.writestr(".DS_Store", b"")
    assert store_upload("whatever.zip", buffer.getvalue()).name == "mine"


@pytest.mark.parametrize(
    "name", ["../h8_escape.txt", "ok/../../h8_escape.txt", "/tmp/h8_abs.txt", "..\\h8_escape.txt"]
)
def test_zip_slip_is_refused_before_writing(tmp_path: Path, cache_dir: Path, name: str) -> None:
    """An entry escaping the folder refuses the archive; nothing at all is extracted.

    Catches: a missing or partial name check (the file would land beside the extraction
    folder, or the good entries before it would be written).
    """
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.txt", "fine")
        zf.writestr(name, "escaped")
    with pytest.raises(
        UnsafeFile,
        match=r"^Entry .*h8_\w+\.txt' of \S+slip\.zip would be written outside the extraction "
        r"folder \(zip-slip\), so the archive is refused",
    ):
        load_user_dataset(archive)
    written = [p for p in cache_dir.rglob("*") if p.is_file()] if cache_dir.exists() else []
    assert written == []
    assert not Path("/tmp/h8_abs.txt").exists()


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    """A symbolic-link entry refuses the archive."""
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a/link.png")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeFile, match=r"'a/link\.png' of \S+ is a symbolic link"):
        load_user_dataset(archive)


def test_zip_over_the_cap_is_refused_before_writing(tmp_path: Path, cache_dir: Path) -> None:
    """A small archive that unpacks past the cap (a zip bomb) is refused; nothing written."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.bin", b"\0" * 300_000)
    assert archive.stat().st_size < 10_000
    with pytest.raises(
        FileTooLarge, match=r"bomb\.zip is refused: entry 'a/zeros\.bin' would unpack to more"
    ):
        load_user_dataset(archive, max_bytes=100_000)
    with zipfile.ZipFile(tmp_path / "many.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"a/{i}.bin", b"\0" * 40_000)
    with pytest.raises(FileTooLarge, match=r"many\.zip is refused: its content would unpack"):
        load_user_dataset(tmp_path / "many.zip", max_bytes=100_000)
    assert not (cache_dir / "extracted").exists() or not any((cache_dir / "extracted").iterdir())


def test_uploads(tmp_path: Path, table, shapes_source: Path) -> None:
    """An uploaded table is kept under a safe name; an uploaded zip is extracted; the cap holds."""
    csv = write_csv(tmp_path / "t.csv", *table).read_bytes()
    path = store_upload("../../my table.csv", csv)
    assert path.name == "my_table.csv"
    assert path.read_bytes() == csv
    assert load_user_dataset(path).class_names == TABLE_CLASSES
    data = zip_folder(shapes_source, tmp_path / "s.zip", "s").read_bytes()
    assert load_user_dataset(store_upload("s.zip", data)).class_names == SHAPES
    with pytest.raises(FileTooLarge, match=r"^The upload 't\.csv' is 0\.\d+ MB, over the size cap"):
        store_upload("t.csv", csv, max_bytes=1000)
    assert os.path.commonpath([path, str(tmp_path / "cache")]) == str(tmp_path / "cache")
