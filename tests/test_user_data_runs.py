"""A finished run on the user's own data, as the other pages and exports read it (issue 17):
retrieval, the batch view, the Projector export and class names come from the data."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from dml_core.analysis import retrieval
from dml_core.analysis.batch_view import SavedRun, draw_batch
from dml_core.cli import main
from dml_core.figures.retrieval import query_strip_figure
from dml_core.runs import RunStore
from dml_core.services import export
from dml_core.user_data.for_runs import BLANK_TILE
from tests.user_data_files import TABLE_CLASSES, gaussian_table, write_csv, write_shapes

TRAIN = ["--steps", "20", "--snapshot-every", "10", "--json"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hB_cache")


def _train(runs: Path, dataset: Path, cache: Path, *flags: str) -> str:
    """Train a run with the CLI in this process (cache in ``cache``); its id."""
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buffer):
        mp.setenv("DML_CACHE_DIR", str(cache))
        status = main(["train", "--dataset", str(dataset), "--out", str(runs), *TRAIN, *flags])
    assert status == 0
    return json.loads(buffer.getvalue())["run_id"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("hB_table_run")
    x, y = gaussian_table(per_class=20)
    table = write_csv(root / "features.csv", x, y)
    return root / "runs", _train(root / "runs", table, cache_dir)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("hB_rgb_run")
    folder = write_shapes(root / "shapes", per_class=12, size=16)
    return root / "runs", _train(root / "runs", folder, cache_dir, "--color", "rgb")


@pytest.fixture(autouse=True)
def _cache_env(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DML_CACHE_DIR", str(cache_dir))


def test_retrieval_on_a_table_run_names_rows(table_run: tuple[Path, str]) -> None:
    """Catches: the net rebuilt for images (``image_shape`` refuses a table), thumbnails that
    fail on feature vectors, captions without the file's row."""
    runs, run_id = table_run
    store = RunStore(runs)
    _cfg, _net, dataset = retrieval.load_run_model(store, run_id)
    assert dataset.input_shape == (8,)
    index = retrieval.build_index(store, run_id)
    assert index.n_queries == len(dataset.query)
    assert retrieval.has_images(dataset) is False
    assert retrieval.images(dataset.reference, [0, 1]).shape == (2, *BLANK_TILE)
    caption = retrieval.captions(dataset, "reference", [0])[0]
    row = int(caption.split(":")[0].removeprefix("row "))
    assert caption.endswith(dataset.class_names[int(dataset.reference.y[0])])
    assert 0 <= row < 120


def test_the_neighbour_strip_of_a_table_run_names_each_tile_by_its_row(
    table_run: tuple[Path, str],
) -> None:
    """Catches: a strip of blank tiles titled only by class (which row is which cannot be told),
    or the query's and references' rows swapped."""
    runs, run_id = table_run
    store = RunStore(runs)
    _cfg, _net, dataset = retrieval.load_run_model(store, run_id)
    index = retrieval.build_index(store, run_id)
    fig = query_strip_figure(index, dataset, 3, 4, "neighbours")
    titles = [a.text for a in fig.layout.annotations]
    nb = retrieval.neighbours(index, 3, 4)
    assert retrieval.captions(dataset, "query", [3])[0] in titles[0]
    refs = retrieval.captions(dataset, "reference", nb.indices)
    for title, caption in zip(titles[1:5], refs, strict=True):
        assert caption in title


def test_projector_export_of_a_table_run_has_no_sprite(table_run: tuple[Path, str]) -> None:
    """Class names come from the data (string labels), not the digits' 0-9."""
    runs, run_id = table_run
    store = RunStore(runs)
    files = export.projector_files(store, run_id)
    assert "sprite.png" not in files
    assert b"sprite" not in files["projector_config.pbtxt"]
    names = {line.split("\t")[1] for line in files["metadata.tsv"].decode().splitlines()[1:]}
    assert names <= set(TABLE_CLASSES)
    assert export.class_names_of(store.load(run_id).config) == TABLE_CLASSES


def test_rgb_run_everywhere(rgb_run: tuple[Path, str]) -> None:
    """An RGB folder run: 3-channel ConvNet, gray thumbnails in the sprite and the batch view.

    Catches: a ConvNet or an MLP rebuilt with 1 channel (the checkpoint would not load).
    """
    runs, run_id = rgb_run
    store = RunStore(runs)
    cfg, _net, dataset = retrieval.load_run_model(store, run_id)
    assert (cfg.net, dataset.input_shape) == ("convnet", (3, 28, 28))
    files = export.projector_files(store, run_id)
    assert "sprite.png" in files
    batch = draw_batch(cfg.dataset, 2, 4, 0, SavedRun(str(runs), run_id))
    assert batch.images.shape == (8, 28, 28)
    assert batch.images.dtype == np.uint8
    assert set(batch.class_names) == {"circle", "cross", "square", "triangle"}
