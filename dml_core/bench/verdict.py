"""Time to a verdict: from Train pressed to the final metrics, and where that time goes.

``cli_time_to_verdict`` runs ``python -m dml_core train --json`` as a user would (a fresh
process: interpreter, imports, data, training, final evaluation) and splits its wall time
into four parts with the run's own figures:

- **setup**: the process until the run starts (interpreter, imports, reading and checking
  the dataset, the run's folder): the wall time less the CLI's ``seconds``;
- **train**: the optimiser steps (``train_seconds``);
- **eval**: the final evaluation, embedding every image and ranking every query against every
  reference (``eval_seconds``);
- **other**: the rest of the run: building the trainer, snapshots, checkpoints, saving.

``verdict_entry`` builds one entry of the benchmark's ``time_to_verdict`` object from such
parts; the CLI's is ``"cli"``, and an ``"app"`` entry (Train pressed in the browser to the
final metrics shown) takes the same form beside it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from dml_core.config import RunConfig

PARTS = ("setup", "train", "eval", "other")
QUICK_STEPS = 30  # a quick benchmark trains this many steps; the final evaluation is whole


def verdict_entry(command: str, total_s: float, parts_s: dict[str, float], **extra: Any) -> dict:
    """One ``time_to_verdict`` entry: the total, its parts (seconds) and their shares.

    Args:
        command: what was run (or pressed).
        total_s: wall seconds from start to the final metrics.
        parts_s: seconds per part (``PARTS``); they should sum to ``total_s``.
        extra: more figures to keep (e.g. ``samples_per_s``, ``map_at_r``, ``cpu_s``).
    """
    parts = {name: round(max(parts_s.get(name, 0.0), 0.0), 2) for name in PARTS}
    shares = {name: round(s / total_s, 3) if total_s > 0 else None for name, s in parts.items()}
    return {
        "command": command,
        "total_s": round(total_s, 2),
        "parts_s": parts,
        "shares": shares,
        **extra,
    }


def cli_parts(wall_s: float, result: dict[str, Any]) -> dict[str, float]:
    """The parts of a ``train --json`` run's wall time, from the JSON it printed."""
    train = float(result["train_seconds"])
    evaluation = float(result.get("eval_seconds") or 0.0)
    inside = float(result["seconds"])  # the run, from job start to its end
    return {
        "setup": wall_s - inside,
        "train": train,
        "eval": evaluation,
        "other": inside - train - evaluation,
    }


def cli_time_to_verdict(dataset: str, net: str = "convnet", quick: bool = False) -> dict:
    """Run ``python -m dml_core train --json`` at the defaults (``QUICK_STEPS`` if quick)."""
    from dml_core.bench.app_speed import cli_run

    steps = QUICK_STEPS if quick else RunConfig.model_fields["steps"].default
    cfg = RunConfig(dataset=dataset, net=net, steps=steps)
    with tempfile.TemporaryDirectory(prefix="dml-verdict-") as runs:
        result = cli_run(cfg, Path(runs))
    command = f"python -m dml_core train --dataset {dataset} --net {net} --steps {steps} --json"
    return verdict_entry(
        command,
        result["wall_s"],
        cli_parts(result["wall_s"], result),
        cpu_s=round(result["cpu_s"], 1),
        samples_per_s=result["samples_per_s"],
        map_at_r=result.get("map_at_r"),
    )
