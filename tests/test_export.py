"""Export round trip on a tiny real run: Projector files, CSV, animations, figure files."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from dml_core.analysis import retrieval
from dml_core.config import make_config
from dml_core.data import load_dataset
from dml_core.runs import RunStore
from dml_core.services.export import (
    _snapshots,
    animation_figure,
    animation_gif,
    animation_html,
    animation_layouts,
    chromium_path,
    class_names_of,
    export_embeddings,
    export_main,
    export_metrics_csv,
    export_projector,
    figure_html,
    figure_png,
    projector_zip,
    sprite_image,
)
from dml_core.snapshot import make_probe_indices
from tests.saved_runs import train_and_save

PROBE = 100  # digits: 10 per class


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, str]:
    store = RunStore(tmp_path_factory.mktemp("runs"))
    cfg = make_config(
        steps=20, snapshot_every=5, probe_size=PROBE, embedding_dim=8, final_eval=False
    )
    return store, train_and_save(store, cfg, "tiny")


def test_projector_files(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, run_id = run
    files = export_projector(store, run_id, tmp_path)
    assert set(files) == {"tensors.tsv", "metadata.tsv", "sprite.png", "projector_config.pbtxt"}
    last = store.load_snapshot(run_id, store.snapshot_steps(run_id)[-1])
    tensors = np.loadtxt(tmp_path / "tensors.tsv", delimiter="\t")
    assert tensors.shape == (PROBE, 8)
    np.testing.assert_allclose(tensors, last.probe_emb, atol=1e-5)
    meta = pd.read_csv(tmp_path / "metadata.tsv", sep="\t")
    assert list(meta.columns) == ["label", "class_name"]
    assert len(meta) == PROBE
    assert (meta.label.to_numpy() == last.probe_labels).all()
    assert (meta.class_name.astype(str) == meta.label.astype(str)).all()  # digits: "0".."9"
    pbtxt = (tmp_path / "projector_config.pbtxt").read_text()
    cell = [int(v) for v in re.findall(r"single_image_dim: (\d+)", pbtxt)]
    assert cell == [24, 24]  # 8x8 digits enlarged 3x
    for field in ('tensor_path: "tensors.tsv"', 'metadata_path: "metadata.tsv"'):
        assert field in pbtxt
    assert 'image_path: "sprite.png"' in pbtxt
    # rows, then dimensions: TensorBoard reads the tensor's shape in this order
    assert re.findall(r"tensor_shape: (\d+)", pbtxt) == [str(PROBE), "8"]
    sprite = Image.open(tmp_path / "sprite.png")
    grid = int(np.ceil(np.sqrt(PROBE)))
    assert sprite.size == (grid * 24, grid * 24)
    # the sprite's cells are the probe images, in the probe order
    query = load_dataset("digits").query
    idx = make_probe_indices(query.y.numpy(), PROBE, 0)
    pixels = np.asarray(sprite)
    for i in (0, 57, PROBE - 1):
        r, c = divmod(i, grid)
        cell_px = pixels[r * 24 : (r + 1) * 24 : 3, c * 24 : (c + 1) * 24 : 3]
        assert (cell_px == query.x.numpy()[idx[i], 0]).all()
    assert zipfile_names(projector_zip(store, run_id)) == set(files)


def test_a_sprite_of_a_count_that_is_no_square_fills_its_grid_row_by_row() -> None:
    """99 images (the probe sizes users pick are rarely squares) in a 10 x 10 grid; image 98
    sits in row 9, column 8, and the last cell is padding. Catches: the grid's side rounded
    down (9 x 9 cells cannot hold 99 images), or the images placed column by column."""
    images = np.zeros((99, 8, 8), dtype=np.uint8)
    images[98] = 255
    sprite, cell = sprite_image(images)
    assert (cell, sprite.size) == (24, (240, 240))
    pixels = np.asarray(sprite)
    assert (pixels[9 * 24 : 10 * 24, 8 * 24 : 9 * 24] == 255).all()  # image 98
    assert pixels.sum() == 255 * 24 * 24  # nothing else lit, the 100th cell black


def test_class_names_of_the_built_in_datasets() -> None:
    """Catches: a misspelt dataset name in the lookup (FashionMNIST would export digits'
    names "0".."9" as its class names)."""
    fashion = class_names_of("fashion-mnist")
    assert (fashion[0], fashion[9]) == ("T-shirt/top", "Ankle boot")
    assert class_names_of("mnist") == tuple(str(i) for i in range(10))


def test_each_animation_frame_shows_its_own_snapshot(run: tuple[RunStore, str]) -> None:
    """Catches: every frame drawn from the first snapshot's layout (a still animation)."""
    store, run_id = run
    snaps = _snapshots(store, run_id)
    fig = animation_figure(snaps, [str(i) for i in range(10)])
    layouts = animation_layouts(snaps)
    labels = snaps[0].probe_labels
    first = int(np.unique(labels)[0])  # the first trace's class
    assert len(fig.frames) == len(snaps) >= 3
    assert not np.allclose(layouts[0], layouts[-1])
    for frame, layout in zip(fig.frames, layouts, strict=True):
        np.testing.assert_allclose(frame.data[0].x, layout[labels == first, 0])
        np.testing.assert_allclose(frame.data[0].y, layout[labels == first, 1])


def zipfile_names(data: bytes) -> set[str]:
    import zipfile

    return set(zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_metrics_csv_equals_history(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, run_id = run
    path = export_metrics_csv(store, run_id, tmp_path / "m.csv")
    loaded = pd.read_csv(path)
    pd.testing.assert_frame_equal(loaded, store.history(run_id))
    assert len(loaded) == len(store.snapshot_steps(run_id)) == 5


def test_animation_html_has_a_frame_per_snapshot(run: tuple[RunStore, str], tmp_path: Path):
    store, run_id = run
    html = animation_html(store, run_id, tmp_path / "a.html").read_text()
    steps = store.snapshot_steps(run_id)
    for step in steps:
        assert f'"name":"{step}"' in html
    assert html.count('"name":"') >= len(steps)
    assert "plotly" in html.lower()
    assert "<html" in html.lower()


def test_animation_gif_frames(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, run_id = run
    path = animation_gif(store, run_id, tmp_path / "a.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == len(store.snapshot_steps(run_id))


def test_run_directory_and_cli_entry(run: tuple[RunStore, str], tmp_path: Path, capsys) -> None:
    store, run_id = run
    run_dir = str(store.path(run_id))
    assert export_main(run_dir, "csv", str(tmp_path / "csv"), "/nonexistent") == 0
    assert (tmp_path / "csv" / "metrics.csv").exists()
    assert export_main(run_id, "projector", str(tmp_path / "p"), str(store.root)) == 0
    assert (tmp_path / "p" / "tensors.tsv").exists()
    assert export_main("nope", "csv", str(tmp_path / "x"), str(store.root)) == 2
    assert export_main(run_id, "pdf", str(tmp_path / "x"), str(store.root)) == 2
    assert "error" in capsys.readouterr().err


def test_figure_html_and_png() -> None:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    assert "<html" in figure_html(fig).lower()
    if chromium_path() is None and os.environ.get("CI") != "true":
        pytest.skip("no Chromium here for kaleido (the test runs in CI, where it must exist)")
    png = figure_png(fig, width=300, height=200)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (300, 200)


def no_embedding(*_: object, **__: object) -> None:
    raise AssertionError("embedded the images again")


def test_a_finished_run_exports_the_embeddings_it_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: export embedding a finished run again (``embed`` raises), or writing other
    arrays than the final evaluation's."""
    store = RunStore(tmp_path / "runs")
    cfg = make_config(steps=20, snapshot_every=10, probe_size=PROBE, embedding_dim=8)
    run_id = train_and_save(store, cfg, "finished")
    monkeypatch.setattr(retrieval, "embed", no_embedding)
    assert export_main(run_id, "embeddings", str(tmp_path / "out"), str(store.root)) == 0
    saved = store.load_embeddings(run_id)
    assert saved is not None
    with np.load(tmp_path / "out" / "embeddings.npz") as f:
        assert int(f["step"]) == saved.step == 20
        np.testing.assert_array_equal(f["query_emb"], saved.query_emb)
        np.testing.assert_array_equal(f["ref_emb"], saved.ref_emb)
        np.testing.assert_array_equal(f["query_labels"], load_dataset("digits").query.y.numpy())


def test_a_run_without_saved_embeddings_is_embedded_once(
    run: tuple[RunStore, str], tmp_path: Path
) -> None:
    """Catches: a run without final evaluation refused, or its embeddings not kept."""
    store, run_id = run
    path = export_embeddings(store, run_id, tmp_path / "e.npz")
    assert store.embeddings_step(run_id) == store.load_checkpoint(run_id)["step"] == 20
    with np.load(path) as f:
        assert f["query_emb"].shape == (540, 8)
        assert f["ref_emb"].shape == (1257, 8)
