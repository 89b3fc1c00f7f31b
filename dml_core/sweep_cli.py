"""``python -m dml_core sweep``: a grid of runs over seeds, on this machine or a Ray cluster.

It takes the ``train`` flags (the base config) plus ``--grid NAME=V1,V2,...`` (repeatable),
``--seeds N``, ``--backend local|ray``, ``--ray-address`` and ``--json``. The sweep is saved
beside its runs (``sweeps.SweepStore``) before anything trains; ``--resume SWEEP`` trains
what it is missing. Results go to stdout (a table, or one JSON object), progress to stderr.
Exit status: 0 every run finished (or the sweep was stopped with Ctrl-C); 1 a run failed,
diverged or was interrupted; 2 bad arguments, one line naming the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from dml_core.cli import (
    FLAG_FIELDS,
    Parser,
    _data_flags,
    _key_value,
    add_data_flags,
    check_data,
    config_from_args,
)
from dml_core.config import RunConfig, config_for_data
from dml_core.data import DatasetError
from dml_core.errors import ConfigError, allowed_values
from dml_core.runs import RunState, RunStore
from dml_core.services.sweep_runner import BACKENDS, SweepRunner, make_executor
from dml_core.sweeps import (
    MAX_RUNS,
    Sweep,
    SweepState,
    SweepStore,
    build_sweep,
    cell_label,
    cell_results,
    parse_axis,
    progress,
)

RAY_MISSING = "The ray backend needs Ray: pip install -r requirements-ray.txt."


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand (the ``train`` flags plus the grid's) to ``subparsers``."""
    sweep = subparsers.add_parser("sweep", help="train a grid of runs over seeds (local or Ray)")
    fields = RunConfig.model_fields
    for flag in FLAG_FIELDS:  # the train flags: the base config of every run
        field = fields[flag]
        kind = field.annotation if field.annotation in (int, float) else str
        help_text = (
            f"{field.description} ({allowed_values(RunConfig, flag)}; default {field.default})"
        )
        sweep.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=help_text)
    sweep.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    add_data_flags(sweep)  # how a user's images are read (--dataset PATH)
    sweep.add_argument("--margin", type=float, help="the loss's margin, and the miner's")
    for side in ("loss", "miner"):
        sweep.add_argument(
            f"--{side}-param", type=_key_value, action="append", default=[], metavar="NAME=VALUE"
        )
    sweep.add_argument("--no-final-eval", action="store_true", help="skip the final evaluation")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="a grid axis (repeatable): a run setting (loss, miner, embedding_dim, lr, ...), a "
        "loss or miner parameter by name (margin), or loss.NAME / miner.NAME",
    )
    sweep.add_argument("--seeds", type=int, default=1, help="runs per cell (seeds seed, seed+1..)")
    sweep.add_argument("--backend", choices=BACKENDS, default="local", help="default: local")
    sweep.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="a Ray cluster (e.g. auto, HOST:6379); default: $DML_RAY_ADDRESS, else start a "
        "local Ray instance",
    )
    sweep.add_argument(
        "--workers", type=int, default=1, help="local backend: runs trained at once (default 1)"
    )
    sweep.add_argument(
        "--num-cpus",
        type=float,
        help="CPUs (and torch threads) per run; default: 1 on Ray, torch's own locally",
    )
    sweep.add_argument(
        "--num-gpus", type=float, help="Ray: GPUs per run, fractional (default 0.25 with GPUs)"
    )
    sweep.add_argument("--yes", action="store_true", help=f"allow more than {MAX_RUNS} runs")
    sweep.add_argument(
        "--resume", metavar="SWEEP", help="train the missing runs of a saved sweep (its id)"
    )
    sweep.add_argument(
        "--runs", "--out", dest="runs", default="runs", metavar="DIR", help="runs directory"
    )
    sweep.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return sweep


def _given_run_flags(args: argparse.Namespace) -> list[str]:
    given = [f"--{f.replace('_', '-')}" for f in FLAG_FIELDS if getattr(args, f) is not None]
    given += [f"--{f.replace('_', '-')}" for f in _data_flags(args)]
    extra = args.margin is not None or args.loss_param or args.miner_param or args.grid
    return given + (["the grid and parameter flags"] if extra else [])


def prepare(args: argparse.Namespace, store: RunStore) -> Sweep:
    """The sweep to run: a new one from the flags (not saved yet), or ``--resume``'s.

    Every distinct config is checked against its dataset, so a bad grid is refused before
    anything is on disk.
    """
    sweeps = SweepStore(store)
    if args.resume is not None:
        if given := _given_run_flags(args):
            raise ConfigError(f"--resume continues a sweep with its saved grid; drop {given[0]}.")
        sweep = sweeps.load(args.resume)
    else:
        axes = [parse_axis(text) for text in args.grid]
        base = check_data(config_from_args(args))  # P, K and net not given fit a user's data
        sweep = build_sweep(base, axes, args.seeds, yes=args.yes)
    for cfg in {sweep.config(run).model_dump_json(): sweep.config(run) for run in sweep.runs}:
        config_for_data(RunConfig.model_validate_json(cfg))  # every cell fits its data
    return sweep


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def result(store: RunStore, sweep: Sweep, backend: str, seconds: float) -> dict[str, Any]:
    """The ``--json`` object: backend, sweep_id, state, runs (one per run), cells (mean, sd)."""
    table = progress(store, sweep)
    cells = sweep.cells
    runs = [
        {
            "run_id": row.run_id,
            "cell": cells[row.cell],
            "seed": row.seed,
            "state": row.state,
            "config": sweep.config(run).model_dump(mode="json"),
            "precision_at_1": _finite(row.precision_at_1),
            "r_precision": _finite(row.r_precision),
            "map_at_r": _finite(row.map_at_r),
            "seconds": _finite(row.seconds),
            "worker": row.worker,
        }
        for run, row in zip(sweep.runs, table.itertuples(index=False), strict=True)
    ]
    summary = [
        {k: _finite(v) for k, v in row.items()}
        for row in cell_results(store, sweep).to_dict("records")
    ]
    return {
        "backend": backend,
        "sweep_id": sweep.sweep_id,
        "state": SweepStore(store).status(sweep.sweep_id)["state"],
        "runs_dir": str(store.root),
        "seconds": round(seconds, 2),
        "runs": runs,
        "cells": summary,
    }


def _report_ended(store: RunStore, sweep: Sweep, run_ids: list[str], counter: list[int]) -> None:
    by_id = {run.run_id: run for run in sweep.runs}
    for run_id in run_ids:
        counter[0] += 1
        status = store.status(run_id)
        final = status.get("final_metrics", {})
        score = f"MAP@R {final['map_at_r']:.4f}" if "map_at_r" in final else status.get("message")
        worker = status.get("worker") or {}
        where = f"{worker.get('host', '?')}:{worker.get('pid', '?')}"
        cell = cell_label(sweep.cells[by_id[run_id].cell]) or "base"
        print(
            f"[{counter[0]}] {run_id} ({cell}, seed {by_id[run_id].seed}) {status.get('state')}: "
            f"{score} in {status.get('seconds', math.nan):.1f} s on {where}",
            file=sys.stderr,
            flush=True,
        )


def train(args: argparse.Namespace, store: RunStore, sweep: Sweep) -> tuple[SweepRunner, float]:
    """Train the sweep's missing runs on ``args.backend``; the runner and the seconds taken."""
    try:
        executor = make_executor(
            args.backend,
            store,
            workers=args.workers,
            threads=None if args.num_cpus is None else max(1, int(args.num_cpus)),
            address=args.ray_address,
            num_cpus=1.0 if args.num_cpus is None else args.num_cpus,
            num_gpus=args.num_gpus,
        )
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise ConfigError(RAY_MISSING) from None
    if args.resume is None:  # saved once the backend is reachable
        SweepStore(store).save(sweep)
    counter = [0]
    runner = SweepRunner(
        store, sweep, executor, on_change=lambda ids: _report_ended(store, sweep, ids, counter)
    )
    print(
        f"Sweep {sweep.sweep_id}: {len(sweep.runs)} runs ({len(sweep.cells)} cells x "
        f"{len(sweep.seeds)} seeds) on {args.backend}, saved in {store.root}.",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    runner.start()
    try:
        while not runner.done:
            runner.join(0.25)
    except KeyboardInterrupt:
        runner.stop()
        runner.join()
    return runner, time.perf_counter() - start


def run_sweep(args: argparse.Namespace) -> int:
    """Build or load the sweep, train its missing runs, print the results."""
    store = RunStore(args.runs)
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its raylet's errors on stdout
        sweep = prepare(args, store)
        runner, seconds = train(args, store, sweep)
    out = result(store, sweep, args.backend, seconds)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"Sweep {sweep.sweep_id} {out['state']} in {seconds:.1f} s ({args.backend}).")
        for row in out["cells"]:
            mean, sd = row["map_at_r_mean"], row["map_at_r_sd"]
            text = "-" if mean is None else f"{mean:.4f}" + ("" if sd is None else f" +- {sd:.4f}")
            label = cell_label({a.name: row[a.name] for a in sweep.axes}) or "base"
            print(f"  {label:<40} MAP@R {text} ({row['finished']}/{row['runs']} finished)")
    bad = sorted({r["state"] for r in out["runs"]} - {RunState.FINISHED, RunState.STOPPED})
    if runner.error:
        print(f"python -m dml_core: error: the sweep failed: {runner.error}", file=sys.stderr)
        return 1
    if bad and out["state"] != SweepState.STOPPED:
        again = f"; resume with --resume {sweep.sweep_id}" if RunState.INTERRUPTED in bad else ""
        print(f"python -m dml_core: error: runs ended {', '.join(bad)}{again}.", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dml_core.sweep_cli [sweep flags]``: the subcommand on its own."""
    parser = Parser(prog="python -m dml_core")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_sweep_parser(sub)
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_sweep(args)
    except (ConfigError, DatasetError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
