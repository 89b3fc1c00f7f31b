"""What a training job shows while it runs.

Its phase (``Phase``), its recent speed (``StepRate``) and a copy of its state for display
(``Progress``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from dml_core.runs import RunState


class Phase(StrEnum):
    """What a running job is doing: the training steps, then the final evaluation."""

    TRAINING = "training"
    FINAL_EVALUATION = "final evaluation"


class StepRate:
    """The recent speed of a run in steps per wall-clock second, for its ETA.

    An exponential moving average over time of the rate measured between updates at least
    ``min_interval`` seconds apart: an interval of dt seconds gets the weight
    1 - exp(-dt / tau), so the estimate follows the last ``tau`` seconds or so (snapshots and
    other jobs sharing the machine included), not the mean since the start.

    Args:
        tau: time constant of the average, seconds.
        min_interval: shortest interval measured (shorter ones wait for the next update).
    """

    def __init__(self, tau: float = 5.0, min_interval: float = 0.25) -> None:
        self.tau, self.min_interval = tau, min_interval
        self.steps_per_s = math.nan
        self._mark: tuple[float, int] | None = None

    def restart(self, step: int, now: float) -> None:
        """Measure from ``(now, step)`` on, e.g. after a pause; the estimate so far is kept."""
        self._mark = (now, step)

    def update(self, step: int, now: float) -> None:
        """Record that ``step`` steps were done at time ``now`` (seconds)."""
        if self._mark is None:
            self._mark = (now, step)
            return
        then, done = self._mark
        dt = now - then
        if dt < self.min_interval:
            return
        rate = (step - done) / dt
        weight = 1.0 - math.exp(-dt / self.tau)
        old = self.steps_per_s
        self.steps_per_s = rate if math.isnan(old) else old + weight * (rate - old)
        self._mark = (now, step)

    def eta(self, steps_left: int) -> float:
        """Seconds for ``steps_left`` more steps at the recent rate (nan while unknown)."""
        return steps_left / self.steps_per_s if self.steps_per_s > 0 else math.nan


@dataclass(frozen=True)
class Progress:
    """A copy of a job's state for display.

    Attributes:
        samples_per_s: training throughput since the start (training time only).
        steps_per_s: the recent wall-clock rate (``StepRate``; nan until measured).
        eta_s: wall-clock seconds to the last step at the recent rate; nan when unknown or
            when the job is not training.
        phase_s: seconds since the current phase began (e.g. into the final evaluation).
    """

    run_id: str
    state: RunState
    phase: Phase
    step: int
    steps: int
    samples_per_s: float
    steps_per_s: float
    eta_s: float
    phase_s: float
    message: str
    device: str
    snapshots: int
