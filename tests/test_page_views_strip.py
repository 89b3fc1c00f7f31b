"""The views strip: its figure keeps each image's two views together; the page draws it only
for label-free runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.figures.images import pixels
from dml_core.figures.views import VIEW_GAP, views_mosaic, views_strip_figure
from tests.page_apps import page_on_runs


def test_the_mosaic_puts_each_images_two_views_side_by_side() -> None:
    """Views of constant grey levels: image i's views are 10 + 20 i and 15 + 20 i. Catches the
    pairs split apart (all first views, then all second views) or swapped within a pair."""
    n, h, w = 3, 8, 8
    pairs = np.zeros((n, 2, h, w), np.uint8)
    for i in range(n):
        pairs[i, 0], pairs[i, 1] = 10 + 20 * i, 15 + 20 * i
    mosaic = views_mosaic(pairs)
    assert mosaic.shape[0] == h
    assert mosaic.shape[2] == 3
    row = mosaic[0, :, 0].astype(int)
    runs = [int(v) for k, v in enumerate(row) if k == 0 or v != row[k - 1]]
    assert runs == [10, 255, 15, 255, 30, 255, 35, 255, 50, 255, 55]
    gap = max(1, round(h * VIEW_GAP))
    assert (row[w : w + gap] == 255).all()  # the narrow gap inside a pair


def test_float_views_in_unit_range_become_grey_levels() -> None:
    """Catches [0, 1] views drawn as uint8 without scaling (all black)."""
    pairs = np.full((1, 2, 4, 4), 0.5, np.float32)
    assert views_mosaic(pairs)[0, 0, 0] == 128


def test_the_title_says_what_the_net_is_asked_to_match() -> None:
    fig = views_strip_figure(np.zeros((2, 2, 8, 8), np.float32))
    assert "what the net is asked to match" in fig.layout.title.text.lower()
    assert [a.text for a in fig.layout.annotations] == ["image 1", "image 2"]


def strip_script(supervision: str) -> None:
    """The page piece alone: the strip of a digits run with the given supervision."""
    from dml_core.config import make_config
    from pages.train_views import render_views_strip

    loss = "ntxent"
    render_views_strip(make_config(supervision=supervision, loss=loss))


def test_render_views_strip_draws_the_runs_first_views_for_a_views_run() -> None:
    """Catches a strip drawn for a labelled run (there are no views to match) or missing for
    a label-free one, and one built from other images than the run's first batch."""
    from dml_core.augment import example_views
    from dml_core.config import make_config
    from dml_core.data import load_dataset

    at = AppTest.from_function(strip_script, args=("views",), default_timeout=60).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert "asked to match" in spec["layout"]["title"]["text"]
    cfg = make_config(supervision="views", loss="ntxent")
    want = views_mosaic(example_views(cfg, load_dataset("digits"), 8))
    np.testing.assert_array_equal(pixels(spec["data"][0]), want)  # the PNG the page sent
    assert "only positive pair" in at.caption[0].value

    at = AppTest.from_function(strip_script, args=("labels",), default_timeout=60).run()
    assert not at.exception
    assert at.get("plotly_chart") == []


@pytest.fixture
def train_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    yield from page_on_runs("train.py", tmp_path / "runs", monkeypatch)


def test_the_sidebar_shows_the_view_strengths_only_for_views(train_page: AppTest) -> None:
    """The sidebar is generated from RunConfig; the strengths appear with the views toggle,
    and a class-level loss is refused there in one sentence. Catches strengths always hidden
    (the run would silently use defaults) or shown for labelled runs."""
    keys = [f"cfg.{name}" for name in ("crop_scale", "rotation", "translate", "noise")]
    sliders = {s.key for s in train_page.slider}
    assert not sliders & set(keys)
    train_page.radio(key="cfg.supervision").set_value("views").run()
    assert not train_page.exception
    assert set(keys) <= {s.key for s in train_page.slider}
    train_page.slider(key="cfg.rotation").set_value(30.0).run()
    assert train_page.slider(key="cfg.rotation").value == 30.0
    train_page.selectbox(key="cfg.loss").set_value("arcface").run()
    assert any("learns one weight per class" in e.value for e in train_page.error)
    assert train_page.button(key="btn.train").disabled
