"""What a page shows of one run, and which of Pause / Resume / Stop it offers: ``RunView``.

Built from the run's live job when this process trains it, else from disk (status.json), so
the same rules hold for a run of this session, one started by another session or the CLI,
and one interrupted by a restart. Pages build a fresh view on every poll and draw from it;
the rules live here, where they are tested, and not in widget code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dml_core.runs import ACTIVE, FINAL, RESUMABLE, RunState, RunStore
from dml_core.services.jobs import JobManager, Phase
from dml_core.services.projection_worker import ProjectionWorker

FigureNews = tuple[int, int | None, int | None, RunState]
"""What the live figures of a run depend on: snapshots saved, newest one, newest layout, state."""


@dataclass(frozen=True)
class RunView:
    """One run's state for display, with the button rules as properties.

    Attributes:
        run_id: the run.
        state: where the run is in its life.
        phase: training or final evaluation (meaningful while running).
        step: optimiser steps done.
        steps: steps the run will take.
        message: what the run says (an error, an interruption, the final evaluation).
        device: where it trains.
        queue_position: 1-based place in the job queue, or None.
        samples_per_s: the recent training speed (nan when not measured or not training).
        eta_s: wall-clock seconds to the last step at the recent speed, or None.
        phase_s: seconds into the final evaluation, or None in any other phase.
        live: a job of this process drives the run (it can be paused or stopped here).
        has_checkpoint: a training state is saved (an ended run can be resumed from it).
    """

    run_id: str
    state: RunState
    phase: Phase = Phase.TRAINING
    step: int = 0
    steps: int = 0
    message: str = ""
    device: str = ""
    queue_position: int | None = None
    samples_per_s: float = math.nan
    eta_s: float | None = None
    phase_s: float | None = None
    live: bool = False
    has_checkpoint: bool = False

    @property
    def active(self) -> bool:
        """Queued, starting, running or paused: the page keeps polling."""
        return self.state in ACTIVE

    @property
    def training(self) -> bool:
        """Running the training steps (not waiting, paused or in the final evaluation)."""
        return self.live and self.state is RunState.RUNNING and self.phase is Phase.TRAINING

    @property
    def can_pause(self) -> bool:
        """Pause: only while a job here is taking training steps."""
        return self.training

    @property
    def can_resume(self) -> bool:
        """Resume: a paused job here, or an interrupted or stopped run with a checkpoint."""
        if self.live:
            return self.state is RunState.PAUSED
        return self.state in RESUMABLE and self.has_checkpoint

    @property
    def can_stop(self) -> bool:
        """Stop: a job here that is queued, starting, running its steps or paused.

        The final evaluation is one call that cannot be interrupted, so Stop is off then.
        """
        return self.live and self.active and self.phase is Phase.TRAINING

    @property
    def is_error(self) -> bool:
        """The run ended in an error (its message says which)."""
        return self.state in (RunState.FAILED, RunState.DIVERGED)

    @property
    def fraction(self) -> float:
        """Share of the steps done, in [0, 1], for a progress bar."""
        return min(max(self.step / max(self.steps, 1), 0.0), 1.0)

    @property
    def rate_text(self) -> str:
        """``"1,234 samples/s"``, or "" when not measured."""
        ok = math.isfinite(self.samples_per_s) and self.samples_per_s > 0
        return f"{self.samples_per_s:,.0f} samples/s" if ok else ""

    @property
    def progress_text(self) -> str:
        """One line: state (queue place), step or evaluation time, speed, ETA, device."""
        queued = f" (position {self.queue_position} in the queue)" if self.queue_position else ""
        if self.phase is Phase.FINAL_EVALUATION and self.state is RunState.RUNNING:
            seconds = f" · {self.phase_s:.0f} s" if self.phase_s is not None else ""
            where = f"step {self.step}/{self.steps} done · final evaluation{seconds}"
        else:
            where = f"step {self.step}/{self.steps}"
        eta = f"ETA {self.eta_s:.0f} s" if self.eta_s is not None else ""
        parts = (f"{self.state}{queued}", where, self.rate_text, eta, self.device)
        return " · ".join(p for p in parts if p)


def run_view(store: RunStore, manager: JobManager, run_id: str) -> RunView:
    """The view of ``run_id``: from its job in ``manager`` while one runs, else from disk."""
    job = manager.get(run_id)
    has_checkpoint = store.has_checkpoint(run_id)
    progress = job.progress() if job is not None else None
    if progress is not None and progress.state not in FINAL:
        evaluating = progress.phase is Phase.FINAL_EVALUATION
        training = progress.state is RunState.RUNNING and not evaluating
        speed = progress.steps_per_s * job.cfg.batch_size if training else math.nan
        return RunView(
            run_id=run_id,
            state=progress.state,
            phase=progress.phase,
            step=progress.step,
            steps=progress.steps,
            message=progress.message,
            device=progress.device,
            queue_position=manager.queue_position(run_id),
            samples_per_s=speed,
            eta_s=progress.eta_s if training and math.isfinite(progress.eta_s) else None,
            phase_s=progress.phase_s if evaluating else None,
            live=True,
            has_checkpoint=has_checkpoint,
        )
    # a job that ended has saved its final state first: disk is up to date
    status = store.status(run_id)
    state = status.get("state")
    message = status.get("message", "")
    if not isinstance(state, RunState):
        state = RunState.INTERRUPTED
        message = message or "This run has no readable state: its start was interrupted."
    phase = Phase.TRAINING
    if state is RunState.RUNNING and status.get("phase") == Phase.FINAL_EVALUATION:
        phase = Phase.FINAL_EVALUATION  # trained by another process
    return RunView(
        run_id=run_id,
        state=state,
        phase=phase,
        step=int(status.get("step", 0)),
        steps=store.config(run_id).steps,
        message=message,
        device=status.get("device", ""),
        has_checkpoint=has_checkpoint,
    )


def figure_news(
    store: RunStore, layouts: ProjectionWorker, run_id: str, method: str, state: RunState
) -> FigureNews:
    """What can change the live figures of ``run_id`` while a page shows them.

    The number of snapshots saved and the newest step (a new one is drawn at once, or joins
    the scrubber), the newest layout ``layouts`` has computed with ``method`` (UMAP replaces
    its PCA stand-in; "direct" computes none), and the run's state (final metrics appear when
    it finishes). A page stores this when it draws and compares it on every poll: equal means
    that redrawing would show the same figures.
    """
    steps = store.snapshot_steps(run_id)
    latest = layouts.latest(run_id, method) if method != "direct" else None
    return (len(steps), steps[-1] if steps else None, latest and latest[0], state)


MIN_REST_S = 1.0  # the least time between two full redraws of the live figures
# ... while the run trains: each redraw re-renders every figure in the browser, which often
# shares the cores with the training (bench app on 2 cores: 4 s instead of 1 s took the
# browser from 33.8 to 24.4 CPU seconds and training from 1,119 to 1,306 samples/s)
LIVE_REST_S = 4.0
# ... and the longest a new snapshot waits for its own layout while the run trains: the
# default FashionMNIST run's UMAP layouts (2,000 points) came about 1.5 s after their
# snapshot on 2 cores busy training; 8 s held a small run's figures back (an e2e test of a
# live run took 50 s instead of 36 s before the wait, and 40 s with 3 s)
LAYOUT_WAIT_S = 3.0


def awaits_layout(now: FigureNews, method: str) -> bool:
    """Whether the newest snapshot in ``now`` has no ``method`` layout yet ("direct": none due)."""
    return method != "direct" and now[1] is not None and now[2] != now[1]


def redraw_due(
    now: FigureNews,
    drawn: FigureNews | None,
    drawn_at: float,
    draw_s: float,
    clock: float,
    waiting_since: float | None = None,
) -> bool:
    """Whether a page should redraw its live figures now, for the news ``now``.

    Nothing new (``now == drawn``): no. A new state (the run ended, paused, resumed): at once,
    so a finished run shows its final metrics. New snapshots or layouts only: once the page
    has rested since its last draw (ended at ``drawn_at``) as long as that draw took
    (``draw_s``), and at least ``LIVE_REST_S`` while the run trains (``MIN_REST_S`` once it
    has ended and only layouts arrive). On a loaded machine a full draw takes seconds;
    drawn back to back, each new snapshot would start the next one, and the progress line,
    the buttons and the training itself would get no CPU. The figures then skip snapshots,
    never show a wrong one: each says which snapshot it is.

    While the run trains, a new snapshot also waits for its own layout (``waiting_since``
    set), for at most ``LAYOUT_WAIT_S``: it is then drawn once, every figure at the same
    step, instead of once beside the previous step's layout and again when its own arrives.
    Each draw re-renders every figure in the browser, about 3 CPU-s on 2 cores busy
    training: the default FashionMNIST ConvNet run went from about 12 draws to 8. The first
    snapshot is drawn at once, beside its PCA stand-in.

    Args:
        now: ``figure_news`` now.
        drawn: the news the shown figures were drawn from (None: nothing drawn yet).
        drawn_at: when that draw ended, on the clock of ``clock``.
        draw_s: how long that draw took, in seconds.
        clock: the time now (e.g. ``time.monotonic()``).
        waiting_since: when the page first saw the news it waits on, while the newest
            snapshot has no layout yet (``awaits_layout``); None when nothing is awaited.
    """
    if now == drawn:
        return False
    if drawn is None or now[-1] != drawn[-1]:
        return True
    running = now[-1] is RunState.RUNNING
    waiting = waiting_since is not None and clock - waiting_since < LAYOUT_WAIT_S
    if running and drawn[1] is not None and waiting:
        return False
    rest = LIVE_REST_S if running else MIN_REST_S
    return clock - drawn_at >= max(rest, draw_s)
