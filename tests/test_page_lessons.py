"""AppTest of the Lessons page: every lesson listed with its text and a run button."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.runs import RunStore
from dml_core.services.lessons import LESSONS, run_lesson

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
