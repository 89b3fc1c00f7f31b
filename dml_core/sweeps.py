"""Sweeps: a grid of runs over seeds, saved beside its runs and resumable.

A sweep is a base ``RunConfig``, axes (a parameter name and its values) and seeds. A *cell* is
one combination of the axes' values; every cell is trained once per seed, so a sweep has
``cells x seeds`` runs. Each run is an ordinary run of the ``RunStore`` with a fixed id
(``<sweep-id>-c<cell>-s<seed>``), so the sweep knows which runs exist, which finished and
which are missing, and any executor (``services.sweep_runner``) can fill the missing ones.

On disk, beside the runs::

    <runs>/sweeps/<sweep-id>/sweep.json    the definition: base config, axes, seeds, run ids
    <runs>/sweeps/<sweep-id>/status.json   state, backend, the driver's host and pid

Both are written atomically (``runs.atomic_write_json``). A sweep whose driver process died
while it was running reads ``incomplete``: ``missing_runs`` says what a resume trains.

Grid names: a run setting (``loss``, ``miner``, ``embedding_dim``, ``lr``, ...), a parameter
of the loss or the miner by name (``margin``; when both have it, one value drives both, as
``--margin`` does), or ``loss.NAME`` / ``miner.NAME`` for one side only. Values are checked by
``config.make_config``, the same validation as a single run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import secrets
import socket
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from dml_core import budgets
from dml_core.config import RunConfig, make_config
from dml_core.errors import ConfigError
from dml_core.registry import LOSSES, MINERS
from dml_core.runs import (
    ACTIVE,
    RESUMABLE,
    RUN_ID,
    RunState,
    RunStore,
    _process_alive,
    atomic_write_json,
)

SWEEP_DIR = "sweeps"
MAX_RUNS = 500
"""A grid with more runs than this is refused unless confirmed (``--yes``)."""
NOT_SWEPT = ("loss_params", "miner_params", "seed", "device")
"""RunConfig fields that are no grid axis (parameters go by name; seeds by ``--seeds``)."""
METRICS = ("precision_at_1", "r_precision", "map_at_r")
PENDING = "pending"
"""The state of a run the sweep has not created yet."""


class SweepState(StrEnum):
    """Where a sweep is: running, finished (every run ended), stopped, or incomplete."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    INCOMPLETE = "incomplete"


class Axis(BaseModel):
    """One grid axis: a parameter name and the values it takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    values: tuple[Any, ...]


class SweepRun(BaseModel):
    """One run of a sweep: its id, its cell (index into ``Sweep.cells``) and its seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run_id: str
    cell: int
    seed: int


class Sweep(BaseModel):
    """A grid of runs: base config, axes, seeds, and the id of every run."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sweep_id: str
    base: RunConfig
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    runs: tuple[SweepRun, ...]
    created: float

    @property
    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values, the first axis varying slowest."""
        names = [axis.name for axis in self.axes]
        return [dict(zip(names, combo, strict=True)) for combo in _products(self.axes)]

    def config(self, run: SweepRun) -> RunConfig:
        """The checked config of one run."""
        return cell_config(self.base, self.cells[run.cell], run.seed)


def _products(axes: tuple[Axis, ...]) -> list[tuple[Any, ...]]:
    return list(itertools.product(*(axis.values for axis in axes)))


def parse_value(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"16"`` -> 16, ``"true"`` -> True, ``"triplet"`` -> "triplet"."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_axis(text: str) -> Axis:
    """``"margin=0.1,0.3"`` -> ``Axis(name="margin", values=(0.1, 0.3))``."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    values = [parse_value(v.strip()) for v in raw.split(",") if v.strip()]
    if not sep or not name or not values:
        raise ConfigError(f"A grid axis is NAME=V1,V2,...; got {text!r}.")
    if len({repr(v) for v in values}) < len(values):
        raise ConfigError(f"The grid axis {name!r} repeats a value: {raw}.")
    return Axis(name=name, values=tuple(values))


def _losses(base: RunConfig, axes: tuple[Axis, ...]) -> list[str]:
    on_axis = [a.values for a in axes if a.name == "loss"]
    return [str(v) for v in on_axis[0]] if on_axis else [base.loss]


def _miners(base: RunConfig, axes: tuple[Axis, ...]) -> list[str]:
    on_axis = [a.values for a in axes if a.name == "miner"]
    return [str(v) for v in on_axis[0]] if on_axis else [base.miner]


def _params_of(registry: Any, names: list[str]) -> list[str]:
    fields = [f for n in names if n in registry for f in registry[n].params.model_fields]
    return list(dict.fromkeys(fields))


def check_axis_name(base: RunConfig, axes: tuple[Axis, ...], name: str) -> None:
    """Raise a one-line ConfigError unless ``name`` can be a grid axis."""
    if name == "seed":
        raise ConfigError("The seed is no grid axis: use --seeds N (N runs per cell).")
    fields = [f for f in RunConfig.model_fields if f not in NOT_SWEPT]
    loss_params = _params_of(LOSSES, _losses(base, axes))
    miner_params = _params_of(MINERS, _miners(base, axes))
    side, _, param = name.partition(".")
    if name in fields or name in loss_params or name in miner_params:
        return
    if (side == "loss" and param in loss_params) or (side == "miner" and param in miner_params):
        return
    raise ConfigError(
        f"The grid parameter {name!r} is unknown; choose a run setting ({', '.join(fields)}), "
        f"a loss parameter ({', '.join(loss_params) or 'none'}) or a miner parameter "
        f"({', '.join(miner_params) or 'none'}), optionally as loss.NAME or miner.NAME."
    )


def cell_config(base: RunConfig, cell: dict[str, Any], seed: int) -> RunConfig:
    """``base`` with the cell's values and ``seed``, checked by ``make_config``.

    A ``loss`` (``miner``) value brings that loss's (miner's) default parameters, as on
    Compare. A bare parameter name sets the loss's parameter and, when the cell's miner has
    one of the same name, the miner's too (one margin drives both, as ``--margin`` does;
    pytorch-metric-learning issue #466); ``loss.NAME`` or ``miner.NAME`` sets one side.
    """
    values = base.model_dump()
    if "loss" in cell:
        values |= {"loss": cell["loss"], "loss_params": {}}
    if "miner" in cell:
        values |= {"miner": cell["miner"], "miner_params": {}}
    loss_fields = LOSSES[values["loss"]].params.model_fields if values["loss"] in LOSSES else {}
    miner_fields = MINERS[values["miner"]].params.model_fields if values["miner"] in MINERS else {}
    for name, value in cell.items():
        side, _, param = name.partition(".")
        if name in ("loss", "miner"):
            continue
        if name in RunConfig.model_fields:
            values[name] = value
        elif side in ("loss", "miner") and param:
            values[f"{side}_params"] = {**values[f"{side}_params"], param: value}
        else:
            if name in loss_fields or name not in miner_fields:
                values["loss_params"] = {**values["loss_params"], name: value}
            if name in miner_fields:
                values["miner_params"] = {**values["miner_params"], name: value}
    return make_config(**{**values, "seed": seed})


def cell_label(cell: dict[str, Any]) -> str:
    """``{"margin": 0.1, "loss": "triplet"}`` -> ``"margin=0.1, loss=triplet"``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cell.items())


def new_sweep_id() -> str:
    """A fresh, sortable, unique id: ``sweep-20261123-154501-3fa2``."""
    return f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def build_sweep(
    base: RunConfig,
    axes: list[Axis] | tuple[Axis, ...],
    seeds: int,
    *,
    yes: bool = False,
    sweep_id: str | None = None,
) -> Sweep:
    """Check a grid and name its runs; every problem is a one-line ConfigError.

    Args:
        base: the config every run starts from (its seed is the first seed).
        axes: the grid axes (distinct names); none gives one cell, the base.
        seeds: runs per cell, seeds ``base.seed``, ``base.seed + 1``, ...
        yes: allow more than ``MAX_RUNS`` runs.
        sweep_id: the sweep's id (default: a new one).
    """
    axes = tuple(axes)
    names = [a.name for a in axes]
    if len(set(names)) < len(names):
        raise ConfigError(f"Each grid axis may be given once; got {', '.join(names)}.")
    if not 1 <= seeds <= 1000:
        raise ConfigError(f"The 'seeds' parameter of a sweep must be in [1, 1000]. Got {seeds}.")
    for axis in axes:
        check_axis_name(base, axes, axis.name)
        if not axis.values:
            raise ConfigError(f"The grid axis {axis.name!r} has no values: give at least one.")
    sweep_id = sweep_id or new_sweep_id()
    if not RUN_ID.match(f"{sweep_id}-c0000-s0000000000"):
        raise ConfigError(f"The sweep id {sweep_id!r} is invalid: use letters, digits, '-', '_'.")
    combos = _products(axes)
    total = len(combos) * seeds
    if total > MAX_RUNS and not yes:
        raise ConfigError(
            f"The grid has {total} runs ({len(combos)} cells x {seeds} seeds), more than "
            f"{MAX_RUNS}; pass --yes to launch it anyway."
        )
    seed_list = tuple(base.seed + i for i in range(seeds))
    configs = []
    for combo in combos:
        cell = dict(zip(names, combo, strict=True))
        try:
            configs.append(cell_config(base, cell, base.seed))
        except ConfigError as err:
            raise ConfigError(f"Grid cell {cell_label(cell)}: {err}") from None
    budgets.check(
        "sweep",
        runs=total,
        steps=max(c.steps for c in configs),
        P=max(c.classes_per_batch for c in configs),
        K=max(c.samples_per_class for c in configs),
    )
    runs = tuple(  # seed-major: every cell gets its first result early
        SweepRun(run_id=f"{sweep_id}-c{cell:03d}-s{seed}", cell=cell, seed=seed)
        for seed in seed_list
        for cell in range(len(combos))
    )
    return Sweep(
        sweep_id=sweep_id, base=base, axes=axes, seeds=seed_list, runs=runs, created=time.time()
    )


class SweepStore:
    """Sweeps on disk beside the runs of ``store`` (``<runs>/sweeps/<id>/``)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.root = Path(store.root) / SWEEP_DIR

    def path(self, sweep_id: str) -> Path:
        """Folder of one sweep (the id is checked first)."""
        if not isinstance(sweep_id, str) or not RUN_ID.match(sweep_id):
            raise ConfigError(f"The sweep id {sweep_id!r} is invalid.")
        return self.root / sweep_id

    def save(self, sweep: Sweep) -> None:
        """Write a new sweep's definition (atomically); never overwrites another sweep."""
        folder = self.path(sweep.sweep_id)
        if (folder / "sweep.json").exists():
            raise ConfigError(f"A sweep named {sweep.sweep_id!r} exists already.")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "sweep.json", sweep.model_dump(mode="json"))
        self.set_status(sweep.sweep_id, state=SweepState.INCOMPLETE)

    def load(self, sweep_id: str) -> Sweep:
        """A saved sweep (ConfigError when there is none)."""
        file = self.path(sweep_id) / "sweep.json"
        if not file.exists():
            raise ConfigError(f"There is no sweep named {sweep_id!r} in {self.store.root}.")
        return Sweep.model_validate_json(file.read_text())

    def list(self) -> list[str]:
        """Sweep ids, newest first."""
        if not self.root.is_dir():
            return []
        ids = [p.name for p in self.root.iterdir() if (p / "sweep.json").exists()]
        return sorted(ids, reverse=True)

    def set_status(self, sweep_id: str, **fields: Any) -> None:
        """Merge ``fields`` into the sweep's status.json (one driver writes it)."""
        file = self.path(sweep_id) / "status.json"
        status = json.loads(file.read_text()) if file.exists() else {}
        atomic_write_json(file, status | fields | {"updated": time.time()})

    def mark_running(self, sweep_id: str, backend: str) -> None:
        """Record that this process now drives the sweep on ``backend``."""
        host = socket.gethostname()
        self.set_status(
            sweep_id, state=SweepState.RUNNING, backend=backend, host=host, pid=os.getpid()
        )

    def status(self, sweep_id: str) -> dict[str, Any]:
        """The sweep's status; ``running`` with a dead driver (on this host) reads incomplete."""
        file = self.path(sweep_id) / "status.json"
        status = json.loads(file.read_text()) if file.exists() else {}
        state = SweepState(status.get("state", SweepState.INCOMPLETE))
        here = status.get("host") == socket.gethostname()
        if state is SweepState.RUNNING and here and not _process_alive(status.get("pid")):
            state = SweepState.INCOMPLETE
        return status | {"state": state}


def run_state(store: RunStore, run_id: str) -> RunState | str:
    """A sweep run's state: its ``RunState``, or ``PENDING`` when it was never created."""
    return store.status(run_id).get("state", PENDING) if store.exists(run_id) else PENDING


def missing_runs(store: RunStore, sweep: Sweep) -> list[tuple[SweepRun, bool]]:
    """What a (re)started sweep trains: ``(run, resume)`` pairs, in the sweep's order.

    Never created: trained from scratch. Interrupted or stopped with a checkpoint: resumed from
    it (``resume=True``); without a checkpoint: trained again from scratch. Finished, diverged
    or failed runs are results and stay; so do runs another live process is training.
    """
    todo = []
    for run in sweep.runs:
        state = run_state(store, run.run_id)
        if state == PENDING:
            todo.append((run, False))
        elif state in RESUMABLE:
            todo.append((run, store.has_checkpoint(run.run_id)))
    return todo


def progress(store: RunStore, sweep: Sweep) -> pd.DataFrame:
    """One row per run: what a page polls to show every cell's state and progress.

    Columns: run_id, cell, seed, the cell's values, state (a ``RunState`` value or
    ``PENDING``), step, steps, the final metrics, worker (host and pid) and seconds.
    """
    cells = sweep.cells
    steps = [cell_config(sweep.base, cell, sweep.base.seed).steps for cell in cells]
    rows = []
    for run in sweep.runs:
        status = store.status(run.run_id) if store.exists(run.run_id) else {}
        final = status.get("final_metrics", {})
        rows.append(
            {
                "run_id": run.run_id,
                "cell": run.cell,
                "seed": run.seed,
                **cells[run.cell],
                "state": str(status.get("state", PENDING)),
                "step": int(status.get("step", 0)),
                "steps": steps[run.cell],
                **{m: float(final.get(m, math.nan)) for m in METRICS},
                "worker": status.get("worker"),
                "seconds": float(status.get("seconds", math.nan)),
            }
        )
    return pd.DataFrame(rows)


def cell_results(store: RunStore, sweep: Sweep) -> pd.DataFrame:
    """One row per cell: the mean and spread of each final metric over the cell's seeds.

    Columns: cell, the cell's values, runs, finished, and ``<metric>_mean`` and
    ``<metric>_sd`` (sample standard deviation, ddof = 1; NaN below two finished runs) for
    ``precision_at_1``, ``r_precision`` and ``map_at_r``, over the finished runs.
    """
    table = progress(store, sweep)
    rows = []
    for cell, values in enumerate(sweep.cells):
        runs = table[table.cell == cell]
        done = runs[runs.state == RunState.FINISHED]
        row: dict[str, Any] = {"cell": cell, **values, "runs": len(runs), "finished": len(done)}
        for metric in METRICS:
            row[f"{metric}_mean"] = float(done[metric].mean()) if len(done) else math.nan
            row[f"{metric}_sd"] = float(done[metric].std(ddof=1)) if len(done) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_state(store: RunStore, sweep: Sweep, stopped: bool = False) -> SweepState:
    """The state a sweep ends in: finished when every run ended, else stopped or incomplete."""
    states = [run_state(store, r.run_id) for r in sweep.runs]
    if all(s not in ACTIVE and s not in RESUMABLE and s != PENDING for s in states):
        return SweepState.FINISHED
    return SweepState.STOPPED if stopped else SweepState.INCOMPLETE
