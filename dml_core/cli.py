"""Command line: ``python -m dml_core train|list-runs|export|bench|pixel-baseline|...``.

Results go to stdout (a summary, or one JSON object with ``--json``); progress and errors go
to stderr. Exit status: 0 done; 1 a run that failed or diverged while training; 2 bad
arguments or bad data, with one line naming the argument (or the file) and what it accepts,
and no traceback. The dataset of a new run is loaded and checked before its run directory is
created, so a missing, truncated or corrupt file leaves no failed run behind.

The runs directory is ``--runs DIR`` on every subcommand that reads or writes runs (train,
list-runs, export); ``train`` and ``list-runs`` also accept ``--out DIR`` for it (``export
--out`` is the folder it writes into).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from dml_core import metrics
from dml_core.config import RunConfig, apply_margin, config_for_data, make_config
from dml_core.data import DATASETS, SPLITS, DatasetError, load_for_config
from dml_core.errors import ConfigError, allowed_values
from dml_core.registry import LOSSES, MINERS, Registry
from dml_core.runs import RunState, RunStore
from dml_core.services.export import export_main, resolve_run
from dml_core.services.jobs import TrainingJob, resumable
from dml_core.user_data import COLORS, IMAGE_SIZES

FLAG_FIELDS = {
    "dataset": "dataset",
    "split": "split",
    "net": "net",
    "embedding_dim": "embedding_dim",
    "loss": "loss",
    "miner": "miner",
    "classes_per_batch": "classes_per_batch",
    "samples_per_class": "samples_per_class",
    "lr": "lr",
    "steps": "steps",
    "snapshot_every": "snapshot_every",
    "probe_size": "probe_size",
    "seed": "seed",
    "device": "device",
    "supervision": "supervision",
    "crop_scale": "crop_scale",
    "rotation": "rotation",
    "translate": "translate",
    "noise": "noise",
}
DATA_FLAGS = ("image_size", "color", "skip_bad_files")
"""How a user's data is read (``add_data_flags``): typed choices, so declared by hand."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``dml_core: error: <message>`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _runs_dir_argument(parser: argparse.ArgumentParser, *flags: str) -> None:
    """The runs directory, stored as ``args.runs`` whichever of ``flags`` spells it."""
    parser.add_argument(
        *flags, dest="runs", default="runs", metavar="DIR", help="runs directory (default: ./runs)"
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """``--image-size``, ``--color``, ``--skip-bad-files``: how a user's images are read."""
    fields = RunConfig.model_fields
    for flag, choices in (("image_size", IMAGE_SIZES), ("color", COLORS)):
        kind, field = type(choices[0]), fields[flag]
        help_text = f"{field.description} (your image folder; default {field.default})"
        parser.add_argument(
            f"--{flag.replace('_', '-')}", type=kind, choices=choices, help=help_text
        )
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        default=None,
        help="skip unreadable images of your folder (and say how many) instead of refusing it",
    )


def _data_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags given (a parser without ``add_data_flags`` gives none)."""
    return {name: value for name in DATA_FLAGS if (value := vars(args).get(name)) is not None}


def build_parser() -> Parser:
    """The argument parser of every subcommand."""
    parser = Parser(prog="python -m dml_core", description="Metric Learning Playground core.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train one run and print its retrieval metrics")
    fields = RunConfig.model_fields
    for flag in FLAG_FIELDS:
        field = fields[flag]
        kind = field.annotation if field.annotation in (int, float) else str
        allowed = allowed_values(RunConfig, flag)
        if flag == "dataset":
            allowed += ", or PATH: an image folder <class>/<images>, a .npz/.csv/.parquet table"
        help_text = f"{field.description} ({allowed}; default {field.default})"
        train.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=help_text)
    add_data_flags(train)
    train.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise embeddings onto the unit sphere (default: on)",
    )
    train.add_argument(
        "--margin", type=float, help="the loss's margin, and the miner's unless given"
    )
    train.add_argument(
        "--loss-param", type=_key_value, action="append", default=[], metavar="NAME=VALUE"
    )
    train.add_argument(
        "--miner-param", type=_key_value, action="append", default=[], metavar="NAME=VALUE"
    )
    train.add_argument(
        "--no-final-eval", action="store_true", help="skip the full test-vs-train evaluation"
    )
    _runs_dir_argument(train, "--out", "--runs")
    train.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    for name in ("list-losses", "list-miners"):
        listing = sub.add_parser(name, help=f"list the registered {name.removeprefix('list-')}")
        listing.add_argument("--json", action="store_true")
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted or stopped run (id in the runs directory, or its path) "
        "from its last checkpoint, with its saved settings",
    )
    export = sub.add_parser("export", help="export a run: Projector files, CSV, animation")
    export.add_argument("run", metavar="RUN", help="a run id (in --runs) or a run directory")
    export.add_argument("--format", required=True, choices=("projector", "csv", "html", "gif"))
    export.add_argument("--out", required=True, help="folder to write into")
    _runs_dir_argument(export, "--runs")
    report = sub.add_parser("bench-report", help="print a bench JSON file as README Markdown")
    report.add_argument("file", metavar="FILE", help="e.g. assets/bench-cpu.json")
    runs = sub.add_parser("list-runs", help="list saved runs, newest first")
    _runs_dir_argument(runs, "--out", "--runs")
    bench = sub.add_parser(
        "bench",
        help="time dml_core's training path against a PML loop",
        epilog="python -m dml_core bench sweep [--runs 8 --steps 300 --workers 2 --json]: a "
        "sweep's runs on a local Ray cluster against the same runs one after another. "
        "python -m dml_core bench app [--steps 300 --out FILE]: training in the app, watched "
        "live in Chromium, against the CLI (samples/s ratio, time to a verdict, CPU seconds). "
        "python -m dml_core bench user-data [--images 60000 --json]: reading a folder of PNGs "
        "on first open (parallel decode) and again from the cache.",
    )
    bench.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    bench.add_argument("--batch", type=int, default=256, help="samples per step (default 256)")
    bench.add_argument("--samples", type=int, help="training samples per variant (default 60k)")
    bench.add_argument("--quick", action="store_true", help="a small run (< 60 s on 2 cores)")
    bench.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train A and B with this many seeds; MAP@R is averaged, B - A paired (default 1)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    bench.add_argument(
        "--out", help="also write the JSON to this file (e.g. assets/bench-cpu.json)"
    )
    pixels = sub.add_parser(
        "pixel-baseline",
        help="retrieval metrics of the raw pixels (the floor a learnt embedding must beat)",
    )
    pixels.add_argument(
        "--dataset", default="digits", help=f"one of {', '.join(DATASETS)}, or your data's PATH"
    )
    pixels.add_argument("--split", default="standard", choices=SPLITS)
    pixels.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    gpu = sub.add_parser(
        "gpu-check",
        help="on a CUDA machine: the CUDA tests, cross-device resume, out of memory, bench",
    )
    gpu.add_argument(
        "--out-dir", default="assets", help="where bench-cuda.json and gpu-check.json go"
    )
    from dml_core.sweep_cli import add_sweep_parser  # here: sweep_cli imports this module

    add_sweep_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed flags into a checked RunConfig (raises ConfigError)."""
    values: dict[str, Any] = {
        field: getattr(args, flag)
        for flag, field in FLAG_FIELDS.items()
        if getattr(args, flag) is not None
    }
    if args.normalize is not None:
        values["normalize"] = args.normalize
    values |= _data_flags(args)
    values["loss_params"] = dict(args.loss_param)
    values["miner_params"] = dict(args.miner_param)
    if args.no_final_eval:
        values["final_eval"] = False
    if args.margin is not None:
        values = apply_margin(values, args.margin)
    return make_config(**values)


def _progress_line(job: TrainingJob) -> str:
    p = job.progress()
    done = p.step / max(p.steps, 1)
    bar = "#" * int(done * 20)
    snap = job.latest
    loss = f"loss {snap.loss:.4f}" if snap is not None and not math.isnan(snap.loss) else "loss -"
    p1 = (
        f"P@1 {snap.metrics.get('precision_at_1', float('nan')):.3f}"
        if snap is not None
        else "P@1 -"
    )
    eta = f"ETA {p.eta_s:.0f}s" if math.isfinite(p.eta_s) else "ETA -"
    return f"[{bar:<20}] {p.step}/{p.steps} {loss} {p1} {p.samples_per_s:.0f} samples/s {eta}"


def check_data(cfg: RunConfig) -> RunConfig:
    """Load the run's dataset and check the config against it, before the job exists.

    A missing, truncated or corrupt file raises here, so no run directory is created for it
    (and a resumed run is not marked failed). ``data.load_dataset`` keeps the parsed files, so
    the trainer's own load reads nothing from disk again (it only cuts the tensors, ~40 ms for
    FashionMNIST); a user's image folder comes back from its cache. Returns the config to run:
    P, K and the net not given adapt to a user's data (``config_for_data``).

    Raises:
        DatasetError: the dataset cannot be loaded (the message names the file).
        ConfigError: P or K does not fit the dataset's classes.
    """
    fitted, dataset = config_for_data(cfg)
    if dataset.name not in DATASETS:  # a user's data: what was read (and skipped), on stderr
        print(f"Data: {dataset.source}.", file=sys.stderr)
    return fitted


def start_job(args: argparse.Namespace) -> tuple[RunStore, str, TrainingJob]:
    """A new run from the flags, or (``--resume``) the continuation of a saved one."""
    if args.resume is None:
        cfg = check_data(config_from_args(args))
        store = RunStore(args.runs)
        run_id = store.create(cfg)
        return store, run_id, TrainingJob(cfg, store, run_id)
    given = [
        f"--{flag.replace('_', '-')}" for flag in FLAG_FIELDS if getattr(args, flag) is not None
    ]
    given += [f"--{name.replace('_', '-')}" for name in _data_flags(args)]
    if given or args.margin is not None or args.loss_param or args.miner_param:
        extra = ", ".join(given) or "the other settings"
        raise ConfigError(f"--resume continues a run with its saved settings; drop {extra}.")
    store, run_id = resolve_run(RunStore(args.runs), args.resume)
    record = resumable(store, run_id)
    check_data(record.config)
    return store, run_id, TrainingJob(record.config, store, run_id, resume=True)


def run_train(args: argparse.Namespace) -> int:
    """Train synchronously with a progress line on stderr; print a summary or JSON."""
    store, run_id, job = start_job(args)
    cfg = job.cfg
    start = time.perf_counter()
    job.start()
    tty = sys.stderr.isatty()
    last_snapshots = -1
    try:
        while not job.done:
            job.join(0.25)
            if tty:
                print("\r" + _progress_line(job), end="", file=sys.stderr, flush=True)
            elif job.snapshots != last_snapshots:
                last_snapshots = job.snapshots
                print(_progress_line(job), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        job.stop()
    job.join()  # the state is final before the thread frees the trainer: exiting then aborts
    if tty:
        print(file=sys.stderr)
    seconds = time.perf_counter() - start
    p = job.progress()
    result = {
        "run_id": run_id,
        "run_dir": str(store.path(run_id)),
        "state": p.state,
        "message": p.message,
        "device": p.device,
        "seconds": round(seconds, 2),
        "train_seconds": round(job.elapsed, 2),
        "eval_seconds": job.eval_seconds,
        "steps": p.step,
        "samples_per_s": round(p.samples_per_s, 1),
        **job.final,
        "config": cfg.model_dump(mode="json"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        where = f" on {p.device}" if p.device else ""
        print(f"Run {run_id} {p.state} in {seconds:.1f} s{where}.")
        for key in ("precision_at_1", "r_precision", "map_at_r", "nmi"):
            if key in job.final:
                print(f"  {key:<15} {job.final[key]:.4f}")
        print(f"  saved in {store.path(run_id)}")
    if p.state in (RunState.FINISHED, RunState.STOPPED):
        return 0
    print(f"python -m dml_core: error: run {run_id} {p.state}: {p.message}", file=sys.stderr)
    return 1


def pixel_baseline(dataset: str, split: str, as_json: bool) -> int:
    """Print the retrieval metrics of raw pixels: each image flattened to floats in [0, 1].

    The same query-vs-reference search and metric function as a run's final evaluation
    (``metrics.retrieval_metrics``, Euclidean distance), with no net: what retrieval gets for
    free, to set beside a trained and an untrained net.
    """
    data = load_for_config(make_config(dataset=dataset, split=split))
    start = time.perf_counter()
    scale = 255.0 if data.query.x.dtype == torch.uint8 else 1.0  # a table's features as they are
    query = data.query.x.flatten(1).float() / scale  # (Nq, C*H*W) or (Nq, d)
    ref = data.reference.x.flatten(1).float() / scale  # (Nr, C*H*W) or (Nr, d)
    result = metrics.retrieval_metrics(query, data.query.y, ref, data.reference.y)
    seconds = round(time.perf_counter() - start, 2)
    if as_json:
        print(json.dumps({"dataset": dataset, "split": split, **result, "seconds": seconds}))
        return 0
    print(f"Raw pixels of {dataset} ({split}), {len(query)} queries vs {len(ref)} references:")
    for key, value in result.items():
        print(f"  {key:<15} {value:.4f}")
    return 0


def list_registry(registry: Registry, as_json: bool) -> int:
    """Print every entry with its parameters and paper."""
    rows = []
    for name, entry in registry.items():
        params = {
            field: {
                "default": info.default,
                "allowed": allowed_values(entry.params, field),
                "help": info.description,
            }
            for field, info in entry.params.model_fields.items()
        }
        rows.append(
            {"name": name, "summary": entry.summary, "paper": entry.paper, "params": params}
        )
    if as_json:
        print(json.dumps(rows, default=str))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['summary']}\n    paper: {row['paper']}")
        for field, info in row["params"].items():
            print(f"    {field} = {info['default']!r} ({info['allowed']}): {info['help']}")
    return 0


def list_runs(runs_dir: str) -> int:
    """Print the run ids in ``runs_dir``, newest first; a missing folder is noted on stderr."""
    root = Path(runs_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"The runs directory {runs_dir!r} is not a directory.")
    if not root.exists():
        print(f"No runs: the runs directory {runs_dir!r} does not exist.", file=sys.stderr)
    for run_id in RunStore(root).list():
        print(run_id)
    return 0


BENCH_COMMANDS = ("sweep", "app", "sphere", "user-data", "metrics")  # dml_core.bench.NAME_speed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and argv[1:2] and argv[1] in BENCH_COMMANDS:  # their own flags
        module = importlib.import_module(f"dml_core.bench.{argv[1].replace('-', '_')}_speed")
        return module.main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "list-losses":
            return list_registry(LOSSES, args.json)
        if args.command == "list-miners":
            return list_registry(MINERS, args.json)
        if args.command == "export":
            return export_main(args.run, args.format, args.out, args.runs)
        if args.command == "bench":
            from dml_core.bench import main as bench_main

            return bench_main(
                args.dataset,
                args.device,
                args.batch,
                args.samples,
                args.quick,
                args.json,
                args.out,
                args.seeds,
            )
        if args.command == "pixel-baseline":
            return pixel_baseline(args.dataset, args.split, args.json)
        if args.command == "gpu-check":
            from dml_core.gpu_check import main as gpu_check_main

            return gpu_check_main(args.out_dir)
        if args.command == "bench-report":
            from dml_core.bench import report_main

            return report_main(args.file)
        if args.command == "sweep":
            from dml_core.sweep_cli import run_sweep

            return run_sweep(args)
        return list_runs(args.runs)
    except BrokenPipeError:  # stdout closed early (e.g. ``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ConfigError, DatasetError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
