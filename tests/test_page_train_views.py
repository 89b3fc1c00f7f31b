"""The Train page tells the truth: one margin, the shown run's own settings, steady axes, replay.

Each test names the wrong page it catches (issue 19). AppTest runs the whole script on every
``run()``; behaviour that needs the browser's timed fragment reruns is in tests/e2e.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import pages.train_replay
import pages.ui
from dml_core.config import make_config
from dml_core.registry import LOSSES
from dml_core.runs import RunStore
from tests.page_apps import figure_specs
from tests.saved_runs import make_tiny_run, train_and_save

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def page(runs: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    monkeypatch.setenv("DML_RUNS_DIR", str(runs))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(runs))
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    yield at
    _, manager, _ = pages.ui.services()
    manager.stop_all()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A contrastive + batch-hard run with 4 snapshots (the sidebar's default is triplet)."""
    root = tmp_path_factory.mktemp("saved") / "runs"
    cfg = make_config(
        loss="contrastive",
        loss_params={"pos_margin": 0.1, "neg_margin": 0.8},
        miner="batch_hard",
        embedding_dim=8,
        classes_per_batch=4,
        samples_per_class=8,
        lr=0.01,
        steps=60,
        snapshot_every=20,
        probe_size=100,
        final_eval=True,
        device="cpu",
    )
    return root, train_and_save(RunStore(root), cfg, "contrastive-run")


def open_saved(at: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> AppTest:
    root, run_id = saved
    monkeypatch.setenv("DML_RUNS_DIR", str(root))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(root))
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    return at


def charts(at: AppTest) -> list[dict]:
    return figure_specs(at)


def values(data: list | dict) -> list[float]:
    """A plotly array from a chart spec: a list, or plotly's base64 typed array."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def scrub_to(at: AppTest, step: int) -> None:
    at.toggle(key="view.follow").set_value(False).run()
    at.select_slider(key="view.scrub_step").set_value(step).run()
    assert not at.exception


def test_one_margin_drives_the_loss_and_the_miner(page: AppTest, runs: Path) -> None:
    """Catches: separate loss and miner margin sliders (a loss at 0.5 mined at 0.2)."""
    page.run()
    page.slider(key="cfg.margin.triplet.semi_hard").set_value(0.5).run()
    page.number_input(key="cfg.steps").set_value(5).run()
    page.button(key="btn.train").click().run()
    assert not page.exception
    cfg = RunStore(runs).load(page.session_state["current_run"]).config
    assert cfg.loss_params["margin"] == 0.5
    assert cfg.miner_params["margin"] == 0.5


def test_a_separate_miner_margin_is_an_explicit_choice(page: AppTest, runs: Path) -> None:
    page.run()
    keys = {w.key for w in page.slider}
    assert "miner.semi_hard.margin" not in keys  # linked by default: one slider
    page.toggle(key="cfg.separate_margin").set_value(True).run()
    page.slider(key="cfg.margin.triplet.semi_hard").set_value(0.5).run()
    page.slider(key="miner.semi_hard.margin").set_value(0.3).run()
    page.number_input(key="cfg.steps").set_value(5).run()
    page.button(key="btn.train").click().run()
    cfg = RunStore(runs).load(page.session_state["current_run"]).config
    assert (cfg.loss_params["margin"], cfg.miner_params["margin"]) == (0.5, 0.3)


def test_a_saved_run_is_shown_under_its_own_settings(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: equations and "About" texts taken from the sidebar (triplet, semi_hard)."""
    at = open_saved(page, saved, monkeypatch)
    equations = " ".join(latex.value for latex in at.latex)
    assert LOSSES["contrastive"].equation in equations
    assert LOSSES["triplet"].equation not in equations
    assert any(e.label == "About batch_hard" for e in at.expander)
    assert not any(e.label == "About semi_hard" for e in at.expander)
    card = " ".join(m.value for m in at.markdown)
    for text in (
        "loss contrastive (pos_margin=0.1, neg_margin=0.8)",
        "miner batch_hard",
        "lr 0.01",
    ):
        assert text in card


def test_load_these_settings_copies_the_run_into_the_sidebar(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_saved(page, saved, monkeypatch)
    at.button(key="btn.load_settings").click().run()
    assert not at.exception
    assert at.selectbox(key="cfg.loss").value == "contrastive"
    assert at.selectbox(key="cfg.miner").value == "batch_hard"
    assert at.number_input(key="cfg.lr").value == 0.01
    assert at.slider(key="loss.contrastive.pos_margin").value == 0.1


def test_histogram_axes_stay_fixed_while_scrubbing(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: histograms that autoscale at every snapshot (the axis moves, not the data)."""
    at = open_saved(page, saved, monkeypatch)
    ranges = []
    for step in (0, 60):
        scrub_to(at, step)
        specs = charts(at)
        hist = next(s for s in specs if "pair distances" in s["layout"]["title"]["text"])
        sphere = next(s for s in specs if "unit sphere" in s["layout"]["title"]["text"])
        ranges.append(
            (hist["layout"]["xaxis"]["range"], hist["layout"]["yaxis"]["range"],
             sphere["layout"]["yaxis"]["range"])
        )  # fmt: skip
    assert ranges[0] == ranges[1]
    assert ranges[0][0] == [0.0, 2.0]  # on the unit sphere


@pytest.mark.parametrize("on_sphere", [True, False])
def test_the_axes_folded_from_each_snapshots_part_are_the_axes_over_every_snapshot(
    saved: tuple[Path, str], on_sphere: bool
) -> None:
    """The page keeps each snapshot's part of the axes (its x-extent, its highest bar at the
    shared extent, its sphere top) and folds them; the result is what ``live.steady_axes``
    computes from all snapshots at once, for the first snapshots and for all of them.

    Catches: a snapshot's highest bar taken on its own bins instead of the shared ones (off
    the sphere each snapshot's extent differs), or a fold that drops the earlier snapshots.
    """
    from dml_core.figures import live

    root, run_id = saved
    store = RunStore(root)
    steps = store.snapshot_steps(run_id)
    for shown in (steps[:2], steps):
        got = pages.ui.steady_axes(str(root), ((run_id, tuple(shown)),), on_sphere)
        want = live.steady_axes([store.load_snapshot(run_id, s) for s in shown], on_sphere)
        assert got == want


def test_curves_show_the_whole_run_with_a_marker_at_the_scrubbed_step(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: curves cut at the scrubbed step (empty axes at step 0)."""
    at = open_saved(page, saved, monkeypatch)
    scrub_to(at, 0)
    curves = next(s for s in charts(at) if s["layout"]["title"]["text"] == "Training curves")
    loss = next(t for t in curves["data"] if t["name"] == "loss")
    assert values(loss["x"]) == [0, 20, 40, 60]
    assert {shape["x0"] for shape in curves["layout"]["shapes"]} == {0}


def test_headline_metrics_follow_the_scrubbed_snapshot(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: the final P@1 shown at the top while step 0 is on screen, unlabelled."""
    root, run_id = saved
    at = open_saved(page, saved, monkeypatch)
    scrub_to(at, 0)
    labels = {m.label: m.value for m in at.metric}
    first = RunStore(root).load_snapshot(run_id, 0).metrics["precision_at_1"]
    assert labels["P@1 at step 0"] == f"{first:.3f}"
    assert "P@1 final" in labels  # the test-vs-train figure, labelled as such
    assert any("Snapshot 1 of 4: step 0" in c.value for c in at.caption)


class PlayClock:
    """``time`` for ``pages.train_replay``: Play's timer ticks when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> PlayClock:
    fake = PlayClock()
    monkeypatch.setattr(pages.train_replay, "time", fake)
    return fake


def start_playing(at: AppTest, clock: PlayClock) -> None:
    """From step 0, at the fast speed (0.4 s per snapshot)."""
    scrub_to(at, 0)
    at.radio(key="view.speed").set_value("fast").run()
    at.toggle(key="view.play").set_value(True).run()


def shown_step(at: AppTest) -> int:
    """The step the figures show, from the caption under the slider."""
    for caption in at.caption:
        if match := re.search(r"Snapshot \d+ of \d+: step (\d+)", caption.value):
            return int(match.group(1))
    raise AssertionError("no snapshot caption on the page")


def tick(at: AppTest, clock: PlayClock) -> int:
    """One timer rerun a fast period later; the step shown after it."""
    clock.now += 0.4
    at.run()
    assert not at.exception
    return shown_step(at)


def test_play_steps_through_the_snapshots_to_the_end(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, clock: PlayClock
) -> None:
    """Catches: Play that advances once and stops, or runs on past the last snapshot."""
    at = open_saved(page, saved, monkeypatch)
    start_playing(at, clock)
    seen = [tick(at, clock) for _ in range(5)]
    assert seen == [20, 40, 60, 60, 60]
    assert at.toggle(key="view.play").value is False  # stopped at the end


def test_a_rerun_between_ticks_does_not_move_play(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, clock: PlayClock
) -> None:
    """Catches: Play that advances on every rerun (a click, a poll), not on its timer."""
    at = open_saved(page, saved, monkeypatch)
    start_playing(at, clock)
    assert tick(at, clock) == 20
    at.run()  # no time passed: not a tick
    assert shown_step(at) == 20


def test_a_stale_slider_value_does_not_move_play_back(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, clock: PlayClock
) -> None:
    """Catches: Play that takes its place from the slider in every rerun. A rerun can carry the
    slider's value from before the last tick (the browser had not drawn it yet): Chromium
    showed snapshot 3, then 2, then 4. The slider is the player's while it plays."""
    at = open_saved(page, saved, monkeypatch)
    start_playing(at, clock)
    assert [tick(at, clock), tick(at, clock)] == [20, 40]
    playing = at.select_slider(key="view.play_slider")
    assert playing.disabled
    assert playing.value == 40
    assert not [s for s in at.select_slider if s.key == "view.scrub_step"]  # not drawn now
    # The rerun carries the slider's value from before the last tick, as the browser sent it
    # (AppTest's set_value refuses a disabled widget, so its pending value is set directly).
    playing._value = 20
    at.run()
    assert shown_step(at) == 40
    assert at.select_slider(key="view.play_slider").value == 40
    assert tick(at, clock) == 60
    assert tick(at, clock) == 60  # the end: Play stops, the user's slider is back, at the end
    assert at.toggle(key="view.play").value is False
    assert at.select_slider(key="view.scrub_step").value == 60
    scrub_to(at, 20)
    assert shown_step(at) == 20


def test_a_missing_run_in_the_url_says_so(page: AppTest) -> None:
    page.query_params["run"] = "no-such-run"
    page.run()
    assert not page.exception
    assert any("There is no run 'no-such-run'" in w.value for w in page.warning)


def test_controls_follow_the_run_state(page: AppTest) -> None:
    """Catches: Pause disabled for the whole run, Resume offered while running, a Stop that
    does not stop. (Few probe points: each poll here draws the whole page, figures included.)"""
    page.run()
    page.number_input(key="cfg.steps").set_value(100_000).run()
    page.number_input(key="cfg.probe_size").set_value(100).run()
    page.button(key="btn.train").click().run()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and page.button(key="btn.pause").disabled:
        time.sleep(0.5)
        page.run()
    assert not page.button(key="btn.pause").disabled
    assert not page.button(key="btn.stop").disabled
    assert page.button(key="btn.resume").disabled
    page.button(key="btn.pause").click().run()
    assert page.button(key="btn.pause").disabled
    assert not page.button(key="btn.resume").disabled
    page.button(key="btn.stop").click().run()
    deadline = time.monotonic() + 60  # the job's thread ends the run: poll, as the page does
    while time.monotonic() < deadline and not page.button(key="btn.stop").disabled:
        time.sleep(0.5)
        page.run()
    assert page.button(key="btn.stop").disabled
    assert not page.button(key="btn.resume").disabled  # stopped with a checkpoint


def test_a_batch_that_would_not_fit_in_memory_is_refused_before_training(page: AppTest) -> None:
    """Catches: a P x K that takes the server down accepted by the Train page."""
    page.run()
    page.number_input(key="cfg.classes_per_batch").set_value(10).run()
    page.number_input(key="cfg.samples_per_class").set_value(120).run()
    assert not page.exception
    assert any("would need about" in e.value and "lower P or K" in e.value for e in page.error)
    assert page.button(key="btn.train").disabled


def titled(at: AppTest, start: str) -> dict:
    return next(s for s in charts(at) if s["layout"]["title"]["text"].startswith(start))


def test_geometry_figures_follow_the_scrubbed_snapshot_on_fixed_axes(
    page: AppTest, saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: the (uniformity, alignment) path or the rank missing from the page, values
    recomputed instead of read from the run, axes that move while scrubbing."""
    root, run_id = saved
    history = RunStore(root).history(run_id)
    at = open_saved(page, saved, monkeypatch)
    ranges = []
    for step in (20, 60):
        scrub_to(at, step)
        path = titled(at, "Alignment and uniformity")
        traces = {t["name"]: t for t in path["data"]}
        row = history[history.step == step].iloc[0]
        star = traces[f"step {step}"]
        assert (star["x"][0], star["y"][0]) == (row["uniformity"], row["alignment"])
        assert (
            values(traces["path so far"]["x"]) == history.uniformity[history.step <= step].tolist()
        )
        rank = titled(at, "Effective rank")
        line = next(t for t in rank["data"] if t["name"] == "effective rank")
        assert values(line["y"]) == history.effective_rank.tolist()
        assert any(s.get("y0") == 8 for s in rank["layout"]["shapes"])  # the ceiling D = 8
        ranges.append(
            (path["layout"]["xaxis"]["range"], path["layout"]["yaxis"]["range"],
             rank["layout"]["yaxis"]["range"])
        )  # fmt: skip
    assert ranges[0] == ranges[1]


@pytest.fixture(scope="module")
def arcface_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """Two tiny ArcFace runs, D = 3 (direct view on the sphere) and D = 8 (projected)."""
    root = tmp_path_factory.mktemp("arcface") / "runs"
    store, ids = RunStore(root), {}
    for dim in (3, 8):
        cfg = make_config(
            loss="arcface", miner="all", embedding_dim=dim, classes_per_batch=4,
            samples_per_class=8, steps=20, snapshot_every=20, probe_size=100,
            final_eval=False, device="cpu",
        )  # fmt: skip
        ids[dim] = train_and_save(store, cfg, f"arcface-{dim}")
    return root, ids


@pytest.mark.parametrize("dim", [3, 8])
def test_class_weights_are_drawn_with_the_probe_points(
    page: AppTest, arcface_runs: tuple[Path, dict[int, str]], dim: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Catches: class weights not drawn, drawn unnormalised in the direct view, or projected
    apart from the probe set (their layout rows taken as probe points)."""
    root, ids = arcface_runs
    at = open_saved(page, (root, ids[dim]), monkeypatch)
    if dim > 3:
        at.radio(key="view.method").set_value("PCA").run()
    snap = RunStore(root).load_snapshot(ids[dim], 20)
    emb = next(s for s in charts(at) if s["layout"].get("uirevision", "").startswith("emb-"))
    weights = next(t for t in emb["data"] if t.get("name") == "class weights")
    assert len(values(weights["x"])) == len(snap.class_weights) == 10
    points = [t for t in emb["data"] if t["type"] != "surface" and t is not weights]
    assert sum(len(values(t["x"])) for t in points) == len(snap.probe_labels)  # no weight rows
    if dim == 3:  # direct view: the stored unit vectors themselves, on the sphere
        assert weights["type"] == "scatter3d"
        np.testing.assert_allclose(values(weights["z"]), snap.class_weights[:, 2], atol=1e-6)
    else:
        assert weights["type"] == points[0]["type"] == "scatter"  # 540 digits points: SVG


def test_the_collapse_warning_names_dimensional_collapse(
    page: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a page that warns only on point collapse, or calls a rank collapse by the
    points' name."""
    root = tmp_path / "collapsed"
    store = make_tiny_run(root)
    last = store.snapshot_steps("tiny-digits")[-1]
    snap = store.load_snapshot("tiny-digits", last)
    flags = {**snap.collapse, "collapsing": 0.0, "dimensional_collapse": 1.0, "rank_floor": 4.5}
    store.save_snapshot("tiny-digits", dataclasses.replace(snap, collapse=flags))
    at = open_saved(page, (root, "tiny-digits"), monkeypatch)
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1
    assert warnings[0].startswith("Dimensional collapse")
    assert "below 4.5" in warnings[0]
