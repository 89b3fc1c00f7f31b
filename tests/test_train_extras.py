"""AppTests of pages/train_extras: the hardest-triplets strip, the layout caption, the click."""

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis.hard_triplets import snapshot_hardest_triplets
from dml_core.analysis.layout_quality import layout_quality, true_neighbours
from dml_core.analysis.retrieval import images, probe_query_indices
from dml_core.data import load_dataset
from dml_core.figures import thumbnails
from dml_core.figures.images import pixels
from dml_core.projection import project
from tests.saved_runs import make_tiny_run

RUN = "tiny-digits"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("h9_runs")
    make_tiny_run(root, RUN)
    return root


def extras_app(runs_dir: str, run_id: str, step: int, click_key: str) -> None:
    """A page made of the extras alone, as pages/train.py calls them."""
    import streamlit as st

    from dml_core.figures import live
    from dml_core.projection import project
    from dml_core.runs import RunStore
    from pages.train_extras import (
        layout_quality_caption,
        render_hardest_triplets,
        show_true_neighbours,
    )

    snap = RunStore(runs_dir).load_snapshot(run_id, step)
    points = project(snap.probe_emb, "pca")
    fig = live.embedding_figure(points, snap.probe_labels, [str(c) for c in range(10)], "PCA")
    show_true_neighbours(fig, points, snap.probe_emb, click_key)
    st.plotly_chart(fig, key="chart.embedding")
    st.caption(layout_quality_caption(run_id, step, "pca", snap.probe_emb, points))
    render_hardest_triplets(runs_dir, run_id, step)


def open_extras(runs: Path, click_key: str = "test.click") -> tuple[AppTest, int]:
    from dml_core.runs import RunStore

    step = RunStore(runs).snapshot_steps(RUN)[-1]
    at = AppTest.from_function(
        extras_app, args=(str(runs), RUN, step, click_key), default_timeout=60
    )
    at.run()
    assert not at.exception
    return at, step


def chart(at: AppTest, key: str) -> dict:
    (found,) = [el for el in at.get("plotly_chart") if el.proto.id.endswith(f"-{key}")]
    return json.loads(found.proto.spec)


def test_the_strip_is_off_until_asked_then_shows_the_snapshot_hardest_triplets(runs) -> None:
    """Catches: a strip of another step or run, other triplets than the analysis finds, tiles
    whose pictures are not the probe images of their rows."""
    at, step = open_extras(runs)
    assert [el.proto.id.split("-")[-1] for el in at.get("plotly_chart")] == ["chart.embedding"]
    at.toggle(key="view.hard_triplets").set_value(True).run()
    assert not at.exception
    assert not at.error
    strip = chart(at, "chart.hard_triplets")
    from dml_core.runs import RunStore

    store = RunStore(runs)
    snap, cfg = store.load_snapshot(RUN, step), store.load(RUN).config
    hard = snapshot_hardest_triplets(snap.probe_emb, snap.probe_labels, cfg, 8, one_per_anchor=True)
    tiles = strip["layout"]["meta"]["tiles"]
    assert [t["index"] for t in tiles if t["role"] == "negative"] == hard.negative.tolist()
    assert [t["index"] for t in tiles if t["role"] == "anchor"] == hard.anchor.tolist()
    data = load_dataset(cfg.dataset, cfg.split)
    probe_images = images(data.query, probe_query_indices(cfg, data))  # (n, 8, 8)
    z = pixels(strip["data"][0])  # (height, width, 3), the PNG the page sent
    pad, factor = thumbnails.FRAME + thumbnails.INSET, thumbnails.TILE // 8
    for t in tiles:
        top, left = int(t["y"]) + pad, int(t["x"]) + pad
        shown = z[top : top + 8 * factor : factor, left : left + 8 * factor : factor, 0]
        np.testing.assert_array_equal(shown, probe_images[t["index"]])
    assert (
        "triplet loss is satisfied when d(a,n) ≥ d(a,p) + 0.2" in strip["layout"]["title"]["text"]
    )
    anchors = [t["index"] for t in tiles if t["role"] == "anchor"]
    assert len(anchors) == len(set(anchors))  # one per anchor, by default
    at.toggle(key="view.hard_triplets_spread").set_value(False).run()
    every = snapshot_hardest_triplets(snap.probe_emb, snap.probe_labels, cfg, 8)
    tiles = chart(at, "chart.hard_triplets")["layout"]["meta"]["tiles"]
    assert [t["index"] for t in tiles if t["role"] == "negative"] == every.negative.tolist()


def test_the_caption_states_the_layout_quality_of_the_picture_shown(runs) -> None:
    at, step = open_extras(runs)
    from dml_core.runs import RunStore

    snap = RunStore(runs).load_snapshot(RUN, step)
    q = layout_quality(snap.probe_emb, project(snap.probe_emb, "pca"), 10)
    text = at.caption[0].value
    assert f"trustworthiness **{q['trustworthiness']:.3f}**" in text
    assert f"**{q['knn_preserved']:.0%}** of each point's 10 nearest" in text


def test_a_click_marks_the_true_neighbours_of_that_point(runs) -> None:
    """The click is read from the chart's selection state (here set by hand: AppTest cannot
    click). Catches: neighbours of another point, or from the layout."""
    at, step = open_extras(runs)
    at.session_state["test.click"] = {"selection": {"points": [{"customdata": 17}]}}
    at.run()
    assert not at.exception
    fig = chart(at, "chart.embedding")
    marked = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "point"]
    assert len(marked) == 1
    from dml_core.runs import RunStore

    snap = RunStore(runs).load_snapshot(RUN, step)
    assert marked[0]["meta"]["index"] == 17
    assert marked[0]["meta"]["neighbours"] == true_neighbours(snap.probe_emb, 17, 10).tolist()
    at.session_state["test.click"] = {"selection": {"points": [{"customdata": ["weights"]}]}}
    at.run()  # a click on something that is not a probe point draws nothing
    assert not at.exception
    assert not [t for t in chart(at, "chart.embedding")["data"] if t.get("meta")]


def test_unrecoverable_probe_images_give_one_message(runs, monkeypatch) -> None:
    """A run whose dataset changed since: the strip says so in one message, no traceback."""
    import streamlit as st

    from dml_core.errors import ConfigError
    from dml_core.services import export

    def changed(*_args):
        raise ConfigError("The probe images of 'x' cannot be recovered: labels differ.")

    monkeypatch.setattr(export, "probe_images", changed)
    st.cache_data.clear()
    at, _ = open_extras(runs)
    at.toggle(key="view.hard_triplets").set_value(True).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The probe images of 'x' cannot be recovered: labels differ."
    ]
    st.cache_data.clear()
