"""Each lesson's claim holds when its runs are trained at reduced size on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dml_core.runs import RunStore
from dml_core.services.lesson_checks import RunResult
from dml_core.services.lessons import (
    LESSONS,
    LessonResult,
    evaluate,
    latest_lesson_runs,
    lesson_configs,
    load_results,
    run_lesson,
)

SCALE = 0.3  # 30-60 steps per run: every claim was measured to hold at 0.3 and 1.0
_CACHE: dict[str, tuple[LessonResult, RunStore]] = {}


def trained(key: str, root: Path) -> tuple[LessonResult, RunStore]:
    """Train a lesson once per session (saved to a store), reused by the other tests."""
    if key not in _CACHE:
        store = RunStore(root / key)
        _CACHE[key] = (run_lesson(LESSONS[key], scale=SCALE, store=store), store)
    return _CACHE[key]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lessons")


def test_seven_lessons_in_order() -> None:
    assert len(LESSONS) == 7
    for lesson in LESSONS.values():
        assert lesson.text
        assert lesson.paper
        assert lesson.claim
        assert len(lesson.labels) == len(lesson.configs)
        assert all(p.startswith("pages/") for p in lesson.pages)


def test_scale_shortens_every_run() -> None:
    for lesson in LESSONS.values():
        full, short = lesson_configs(lesson), lesson_configs(lesson, SCALE)
        for a, b in zip(full, short, strict=True):
            assert b.steps == max(10, round(a.steps * SCALE)) < a.steps
            assert b.model_copy(update={"steps": 0, "snapshot_every": 1}) == a.model_copy(
                update={"steps": 0, "snapshot_every": 1}
            )
    with pytest.raises(ValueError, match="scale"):
        lesson_configs(LESSONS["circle"], 0)


@pytest.mark.parametrize("key", list(LESSONS))
def test_lesson_claim_holds(key: str, root: Path) -> None:
    result, store = trained(key, root)
    assert result.holds, result.message
    # the same verdict from the runs as saved and read back (what the app shows)
    ids = latest_lesson_runs(store, LESSONS[key])
    assert ids == [r.run_id for r in result.runs]
    assert all(store.status(r)["state"] == "finished" for r in ids)
    assert evaluate(LESSONS[key], load_results(store, ids)) == (result.holds, result.message)


def test_checks_measure_the_runs(root: Path) -> None:
    """Swap the roles of the runs: the checks must then fail (they are not constant)."""
    hard = trained("hard_mining_collapse", root)[0]
    assert not evaluate(hard.lesson, hard.runs[::-1])[0]
    hist = trained("histogram_overlap", root)[0]
    (run,) = hist.runs
    backwards = dataclasses.replace(run, snapshots=run.snapshots[::-1])
    assert not evaluate(hist.lesson, [backwards])[0]
    dims = trained("dimension", root)[0]
    assert not evaluate(dims.lesson, dims.runs[::-1])[0]
    assert not evaluate(dims.lesson, dims.runs[:2])[0]  # a missing run is never a pass


def swapped(runs: tuple[RunResult, ...]) -> list[RunResult]:
    """The runs' measurements rotated by one, so every run gets another's (two runs: swapped),
    each config left in its place (one run: its snapshots in reverse time order). A check that
    reads the runs by their role fails."""
    if len(runs) == 1:
        return [dataclasses.replace(runs[0], snapshots=runs[0].snapshots[::-1])]
    return [
        dataclasses.replace(run, snapshots=other.snapshots, final=other.final)
        for run, other in zip(runs, (*runs[1:], runs[0]), strict=True)
    ]


@pytest.mark.parametrize("key", list(LESSONS))
def test_check_fails_when_the_runs_are_swapped(key: str, root: Path) -> None:
    """Issue 12: every check measures which run did what, not only that runs exist."""
    result = trained(key, root)[0]
    assert result.holds, result.message
    holds, message = result.lesson.check(swapped(result.runs))
    assert not holds, f"the claim still holds with the runs swapped: {message}"


@pytest.mark.parametrize("key", list(LESSONS))
def test_lesson_text_shows_maths_not_latex_source(key: str) -> None:
    """Catches: S^{D-1} and sqrt(2) shown raw on the Lessons page."""
    lesson = LESSONS[key]
    shown = " ".join(str(v) for v in dataclasses.asdict(lesson).values() if isinstance(v, str))
    for raw in ("S^{", "sqrt(", "\\sqrt", "^{"):
        assert raw not in shown, (raw, shown)
