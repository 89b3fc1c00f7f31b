"""Each lesson's claim holds when its runs are trained at reduced size on CPU."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from dml_core.runs import RunState, RunStore
from dml_core.services.lesson_checks import RunResult, class_angles, hard_triplet_share
from dml_core.services.lessons import (
    LESSONS,
    LessonResult,
    evaluate,
    latest_lesson_runs,
    lesson_configs,
    lesson_run_ids,
    lesson_runs_active,
    load_results,
    run_lesson,
)
from dml_core.snapshot import Snapshot

SCALE = 0.3  # 30-105 steps per run: every claim was measured to hold at 0.3 and 1.0
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


def test_ten_lessons_in_order() -> None:
    assert len(LESSONS) == 10
    for number, lesson in enumerate(LESSONS.values(), start=1):
        assert lesson.title.startswith(f"{number}. ")
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
    (simclr,) = trained("label_free", root)[0].runs
    with_labels = simclr.config.model_copy(update={"supervision": "labels"})
    holds, message = LESSONS["label_free"].check([dataclasses.replace(simclr, config=with_labels)])
    assert not holds  # the same rise in MAP@R, but labels were seen
    assert "supervision: labels" in message
    margin = trained("angular_margin", root)[0]
    no_weights = dataclasses.replace(margin.runs[0].last, class_weights=None)
    arcface = dataclasses.replace(margin.runs[0], snapshots=(margin.runs[0].first, no_weights))
    assert LESSONS["angular_margin"].check([arcface, margin.runs[1]]) == (
        False,
        "A run saved no class weights, so the angle to them cannot be measured.",
    )


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


def _unit_row(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(v @ v))


def test_class_angles_match_a_direct_formula() -> None:
    """class_angles against arccos of cosines computed point by point.

    Catches (each tried): the class mean not renormalised (cosines shrink by its length < 1),
    the embeddings not normalised before the mean, one mean for all classes, the first
    centre of the class instead of the nearest, the farthest instead of the nearest.
    """
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 5)) * rng.uniform(0.2, 5.0, size=(60, 1))  # unequal lengths
    emb[:, 0] += 1.5  # classes share a direction, so a global mean differs from class means
    labels = rng.integers(0, 4, size=60)
    expected = []
    for x, y in zip(emb, labels, strict=True):
        total = sum(_unit_row(v) for v in emb[labels == y])
        expected.append(math.acos(max(-1.0, min(1.0, float(_unit_row(x) @ _unit_row(total))))))
    np.testing.assert_allclose(class_angles(emb, labels), expected, atol=1e-12)

    centres = rng.normal(size=(8, 5)) * 3.0  # two sub-centres per class, rows 2c and 2c + 1
    centre_labels = np.repeat(np.arange(4), 2)
    nearest = [
        min(
            math.acos(max(-1.0, min(1.0, float(_unit_row(x) @ _unit_row(w)))))
            for w, c in zip(centres, centre_labels, strict=True)
            if c == y
        )
        for x, y in zip(emb, labels, strict=True)
    ]
    got = class_angles(emb, labels, centres, centre_labels)
    np.testing.assert_allclose(got, nearest, atol=1e-12)
    with pytest.raises(ValueError, match="no centre"):
        class_angles(emb, labels, centres[:6], centre_labels[:6])  # class 3 has none


def _snapshot(emb: np.ndarray, labels: np.ndarray) -> Snapshot:
    empty = np.zeros(0, dtype=np.float32)
    return Snapshot(0, 0, 0.0, 0.0, 0.0, emb.astype(np.float32), labels, empty, empty)


def test_hard_triplet_share_counts_every_triplet() -> None:
    """The share of (a, p, n) with d(a,n) < d(a,p), against a loop over all triplets.

    Catches (each tried): a share of anchors instead of triplets, a total over all ordered
    triples instead of those with p in a's class and n outside it. The grid has exact ties,
    which must not count as hard.
    """
    rng = np.random.default_rng(1)
    emb = rng.integers(-2, 3, size=(24, 2)).astype(np.float64)  # a grid: many exact ties
    labels = np.repeat(np.arange(3), 8)
    hard = total = 0
    for a, p, n in itertools.permutations(range(len(emb)), 3):
        if labels[a] == labels[p] and labels[a] != labels[n]:
            total += 1
            hard += np.linalg.norm(emb[a] - emb[n]) < np.linalg.norm(emb[a] - emb[p])
    assert 0 < hard < total
    assert hard_triplet_share(_snapshot(emb, labels)) == pytest.approx(hard / total, abs=1e-12)


def test_lesson_runs_active_reads_each_lessons_newest_launch_only(tmp_path: Path) -> None:
    """What keeps the Lessons page refreshing: an active run in a lesson's newest launch.

    Catches (each tried): a check that always says yes (the page polled forever), one that
    reads every launch instead of the newest (an older launch's run keeps it polling), one
    that counts only RUNNING (a queued or paused lesson run would not refresh the page), and
    one that counts runs that belong to no lesson.
    """
    store = RunStore(tmp_path)
    lesson = LESSONS["histogram_overlap"]
    assert not lesson_runs_active(store)
    store.set_status(store.create(lesson_configs(lesson)[0], "my-run"), state=RunState.RUNNING)
    assert not lesson_runs_active(store)  # not a lesson's run
    older, newer = (
        lesson_run_ids(lesson, stamp) for stamp in ("20261130-090000", "20261201-090000")
    )
    for run_id, cfg in zip(older, lesson_configs(lesson), strict=True):
        store.create(cfg, run_id)  # queued, by this (living) process
    assert lesson_runs_active(store)
    for run_id, cfg in zip(newer, lesson_configs(lesson), strict=True):
        store.create(cfg, run_id)
        store.set_status(run_id, state=RunState.FINISHED)
    assert not lesson_runs_active(store)  # the older launch is no longer the one shown
    store.set_status(newer[-1], state=RunState.PAUSED)
    assert lesson_runs_active(store)
