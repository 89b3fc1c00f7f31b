"""Benchmark: P@1, R-Precision and MAP@R of a finished run's final evaluation, timed alone.

``python -m dml_core bench metrics [--run RUN_ID --runs DIR] [--repeats 3] [--threads 2]
[--json]``

The embeddings are those a run saved at its final evaluation (``RunStore.load_embeddings``):
the test set's queries against the training set's references, 10k x 60k on FashionMNIST.
Without ``--run`` a default FashionMNIST ConvNet run (the CLI's defaults, 300 steps) is
trained into a temporary folder first, so the command works on a fresh machine. Timed:
``metrics.retrieval_metrics`` without NMI (its k-means runs apart, see issue 14), best of
``--repeats``, with ``--threads`` torch threads, as wall-clock and CPU seconds of this
process. The first call is timed apart: it loads numba's compiled ranking kernel (or compiles
it once per machine, cached under the user's cache folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from dml_core import metrics
from dml_core.config import make_config
from dml_core.runs import RunEmbeddings, RunStore


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _default_run(folder: str) -> tuple[RunStore, str]:
    """Train the CLI's default FashionMNIST ConvNet run into ``folder``; its store and id."""
    from dml_core.services.jobs import train_and_save

    store = RunStore(folder)
    cfg = make_config(dataset="fashion-mnist", net="convnet")
    run_id = store.create(cfg)
    print(f"training {run_id} (FashionMNIST ConvNet, {cfg.steps} steps)…", file=sys.stderr)
    train_and_save(cfg, store, run_id)
    return store, run_id


def time_metrics(emb: RunEmbeddings, repeats: int) -> dict[str, Any]:
    """Seconds of the first call and the best of ``repeats`` (wall and CPU), and the metrics."""
    q, ql = torch.from_numpy(emb.query_emb), torch.from_numpy(emb.query_labels)
    r, rl = torch.from_numpy(emb.ref_emb), torch.from_numpy(emb.ref_labels)
    start = time.perf_counter()
    metrics.retrieval_metrics(q[:64], ql[:64], r, rl, with_nmi=False)
    first = time.perf_counter() - start
    walls, cpus, found = [], [], {}
    for _ in range(max(1, repeats)):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        found = metrics.retrieval_metrics(q, ql, r, rl, with_nmi=False)
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_seconds() - cpu)
    return {
        "queries": len(q),
        "references": len(r),
        "dim": int(q.shape[1]),
        "first_call_s": round(first, 3),
        "wall_s": round(min(walls), 3),
        "cpu_s": round(min(cpus), 3),
        "wall_s_all": [round(w, 3) for w in walls],
        "metrics": {k: float(v) for k, v in found.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``bench metrics``: prints a table, or one JSON object with ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m dml_core bench metrics", description=__doc__)
    parser.add_argument("--run", help="a finished run with saved embeddings (default: train one)")
    parser.add_argument("--runs", default="runs", help="the runs folder of --run")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (best one counts)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    previous = torch.get_num_threads()  # process-wide in effect: given back at the end
    torch.set_num_threads(args.threads)
    try:
        return _bench(args)
    finally:
        torch.set_num_threads(previous)


def _bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dml-bench-metrics-") as folder:
        if args.run:
            store, run_id = RunStore(args.runs), args.run
        else:
            store, run_id = _default_run(folder)
        emb = store.load_embeddings(run_id)
        if emb is None:
            print(f"The run {run_id} has no saved embeddings (it did not finish).", file=sys.stderr)
            return 2
        result = {
            "run": run_id,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            **time_metrics(emb, args.repeats),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['queries']:,} queries x {result['references']:,} references, "
            f"D = {result['dim']}, {args.threads} threads: best wall {result['wall_s']} s, "
            f"CPU {result['cpu_s']} s (first call {result['first_call_s']} s; load "
            f"{result['loadavg_before'][0]} -> {result['loadavg_after'][0]})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
