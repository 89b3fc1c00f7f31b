r"""Lessons: one-click presets that reproduce a paper's claim on digits, with a check that it held.

Each :class:`Lesson` (the table is in ``lesson_catalogue``) names the runs to train
(``RunConfig`` overrides), says what to look for, cites the paper, and carries a ``check``
(``lesson_checks``) that measures the stated effect on the finished runs' snapshots and final
metrics. The Lessons page submits a lesson's runs as background jobs and judges them with
``load_results`` and ``evaluate`` once they have finished; ``run_lesson`` trains them one after
another in the calling thread (tests and scripts; the CLI has no lesson command). Both save
through ``jobs.train_and_save``. Every lesson runs in well under 2 minutes on 2 CPU cores at
``scale=1``; ``scale`` shortens the runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from dml_core.config import RunConfig, make_config
from dml_core.runs import ACTIVE, RunState, RunStore
from dml_core.services.lesson_catalogue import COMMON, LESSONS, Lesson
from dml_core.services.lesson_checks import RunResult

__all__ = [
    "COMMON",
    "LESSONS",
    "MIN_STEPS",
    "Lesson",
    "LessonResult",
    "evaluate",
    "latest_lesson_runs",
    "lesson_configs",
    "lesson_run_ids",
    "lesson_runs_active",
    "load_results",
    "run_lesson",
]

MIN_STEPS = 10


@dataclass(frozen=True)
class LessonResult:
    """The runs of a lesson and the verdict of its check."""

    lesson: Lesson
    runs: tuple[RunResult, ...]
    holds: bool
    message: str
    seconds: float


def lesson_configs(lesson: Lesson, scale: float = 1.0) -> list[RunConfig]:
    """The lesson's runs as checked configs; ``scale`` multiplies the steps (at least 10).

    Snapshots are taken about every quarter of the run, so each run has 5 or 6 of them.
    """
    if not scale > 0:
        raise ValueError(f"The 'scale' parameter of lesson_configs must be > 0. Got {scale}.")
    configs = []
    for overrides in lesson.configs:
        values = {**COMMON, **overrides}
        steps = max(MIN_STEPS, round(values["steps"] * scale))
        values.update(steps=steps, snapshot_every=max(1, steps // 4))
        configs.append(make_config(**values))
    return configs


def lesson_run_ids(lesson: Lesson, stamp: str | None = None) -> list[str]:
    """Run ids for one launch of a lesson: ``lesson-<key>-<stamp>-<i>``."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    key = lesson.key.replace("_", "-")
    return [f"lesson-{key}-{stamp}-{i}" for i in range(len(lesson.configs))]


def latest_lesson_runs(store: RunStore, lesson: Lesson) -> list[str]:
    """The run ids of the newest complete launch of ``lesson`` in ``store`` ([] if none)."""
    return _newest_launch(lesson, set(store.list()))


def _newest_launch(lesson: Lesson, saved: set[str]) -> list[str]:
    """``latest_lesson_runs`` among the run ids ``saved`` (one listing of the store).

    ``RunStore.list`` reads every run's status to sort them: listed once per lesson and once
    more per check, 10 lessons beside 222 runs took 4,462 status reads (0.1 s; now 244) for
    each ``lesson_runs_active``, which the Lessons page calls on every refresh.
    """
    prefix = f"lesson-{lesson.key.replace('_', '-')}-"
    n = len(lesson.configs)
    stamps = sorted(
        {r[len(prefix) :].rsplit("-", 1)[0] for r in saved if r.startswith(prefix)},
        reverse=True,
    )
    for stamp in stamps:
        ids = lesson_run_ids(lesson, stamp)
        if all(r in saved for r in ids) and len(ids) == n:
            return ids
    return []


def lesson_runs_active(store: RunStore) -> bool:
    """Whether any lesson's newest launch still has a run queued, starting, running or paused.

    The Lessons page refreshes only then: polled forever, an open page cost the server about
    0.04 CPU-s per second and its browser 0.14 (measured on 2 cores), for every student.
    """
    saved = set(store.list())
    return any(
        store.status(run_id).get("state") in ACTIVE
        for lesson in LESSONS.values()
        for run_id in _newest_launch(lesson, saved)
    )


def load_results(store: RunStore, run_ids: Sequence[str]) -> list[RunResult]:
    """Read finished runs back from the store (snapshots in step order, final metrics)."""
    results = []
    for run_id in run_ids:
        record = store.load(run_id)
        snaps = tuple(store.load_snapshot(run_id, s) for s in record.snapshot_steps)
        final = dict(record.status.get("final_metrics") or {})
        results.append(RunResult(record.config, snaps, final, run_id))
    return results


def evaluate(lesson: Lesson, results: Sequence[RunResult]) -> tuple[bool, str]:
    """The lesson's verdict on these runs; a run without snapshots cannot be judged."""
    if len(results) != len(lesson.configs) or any(len(r.snapshots) < 2 for r in results):
        return False, "Not every run of the lesson has finished with snapshots."
    return lesson.check(results)


def run_lesson(lesson: Lesson, store: RunStore, scale: float = 1.0) -> LessonResult:
    """Train the lesson's runs one after another in this thread and check the claim.

    Each run is trained and saved by ``jobs.train_and_save``, the path of the app's jobs,
    then read back from ``store`` and judged as the Lessons page judges it.

    Args:
        lesson: one of ``LESSONS``.
        store: where the runs are saved (normal runs: config, snapshots, checkpoint, final
            metrics, status).
        scale: multiplies each run's steps (tests use < 1).
    """
    from dml_core.services.jobs import train_and_save  # torch only when training

    start = time.perf_counter()
    ids = lesson_run_ids(lesson)
    ended = [
        train_and_save(cfg, store, store.create(cfg, run_id))
        for cfg, run_id in zip(lesson_configs(lesson, scale), ids, strict=True)
    ]
    runs = tuple(load_results(store, ids))
    unfinished = [f"{r} {s}" for r, s in zip(ids, ended, strict=True) if s is not RunState.FINISHED]
    if unfinished:
        holds, message = False, f"Not every run finished: {', '.join(unfinished)}."
    else:
        holds, message = evaluate(lesson, runs)
    return LessonResult(lesson, runs, holds, message, time.perf_counter() - start)
