"""Sweep speed: N digits runs on a W-worker local Ray cluster against the same runs in a row.

Both sides run in one process, with one torch thread per run.

``python -m dml_core bench sweep [--runs 8] [--steps 300] [--workers 2] [--repeats 1] [--json]``
(or ``python -m dml_core.bench.sweep_speed``)

The runs are one sweep cell (the default config, ``--steps``) over ``--runs`` seeds. The
sequential side is the local executor with one worker; the Ray side starts a local instance
with ``--workers`` CPUs, then times the same sweep. Each side's processes are warm before
the timing, as the standing processes of a server or a cluster are: this process and each
Ray worker train one tiny throwaway run first (``warm_process``: the lazy imports, the digits
arrays in the process's cache). Both sides train, save every snapshot and checkpoint and run
the final evaluation, and their MAP@R must agree run by run (training is deterministic for a
seed). The ratio is Ray time / sequential time; the issue's target with 2 workers on 2 cores
is <= 0.6. The Ray executor's start (its channel actor) is timed apart, as the cluster's is.
``driver_cpu_s`` is the CPU this process (the driver: it replays every record onto the run
store) used during a Ray sweep: CPU taken from the workers, and less noisy than the ratio.
``ratio_floor`` is the best ratio that any executor could reach on this machine: one run
timed alone on a Ray worker, then ``--workers`` runs at once (``contention``), as plain tasks
without the run store or the driver. Runs side by side can each be slower than one alone
(they share caches and memory bandwidth), so the floor can be above 1 / workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dml_core.config import RunConfig, make_config
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


def _train_one(cfg: RunConfig) -> float:
    """Train and save ``cfg`` here, on one torch thread, into a throwaway store; its seconds."""
    import torch

    from dml_core.services.jobs import train_and_save

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="dml-bench-run-") as folder:
            store = RunStore(Path(folder))
            store.create(cfg, "run")
            start = time.perf_counter()
            train_and_save(cfg, store, "run")
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def warm_process(steps: int = 2) -> int:
    """Train one tiny throwaway run here, as a standing process has trained runs before.

    It imports what a run imports lazily (torch's optimizer machinery, scikit-learn's digits,
    the final evaluation's metrics) and leaves the digits arrays in this process's cache.
    Both sides do it before they are timed: the benchmark's own process, and each Ray worker.

    Returns:
        This process's pid.
    """
    _train_one(make_config(steps=steps, snapshot_every=steps, device="cpu"))
    return os.getpid()


def time_one_run(steps: int, seed: int) -> float:
    """Seconds to train and save one sweep run (default config, ``steps``, ``seed``) here."""
    return _train_one(make_config(steps=steps, seed=seed, device="cpu"))


def ratio_floor(alone_s: float, together_s: Sequence[float], workers: int) -> float:
    """The least Ray time / sequential time: ``workers`` runs at once, each as slow as measured.

    Sequentially N runs take N x ``alone_s``; on ``workers`` workers, N / workers waves of runs
    that each take the mean of ``together_s``.
    """
    return statistics.fmean(together_s) / (workers * alone_s)


def contention(workers: int, steps: int, repeats: int = 1) -> dict[str, float]:
    """One run alone on a Ray worker, then ``workers`` runs at once: medians and the floor.

    Plain Ray tasks (``time_one_run``): no channel, no driver writes, so what separates the
    floor from the sweep's ratio is the executor's own cost.
    """
    import ray

    one = ray.remote(num_cpus=1)(time_one_run)
    alone, together = [], []
    for i in range(repeats):
        alone.append(ray.get(one.remote(steps, 100 + i)))
        together.append(ray.get([one.remote(steps, 200 + w) for w in range(workers)]))
    alone_s = round(statistics.median(alone), 3)
    together_s = [round(statistics.median(t[w] for t in together), 3) for w in range(workers)]
    floor = ratio_floor(alone_s, together_s, workers)  # of the figures reported
    return {"alone_s": alone_s, "together_s": together_s, "ratio_floor": round(floor, 3)}


def _warm_up(workers: int) -> float:
    """Have each Ray worker train a tiny run (``warm_process``); returns the seconds it took."""
    import ray

    @ray.remote(num_cpus=1)
    def warm(until: float) -> int:
        pid = warm_process()
        time.sleep(max(0.0, until - time.time()))  # hold the CPU so each worker gets one
        return pid

    start = time.perf_counter()
    pids = ray.get([warm.remote(time.time() + 1.0) for _ in range(workers)])
    if len(set(pids)) < workers:
        print(f"warm-up reached {len(set(pids))} of {workers} workers", file=sys.stderr)
    return max(0.0, time.perf_counter() - start - 1.0)


def run_sweep_speed(
    runs: int = 8, steps: int = 300, workers: int = 2, repeats: int = 1
) -> dict[str, Any]:
    """Time the sweep both ways, ``repeats`` times in turn; the result as a JSON-ready dict.

    The first sequential sweep runs before Ray starts; later ones run beside the idle Ray
    instance (its daemons took about 4 % of one core here). ``ratio`` is the median of the
    repeats' ratios, each a Ray sweep over the sequential sweep just before it, so a machine
    whose load changes meanwhile (other users) shifts both sides of a ratio alike.
    """
    import ray

    from dml_core.services.ray_backend import RayExecutor

    root = Path(tempfile.mkdtemp(prefix="dml-sweep-speed-"))
    load_before = os.getloadavg()
    seq_s: list[float] = []
    ray_s: list[float] = []
    executor_s: list[float] = []
    driver_cpu_s: list[float] = []
    equal = True

    def sequential(i: int) -> list:
        local = RunStore(root / f"sequential-{i}")
        seconds, scores = _timed_sweep(local, steps, runs, LocalExecutor(local, 1, 1))
        seq_s.append(seconds)
        return scores

    try:
        start = time.perf_counter()
        warm_process()
        sequential_warm_up_s = time.perf_counter() - start
        first_scores = sequential(0)
        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        cluster_start_s = time.perf_counter() - start
        try:
            warm_up_s = _warm_up(workers)
            floor = contention(workers, steps, repeats)
            for i in range(repeats):
                seq_scores = sequential(i) if i else first_scores
                store = RunStore(root / f"ray-{i}")
                start = time.perf_counter()
                executor = RayExecutor(store)  # its channel actor's process starts
                executor_s.append(time.perf_counter() - start)
                used = resource.getrusage(resource.RUSAGE_SELF)
                seconds, ray_scores = _timed_sweep(store, steps, runs, executor)
                now = resource.getrusage(resource.RUSAGE_SELF)
                ray_s.append(seconds)
                driver_cpu_s.append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
                equal = equal and seq_scores == ray_scores
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [r / s for r, s in zip(ray_s, seq_s, strict=True)]
    with_start = [(r + e) / s for r, e, s in zip(ray_s, executor_s, seq_s, strict=True)]
    return {
        "runs": runs,
        "steps": steps,
        "workers": workers,
        "repeats": repeats,
        "sequential_s": round(statistics.median(seq_s), 2),
        "ray_s": round(statistics.median(ray_s), 2),
        "ray_s_per_run": round(statistics.median(ray_s) / runs, 3),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_floor": floor["ratio_floor"],
        "contention": floor,
        "ratios": [round(r, 3) for r in ratios],
        "cluster_start_s": round(cluster_start_s, 2),
        "executor_start_s": round(statistics.median(executor_s), 2),
        "driver_cpu_s": round(statistics.median(driver_cpu_s), 2),
        "ratio_with_executor_start": round(statistics.median(with_start), 3),
        "warm_up_s": round(warm_up_s, 2),
        "sequential_warm_up_s": round(sequential_warm_up_s, 2),
        "ratio_with_warm_up": round(
            (ray_s[0] + warm_up_s + executor_s[0]) / (seq_s[0] + sequential_warm_up_s), 3
        ),
        "map_at_r_equal": equal,
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
    parser.add_argument(
        "--repeats", type=int, default=1, help="sequential and Ray sweeps, in turn (median)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run_sweep_speed(args.runs, args.steps, args.workers, max(1, args.repeats))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.runs} runs x {args.steps} steps: one after another {result['sequential_s']} s, "
            f"Ray with {args.workers} workers {result['ray_s']} s: ratio {result['ratio']} "
            f"(floor on this machine {result['ratio_floor']}) "
            f"({result['ratio_with_warm_up']} with the workers' warm-up); MAP@R equal: "
            f"{result['map_at_r_equal']}; load {result['load_before']} -> {result['load_after']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
