"""AppTest of the Lessons page: every lesson listed with its text and a run button."""

from pathlib import Path

import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from dml_core.runs import RunStore
from dml_core.services.lessons import LESSONS, lesson_configs, lesson_run_ids, run_lesson
from pages.ui import POLL_OTHERS_S

ROOT = Path(__file__).resolve().parents[1]


def test_every_lesson_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "lessons.py"), default_timeout=60).run()
    assert not at.exception
    labels = [e.label for e in at.expander]
    for lesson in LESSONS.values():
        assert lesson.title in labels
    assert len([b for b in at.button if "Run this lesson" in b.label]) == len(LESSONS)


def test_finished_lesson_runs_show_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    result = run_lesson(LESSONS["histogram_overlap"], RunStore(runs), scale=0.3)
    assert result.holds, result.message
    monkeypatch.setenv("DML_RUNS_DIR", str(runs))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(runs))
    at = AppTest.from_file(str(ROOT / "pages" / "lessons.py"), default_timeout=60).run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"The claim holds: {result.message}"]
    assert not at.warning


def test_the_page_refreshes_only_while_a_lesson_run_is_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open Lessons page polls (``st.fragment(run_every=...)``) only while a lesson trains.

    Catches: the page refreshing forever (``run_every`` fixed at import, as before: every open
    tab cost the server and its browser CPU each 2 s), and a page that never refreshes while
    its runs train (the verdict would not appear).
    """
    runs = tmp_path / "runs"
    monkeypatch.setenv("DML_RUNS_DIR", str(runs))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(runs))
    asked: list[float | None] = []
    real = streamlit.fragment

    def recording(func=None, *, run_every=None):
        asked.append(run_every)
        return real(func, run_every=run_every)

    monkeypatch.setattr(streamlit, "fragment", recording)
    at = AppTest.from_file(str(ROOT / "pages" / "lessons.py"), default_timeout=60).run()
    assert not at.exception
    assert asked == [None]
    lesson = LESSONS["histogram_overlap"]
    store = RunStore(runs)
    for run_id, cfg in zip(lesson_run_ids(lesson), lesson_configs(lesson), strict=True):
        store.create(cfg, run_id)  # queued by this living process, as a launch leaves them
    at.run()
    assert not at.exception
    assert asked == [None, POLL_OTHERS_S]
    assert [i.value for i in at.info if "Training" in i.value]
