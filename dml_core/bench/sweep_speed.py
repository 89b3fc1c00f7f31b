"""Sweep speed: N digits runs on a W-worker local Ray cluster against the same runs in a row.

Both sides run in one process, with one torch thread per run.

``python -m dml_core bench sweep [--runs 8] [--steps 300] [--workers 2] [--json]`` (or
``python -m dml_core.bench.sweep_speed``)

The runs are one sweep cell (the default config, ``--steps``) over ``--runs`` seeds. The
sequential side is the local executor with one worker; the Ray side starts a local instance
with ``--workers`` CPUs, warms its workers (they import torch and dml_core once, as the
standing workers of a cluster have), then times the same sweep. Both sides train, save every
snapshot and checkpoint and run the final evaluation, and their MAP@R must agree run by run
(training is deterministic for a seed). The ratio is Ray time / sequential time; the issue's
target with 2 workers on 2 cores is <= 0.6.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dml_core.config import make_config
from dml_core.runs import RunStore
from dml_core.services.sweep_runner import LocalExecutor, SweepRunner
from dml_core.sweeps import SweepStore, build_sweep, progress


def _timed_sweep(store: RunStore, steps: int, runs: int, executor: Any) -> tuple[float, list]:
    """Save a sweep of ``runs`` seeds and train it on ``executor``; (seconds, MAP@R per run)."""
    sweep = build_sweep(make_config(steps=steps, device="cpu"), [], runs)
    SweepStore(store).save(sweep)
    start = time.perf_counter()
    SweepRunner(store, sweep, executor).run()
    seconds = time.perf_counter() - start
    return seconds, progress(store, sweep)["map_at_r"].tolist()


def _warm_up(workers: int) -> float:
    """Have each Ray worker import what a run needs; returns the seconds it took."""
    import ray

    @ray.remote(num_cpus=1)
    def warm(until: float) -> int:
        import dml_core.services.ray_backend  # noqa: F401  # torch, the trainer, the store

        time.sleep(max(0.0, until - time.time()))  # hold the CPU so each worker gets one
        return os.getpid()

    start = time.perf_counter()
    pids = ray.get([warm.remote(time.time() + 1.0) for _ in range(workers)])
    if len(set(pids)) < workers:
        print(f"warm-up reached {len(set(pids))} of {workers} workers", file=sys.stderr)
    return time.perf_counter() - start - 1.0


def run_sweep_speed(runs: int = 8, steps: int = 300, workers: int = 2) -> dict[str, Any]:
    """Time the sweep both ways; the result as one JSON-ready dict."""
    import ray

    from dml_core.services.ray_backend import RayExecutor

    root = Path(tempfile.mkdtemp(prefix="dml-sweep-speed-"))
    load_before = os.getloadavg()
    try:
        local = RunStore(root / "sequential")
        sequential_s, seq_scores = _timed_sweep(local, steps, runs, LocalExecutor(local, 1, 1))
        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        cluster_start_s = time.perf_counter() - start
        try:
            warm_up_s = _warm_up(workers)
            store = RunStore(root / "ray")
            ray_s, ray_scores = _timed_sweep(store, steps, runs, RayExecutor(store))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "runs": runs,
        "steps": steps,
        "workers": workers,
        "sequential_s": round(sequential_s, 2),
        "ray_s": round(ray_s, 2),
        "ratio": round(ray_s / sequential_s, 3),
        "cluster_start_s": round(cluster_start_s, 2),
        "warm_up_s": round(warm_up_s, 2),
        "ratio_with_warm_up": round((ray_s + warm_up_s) / sequential_s, 3),
        "map_at_r_equal": seq_scores == ray_scores,
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "ray": ray.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints a summary, or one JSON object with ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m dml_core bench sweep")
    parser.add_argument("--runs", type=int, default=8, help="runs (seeds) in the sweep")
    parser.add_argument("--steps", type=int, default=300, help="digits steps per run")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the Ray instance")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run_sweep_speed(args.runs, args.steps, args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.runs} runs x {args.steps} steps: one after another {result['sequential_s']} s, "
            f"Ray with {args.workers} workers {result['ray_s']} s: ratio {result['ratio']} "
            f"({result['ratio_with_warm_up']} with the workers' warm-up); MAP@R equal: "
            f"{result['map_at_r_equal']}; load {result['load_before']} -> {result['load_after']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
