"""Tests for a run on the user's own data: the dataset path in RunConfig, the one loader
(``data.load_for_config``), P / K / net fitted to the data, nets on any channels and size,
thumbnails and captions (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core.config import RunConfig, config_for_data, make_config
from dml_core.config_data import fit_to_data
from dml_core.data import DatasetError, load_dataset, load_for_config
from dml_core.errors import ConfigError
from dml_core.nets import build_net
from dml_core.user_data import (
    ClassTooSmall,
    TooManyClassesPerBatch,
    gray_pictures,
    sample_captions,
)
from tests.user_data_files import write_csv, write_npz, write_shapes


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty image cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("DML_CACHE_DIR", str(folder))
    return folder


def small_table(tmp_path: Path, sizes: tuple[int, ...] = (30, 30, 12)) -> Path:
    """Classes of the given sizes; feature 0 of row r is r, so a row can be traced back."""
    y = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    x = np.column_stack([np.arange(len(y)), y * 10 + rng.normal(0, 1, len(y))])
    return write_npz(tmp_path / "small.npz", x.astype(np.float32), y)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes of 10 noisy 16x16 shapes."""
    return write_shapes(tmp_path_factory.mktemp("hB_shapes") / "shapes", per_class=10, size=16)


def test_dataset_path_is_accepted_and_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = small_table(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = make_config(dataset="small.npz")
    assert cfg.dataset == str(table)  # a saved run finds it from any folder
    assert make_config(dataset="digits").dataset == "digits"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nowhere/at/all", "nowhere/at/all does not exist."),
        ("notes.txt", "notes.txt is neither a folder nor a .npz, .csv, .parquet, .pq, .zip file."),
        ("", "'' is not a path."),
    ],
)
def test_bad_dataset_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """Catches: a path accepted without checking that it exists or what it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError) as err:
        make_config(dataset=value)
    message = str(err.value)
    assert message.startswith(
        "The 'dataset' parameter of the run config must be one of 'digits', 'mnist', "
        "'fashion-mnist' or the path of an image folder or a .npz, .csv, .parquet, .pq or .zip "
        "file; "
    )
    assert message.endswith(problem)
    assert message.count(". ") == 0  # one sentence


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"image_size": 64}, "The 'image_size' parameter applies only to your own image folder"),
        ({"color": "rgb"}, "The 'color' parameter applies only to your own image folder"),
    ],
)
def test_image_settings_are_refused_for_built_in_data(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(dataset="digits", **values)


def test_image_size_is_one_of_the_offered(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'image_size' .* must be one of 28, 32, 64\. Got 30"):
        make_config(dataset=str(small_table(tmp_path)), image_size=30)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"supervision": "views"}, r"^The 'supervision' parameter must be 'labels' for the feat"),
        ({"net": "convnet"}, r"^The 'net' parameter must be 'mlp' for the feature table"),
    ],
)
def test_a_table_refuses_views_and_the_convnet(tmp_path: Path, values: dict, message: str) -> None:
    """Refused from the path alone (make_config) and again once loaded (config_for_data).

    Catches: a check made only at one of the two places (a zip of a table is known only once
    loaded, so ``check_user_dataset`` must refuse too).
    """
    table = str(small_table(tmp_path))
    with pytest.raises(ConfigError, match=message):
        make_config(dataset=table, **values)
    unchecked = make_config(dataset=table).model_copy(update=values)
    with pytest.raises(ConfigError, match=message):
        config_for_data(unchecked)


def test_p_k_and_net_not_given_adapt_to_the_data(tmp_path: Path, tiny_shapes: Path) -> None:
    """P = min(6, classes), K = min(16, smallest training class); ConvNet for images, MLP for
    tables. Catches: the RunConfig defaults kept (P 6 > 3 classes), K from the whole class
    instead of its training part (12 samples, 10 of them train: K 10, not 12)."""
    cfg, data = config_for_data(make_config(dataset=str(small_table(tmp_path))))
    assert (cfg.classes_per_batch, cfg.samples_per_class, cfg.net) == (3, 10, "mlp")
    assert int(torch.bincount(data.train.y).min()) == 10
    cfg, data = config_for_data(make_config(dataset=str(tiny_shapes)))
    assert (cfg.classes_per_batch, cfg.samples_per_class, cfg.net) == (4, 8, "convnet")
    given = make_config(dataset=str(tiny_shapes), classes_per_batch=2, samples_per_class=4)
    fitted = fit_to_data(given.model_copy(update={"net": "mlp"}), data)
    assert (fitted.classes_per_batch, fitted.samples_per_class) == (2, 4)
    builtin = make_config(dataset="digits")
    assert fit_to_data(builtin, load_dataset("digits")) is builtin


def test_explicit_p_or_k_the_data_cannot_fill_is_refused(tmp_path: Path) -> None:
    table = str(small_table(tmp_path))
    with pytest.raises(TooManyClassesPerBatch, match=r"must be at most 3, the number of"):
        config_for_data(make_config(dataset=table, classes_per_batch=4))
    with pytest.raises(
        ClassTooSmall, match=r"^Class '2' of \S+small\.npz has 10 training samples, fewer than "
        r"K = 12 per batch; use K = 10 or less\.$",
    ):  # fmt: skip
        config_for_data(make_config(dataset=table, samples_per_class=12))


def test_split_is_seeded_apart_from_the_run_seed(tmp_path: Path) -> None:
    """Runs with different seeds see the same data, as on the built-in datasets.

    Catches: the 80/20 split seeded with ``cfg.seed``.
    """
    table = str(small_table(tmp_path))
    a = load_for_config(make_config(dataset=table, seed=0))
    b = load_for_config(make_config(dataset=table, seed=7))
    assert torch.equal(a.query.x, b.query.x)


def test_load_for_config_is_load_dataset_for_built_in_names() -> None:
    cfg = make_config(dataset="digits", split="open-set")
    got, want = load_for_config(cfg), load_dataset("digits", "open-set")
    assert got.name == "digits"
    assert torch.equal(got.query.x, want.query.x)
    assert got.input_shape == (1, 8, 8)
    assert got.channels == 1


def test_csv_and_npz_runs_use_the_mlp_on_feature_vectors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.array(["a", "b"] * 20)
    data = load_for_config(make_config(dataset=str(write_csv(tmp_path / "t.csv", x, y))))
    assert data.input_shape == (5,)
    assert data.channels == 0
    net = build_net("mlp", data.input_shape, 8)
    assert net(data.train.x[:3]).shape == (3, 8)
    with pytest.raises(ValueError, match="'convnet' needs images"):
        build_net("convnet", data.input_shape, 8)


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 32, 32), (1, 28, 28), (1, 8, 8)])
def test_convnet_adapts_to_channels_and_size(shape: tuple[int, int, int]) -> None:
    """Catches: a first convolution fixed at 1 channel, or a last layer sized for 28x28."""
    net = build_net("convnet", shape, 16, seed=0)
    images = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    assert net(images).shape == (2, 16)


def test_gray_pictures_use_luminance() -> None:
    """Catches: RGB shown by its red channel alone (``x[:, 0]``): pure green would be black."""
    rgb = torch.zeros((3, 3, 2, 2), dtype=torch.uint8)
    for i in range(3):
        rgb[i, i] = 255  # red, green, blue
    assert gray_pictures(rgb)[:, 0, 0].tolist() == [76, 150, 29]  # Pillow's convert("L")
    gray = torch.full((1, 1, 2, 2), 9, dtype=torch.uint8)
    assert gray_pictures(gray).tolist() == [[[9, 9], [9, 9]]]


def test_captions_name_the_source_row_and_file(tmp_path: Path, tiny_shapes: Path) -> None:
    """A table's caption names the file's row: feature 0 of row r is r.

    Catches: the part's own index shown as the row (the query part is a shuffled 20%).
    """
    data = load_for_config(make_config(dataset=str(small_table(tmp_path))))
    idx = np.arange(len(data.query))
    captions = sample_captions(data, "query", idx)
    rows = [int(c.split(":")[0].removeprefix("row ")) for c in captions]
    assert rows == data.query.x[:, 0].int().tolist()
    assert [c.split(": ")[1] for c in captions] == [str(int(y)) for y in data.query.y]
    images = load_for_config(make_config(dataset=str(tiny_shapes)))
    first = sample_captions(images, "reference", [0])[0]
    label = images.class_names[int(images.reference.y[0])]
    assert first.startswith(f"{label}/")
    assert first.endswith(f".png: {label}")
    assert sample_captions(load_dataset("digits"), "query", [0]) == [
        str(int(load_dataset("digits").query.y[0]))
    ]


def test_a_saved_run_opens_when_its_data_has_moved(tmp_path: Path) -> None:
    """Catches: the saved config re-checking that the path exists (the run would not open)."""
    table = small_table(tmp_path)
    cfg = make_config(dataset=str(table))
    table.unlink()
    again = RunConfig.model_validate_json(cfg.model_dump_json())
    assert again.dataset == str(table)
    with pytest.raises(DatasetError, match=r"small\.npz does not exist"):
        load_for_config(again)
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(dataset=str(table))
