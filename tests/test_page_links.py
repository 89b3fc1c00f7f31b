"""AppTest of links on the Train page: a link opens its settings, locks, hides, bad values.

Each test names the wrong implementation it catches; each was tried once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from streamlit.testing.v1 import AppTest

import pages.ui
from dml_core.config import make_config
from dml_core.services.share_links import query_to_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "dataset=digits&loss=contrastive&loss.neg_margin=0.7&miner=batch_hard&steps=123&seed=7"
LOCKED_NOTE = "fixed by this link"


@pytest.fixture
def open_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], AppTest]]:
    """``open_train("a=1&b=2")``: the Train page (or ``page``) opened with that query, over
    its own runs."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("DML_RUNS_DIR", str(runs))
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(runs))
    pages.ui._jobs.clear()

    def opener(query: str, page: str = "train.py") -> AppTest:
        at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=60)
        for key, value in parse_qsl(query, keep_blank_values=True):
            at.query_params[key] = value
        at.run()
        assert not at.exception
        return at

    yield opener
    _, manager, _ = pages.ui.services()
    manager.stop_all()
    pages.ui._jobs.clear()


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.sidebar.caption]


def test_the_example_link_opens_exactly_its_settings_with_loss_and_miner_locked(
    open_train,
) -> None:
    """The issue's Done-when. Catches a page that ignores the URL, or draws a locked loss or
    miner enabled (tried: ``disabled`` not passed to their selectboxes)."""
    at = open_train(f"{EXAMPLE}&lock=loss,miner")
    assert not at.warning
    loss, miner = at.selectbox(key="cfg.loss"), at.selectbox(key="cfg.miner")
    assert (loss.value, miner.value) == ("contrastive", "batch_hard")
    assert loss.disabled
    assert miner.disabled
    assert at.slider(key="loss.contrastive.neg_margin").value == pytest.approx(0.7)
    assert at.number_input(key="cfg.steps").value == 123
    assert at.number_input(key="cfg.seed").value == 7
    assert not at.number_input(key="cfg.steps").disabled  # only what the link locks
    assert sum(LOCKED_NOTE in c for c in captions(at)) == 2


def test_bad_values_are_named_and_their_widgets_show_the_default(open_train) -> None:
    """Catches a page that shows a traceback, one message for both, or keeps the bad value."""
    at = open_train("loss.margin=-5&steps=abc&seed=4")
    messages = [w.value for w in at.warning]
    assert len(messages) == 2, messages
    assert any("'margin'" in m for m in messages)
    assert any("'steps'" in m for m in messages)
    assert at.number_input(key="cfg.steps").value == 300
    assert at.slider(key="cfg.margin.triplet.semi_hard").value == pytest.approx(0.2)
    assert at.number_input(key="cfg.seed").value == 4  # the good value is kept


def test_train_from_a_link_trains_exactly_the_linked_config(open_train) -> None:
    """The Done-when: the saved config.json equals the link's config. ``seed`` is hidden: not
    drawn, yet used. Catches a hidden setting that falls back to its default (tried: hidden
    values not merged into the sidebar's)."""
    query = f"{EXAMPLE}&hide=seed"
    at = open_train(query)
    assert "cfg.seed" not in {w.key for w in at.number_input}
    at.button(key="btn.train").click().run()
    assert not at.exception
    run_id = at.session_state["current_run"]
    saved = json.loads((Path(pages.ui.RUNS_DIR) / run_id / "config.json").read_text())
    values, problems = query_to_settings(dict(parse_qsl(query)))
    assert problems == []
    assert saved == make_config(**values).model_dump(mode="json")
    assert at.query_params["run"] == run_id  # the page's own run= is kept beside settings
    assert at.query_params["steps"] == "123"


def test_the_url_follows_the_sidebar(open_train) -> None:
    """Catches a page that writes the URL only once, or drops a setting back at its default."""
    at = open_train(EXAMPLE)
    at.number_input(key="cfg.steps").set_value(200).run()
    assert at.query_params["steps"] == "200"
    at.number_input(key="cfg.seed").set_value(0).run()
    assert "seed" not in at.query_params
    copy = at.sidebar.code[0].value
    assert copy.endswith("loss.neg_margin=0.7&miner=batch_hard&steps=200")


def test_a_loss_margin_link_sets_the_shared_margin_and_a_different_miner_margin_unlinks(
    open_train,
) -> None:
    """Catches a page that drops the miner margin of a link or leaves the toggle off."""
    at = open_train("loss.margin=0.5")
    assert at.slider(key="cfg.margin.triplet.semi_hard").value == pytest.approx(0.5)
    assert not at.toggle(key="cfg.separate_margin").value
    at = open_train("loss.margin=0.5&miner.margin=0.3")
    assert at.toggle(key="cfg.separate_margin").value
    assert at.slider(key="miner.semi_hard.margin").value == pytest.approx(0.3)


def test_a_valid_margin_below_the_sliders_first_step_opens(open_train) -> None:
    """(0, 2] allows 0.001, the slider starts at 0.01. Catches StreamlitValueBelowMinError
    (tried: the slider's start not moved down)."""
    at = open_train("loss.margin=0.001")
    assert at.slider(key="cfg.margin.triplet.semi_hard").value == pytest.approx(0.001)


def test_locked_fields_and_the_shared_margin_are_disabled(open_train) -> None:
    """Catches field_widget not passing ``disabled`` on (tried) and a free shared margin."""
    at = open_train("loss.margin=0.4&seed=3&lock=loss.margin,seed")
    assert at.slider(key="cfg.margin.triplet.semi_hard").disabled
    assert at.toggle(key="cfg.separate_margin").disabled
    assert at.number_input(key="cfg.seed").disabled
    assert at.number_input(key="cfg.seed").value == 3
    assert not at.number_input(key="cfg.steps").disabled


def test_make_a_link_for_your_class_carries_the_ticked_locks_and_the_lesson(open_train) -> None:
    """Catches checkboxes that do not reach the link."""
    at = open_train(EXAMPLE)
    assert "link.make.lock.steps" not in {c.key for c in at.checkbox}  # drawn only when open
    at.session_state["link.make.open"] = True  # the user opens the expander
    at.run()
    at.checkbox(key="link.make.lock.steps").check().run()
    at.checkbox(key="link.make.hide.loss.neg_margin").check().run()
    made = at.sidebar.code[-1].value
    assert made.endswith(f"{EXAMPLE}&lock=steps&hide=loss.neg_margin")
    at.selectbox(key="link.make.lesson").set_value("hard_mining_collapse").run()
    assert at.sidebar.code[-1].value.endswith(
        "?lesson=hard_mining_collapse&lock=steps&hide=loss.neg_margin"
    )


def test_a_lesson_link_opens_the_lessons_first_run(open_train) -> None:
    at = open_train("lesson=contrastive_vs_triplet")
    assert at.selectbox(key="cfg.loss").value == "contrastive"
    assert at.selectbox(key="cfg.miner").value == "all"
    assert at.number_input(key="cfg.steps").value == 200
    assert "lesson" not in at.query_params  # the URL now names the settings themselves
    assert at.query_params["loss"] == "contrastive"


def test_the_loss_explorer_opens_a_link_and_keeps_its_url_in_step(open_train) -> None:
    """Catches an explorer that ignores the URL, or loses the second loss's parameters."""
    at = open_train(
        "loss=contrastive&loss.neg_margin=0.7&compare=true&loss2=triplet&loss2.margin=0.5"
        "&axis=similarity&held_negative=0.3&show=gradient&seed=1",
        "loss_explorer.py",
    )
    assert at.selectbox(key="explorer.loss").value == "contrastive"
    assert at.slider(key="explorer.contrastive.neg_margin").value == pytest.approx(0.7)
    assert at.toggle(key="explorer.compare").value
    assert at.selectbox(key="explorer2.loss").value == "triplet"
    assert at.slider(key="explorer2.triplet.margin").value == pytest.approx(0.5)
    assert at.radio(key="explorer.scale").value == "similarity"
    assert at.slider(key="explorer.held.similarity.negative").value == pytest.approx(0.3)
    assert at.radio(key="explorer.show").value == "gradient"
    assert [w.value for w in at.warning] == [
        "This link: The link's 'seed' is no setting of this page; its settings are: loss, "
        "compare, loss2, axis, held_negative, held_positive, show, normalize."
    ]
    at.slider(key="explorer.contrastive.neg_margin").set_value(0.9).run()
    assert at.query_params["loss.neg_margin"] == "0.9"
    assert "seed" not in at.query_params
    link = at.sidebar.code[0].value
    assert link.startswith("/loss_explorer?loss=contrastive&loss.neg_margin=0.9")


def test_the_miner_view_opens_a_link_names_bad_values_and_keeps_its_url_in_step(
    open_train,
) -> None:
    """Catches a miner view that ignores the URL or its miners' parameters."""
    at = open_train(
        "miners=all,random&random.fraction=0.3&P=4&K=40000&dim=16&margin=0.35&anchor=5",
        "miner_view.py",
    )
    assert at.pills(key="mv.miners").value == ["all", "random"]
    assert at.slider(key="mv.random.fraction").value == pytest.approx(0.3)
    assert at.number_input(key="mv.P").value == 4
    assert at.number_input(key="mv.K").value == 8  # K=40000 is out of [1, 64]: the default
    assert at.select_slider(key="mv.dim").value == 16
    assert at.slider(key="mv.margin").value == pytest.approx(0.35)
    assert at.number_input(key="mv.anchor").value == 5
    messages = [w.value for w in at.warning]
    assert len(messages) == 1
    assert "'K' parameter of the Miner view must be in [1, 64]" in messages[0]
    at.number_input(key="mv.P").set_value(3).run()
    assert at.query_params["P"] == "3"
    assert at.query_params["random.fraction"] == "0.3"


def test_edits_stay_and_a_new_link_in_the_same_session_is_read(open_train) -> None:
    """Catches a page that re-reads its own URL on every run (an edit would be undone), and one
    that reads the URL only on the session's first run (a link from the Lessons page, in the
    same session, would be ignored)."""
    at = open_train(EXAMPLE)
    at.number_input(key="cfg.steps").set_value(200).run()
    at.run()
    assert at.number_input(key="cfg.steps").value == 200
    for key in list(at.query_params):
        del at.query_params[key]
    at.query_params["lesson"] = "hard_mining_collapse"
    at.session_state[pages.ui.PAGE_NOW] = "lessons"  # the session was on Lessons: a page_link
    at.run()
    assert not at.exception
    first = query_to_settings({"lesson": "hard_mining_collapse"})[0]
    assert at.selectbox(key="cfg.miner").value == first["miner"]
    assert at.number_input(key="cfg.steps").value == first["steps"]


def test_a_rerun_that_carries_an_older_url_keeps_the_widgets(open_train) -> None:
    """Catches a page that re-reads a URL on a rerun of the same page because it differs from
    the one the page last wrote: a slider moved key by key sends reruns whose URL the browser
    has not updated yet, and each one reset the slider to an earlier value (seen in Chromium:
    Margin α stuck at 0.41 on its way to 0.5)."""
    at = open_train(EXAMPLE)
    at.number_input(key="cfg.steps").set_value(200).run()
    for key in list(at.query_params):  # the browser's URL lags: still the link's steps=123
        del at.query_params[key]
    for key, value in parse_qsl(EXAMPLE):
        at.query_params[key] = value
    at.run()
    assert not at.exception
    assert at.number_input(key="cfg.steps").value == 200


def test_each_lesson_links_to_train_with_its_preset(open_train) -> None:
    at = open_train("", "lessons.py")
    links = [m.value for m in at.markdown if "/train?lesson=" in m.value]
    assert any("/train?lesson=contrastive_vs_triplet" in m for m in links), links
