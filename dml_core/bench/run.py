"""Benchmark: dml_core's training path against the usual pytorch-metric-learning loop.

``python -m dml_core bench`` runs, in one process, on the same data, from the same initial
weights, with the same loss and miner semantics (triplet loss, margin 0.2, on semi-hard
triplets, Adam 1e-3, batch 256):

- **A, "pml"**: the loop users write today: a torchvision-style ``Dataset`` over float
  images, ``DataLoader(batch_size=256, shuffle=True)``, ``TripletMarginMiner(margin=0.2,
  type_of_triplets="semihard")`` + ``TripletMarginLoss(margin=0.2)``, on the net as built
  (``pml_loop.baseline_net``: B's initial weights without B's speed-ups). Its input pipeline
  (no pinned memory, no workers, a host-to-device copy per batch) is part of what it measures.
- **B, "dml_core"**: ``train.Trainer``: uint8 data resident on the device, P x K batches
  sampled there, semi-hard mining and loss fused on one distance matrix, channels_last,
  fused Adam, max-pool before ReLU, and bf16 autocast of the layers before the embedding layer
  where the hardware has native bfloat16 (CUDA from Ampere on; CPUs with AVX512-BF16 or AMX)
  and the net is big enough to gain (``train.BF16_MIN_MACS``; the 28x28 ConvNet is).
- **B float32, "dml_core_float32"**: B without bf16, only where B uses it: the speed-ups that
  compute exactly what the plain path computes.

Before timing, each variant trains a few steps on a throwaway copy (same settings, fresh
objects), so lazy kernel loading, cuDNN's algorithm search and other first-call costs stay out
of the timed steps while the timed variants start untouched. The variants train in
alternating chunks of steps, so a load spike from another process hits all alike; the figure
that matters is the ratio B / A of samples per second. All are then evaluated the same way
(``metrics.retrieval_metrics``: test queries against train references). With ``--seeds N``
training and evaluation are repeated for N seeds: one seed's MAP@R varies by a few
thousandths, as much as the differences being measured, so quality is compared as a mean over
seeds, B - A paired by seed. Also timed: mining + loss per batch, one snapshot, UMAP (cold and
warm-started) and PCA layouts, B with its speed-ups switched on one at a time, and the CLI from
Train pressed to its final metrics (``bench.verdict``).

Here: the race and ``run_bench``. A lives in ``bench.pml_loop``; the clocks and the timings
that do not race A against B in ``bench.timing``; the printed table and the README's Markdown
in ``bench.report``.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dml_core import metrics
from dml_core.bench.pml_loop import LR, MARGIN, PMLLoop, baseline_net, enumerated_semi_hard
from dml_core.bench.report import format_table
from dml_core.bench.timing import (
    layout_times,
    machine_info,
    snapshot_share_at_defaults,
    sync,
    timed,
    train_interleaved,
)
from dml_core.bench.verdict import cli_time_to_verdict
from dml_core.config import make_config
from dml_core.data import Dataset, load_dataset
from dml_core.errors import ConfigError
from dml_core.geometry import pairwise_distances
from dml_core.losses.triplet import TripletLoss
from dml_core.miners import SemiHardMiner
from dml_core.nets import Embedder
from dml_core.train import (
    EXACT_PATHS,
    FAST_PATHS,
    FusedSemiHardTriplet,
    Trainer,
    embed,
    resolve_device,
)

EMBEDDING_DIM = 128
WARM_UP_STEPS = 3  # untimed steps of each variant, on throwaway copies


def _batch_shape(batch: int) -> tuple[int, int]:
    """P x K = batch with P <= 10 classes (8 where it divides), K >= 2."""
    for p in (8, 10, 9, 7, 6, 5, 4, 3, 2):
        if batch % p == 0 and batch // p >= 2:
            return p, batch // p
    raise ConfigError(
        f"The 'batch' parameter of bench must split into P x K with 2 <= P <= 10 classes and "
        f"K >= 2 samples each (e.g. 250 = 10 x 25). Got {batch}."
    )


def _make_trainer(
    data: Dataset,
    dataset: str,
    device: str,
    batch: int,
    steps: int,
    seed: int,
    fast: tuple[str, ...] = FAST_PATHS,
) -> Trainer:
    P, K = _batch_shape(batch)
    cfg = make_config(
        dataset=dataset,
        net="convnet",
        embedding_dim=EMBEDDING_DIM,
        normalize=True,
        loss="triplet",
        loss_params={"margin": MARGIN},
        miner="semi_hard",
        miner_params={"margin": MARGIN},
        classes_per_batch=P,
        samples_per_class=K,
        lr=LR,
        steps=max(steps, 1),
        snapshot_every=max(steps, 1),
        probe_size=min(2000, max(50, len(data.query))),
        final_eval=False,
        seed=seed,
        device=device,
    )
    return Trainer(cfg, data, fast=fast)


def _evaluate(
    net: Embedder, data: Dataset, device: torch.device, queries: Tensor, refs: Tensor
) -> dict[str, float]:
    q = embed(net, data.query.x[queries], device)
    r = embed(net, data.reference.x[refs], device)
    found = metrics.retrieval_metrics(
        q, data.query.y[queries], r, data.reference.y[refs], with_nmi=False
    )
    return {k: round(v, 4) for k, v in found.items()}


def _warm_up(data: Dataset, args: dict[str, Any], device: torch.device) -> None:
    """Train throwaway copies of every variant a few steps, so first-call costs go untimed."""
    trainer = _make_trainer(data, **args)
    copies = [trainer, PMLLoop(baseline_net(trainer), data, args["batch"], device)]
    if trainer.autocast:
        copies.append(_make_trainer(data, **args, fast=EXACT_PATHS))
    for variant in copies:
        for _ in range(WARM_UP_STEPS):
            variant.train_step()
    sync(device)


def _one_seed(
    data: Dataset, args: dict[str, Any], device: torch.device, queries: Tensor, refs: Tensor
) -> tuple[Trainer, dict[str, dict[str, float]]]:
    """A, B and (where B uses bf16) B in float32, from the same initial weights, for one seed.

    Returns B's trainer and, per variant, its training seconds and retrieval metrics.
    """
    _warm_up(data, args, device)
    trainer = _make_trainer(data, **args)
    loop = PMLLoop(baseline_net(trainer), data, args["batch"], device)  # the same start
    nets = {"pml": loop.net, "dml_core": trainer.net}
    steppers = {"pml": loop.train_step, "dml_core": trainer.train_step}
    if trainer.autocast:
        plain = _make_trainer(data, **args, fast=EXACT_PATHS)
        plain.net.load_state_dict(trainer.net.state_dict())  # same start (seeded alike anyway)
        nets["dml_core_float32"] = plain.net
        steppers["dml_core_float32"] = plain.train_step
    seconds = train_interleaved(steppers, args["steps"], device)
    found = {
        name: {"train_seconds": seconds[name], **_evaluate(net, data, device, queries, refs)}
        for name, net in nets.items()
    }
    return trainer, found


def _summarise(per_seed: list[dict[str, dict[str, float]]], samples: int, steps: int) -> dict:
    """Per variant: samples/s over all seeds' training time, metrics averaged over seeds."""
    variants: dict[str, dict[str, Any]] = {}
    for name in per_seed[0]:
        runs = [seed[name] for seed in per_seed]
        seconds = sum(r["train_seconds"] for r in runs)
        variants[name] = {
            "samples": samples,
            "steps": steps,
            "train_seconds": round(seconds, 2),
            "samples_per_s": round(samples * len(runs) / seconds, 1),
            "seconds_per_60k": round(seconds / len(runs) * 60_000 / samples, 1),
            **{
                key: round(statistics.fmean(r[key] for r in runs), 4)
                for key in ("precision_at_1", "r_precision", "map_at_r")
            },
            "map_at_r_per_seed": [r["map_at_r"] for r in runs],
        }
    return variants


def _quality_delta(variants: dict[str, dict[str, Any]], name: str) -> dict[str, float | None]:
    """MAP@R of variant ``name`` minus A's, paired by seed: mean and standard deviation."""
    diffs = [
        b - a
        for a, b in zip(
            variants["pml"]["map_at_r_per_seed"], variants[name]["map_at_r_per_seed"], strict=True
        )
    ]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    return {"mean": round(statistics.fmean(diffs), 4), "sd": None if sd is None else round(sd, 4)}


def _mining_loss_ms(
    emb: Tensor, labels: Tensor, device: torch.device, repeats: int
) -> dict[str, float]:
    """Mining + loss + backward on one batch: PML, dml_core's plain and fused paths."""
    from pytorch_metric_learning import losses, miners

    pml_loss = losses.TripletMarginLoss(margin=MARGIN)
    pml_miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
    miner, loss, fused = (
        SemiHardMiner(MARGIN),
        TripletLoss(MARGIN),
        FusedSemiHardTriplet(MARGIN, MARGIN),
    )
    emb = emb.detach().clone().requires_grad_()

    def pml() -> None:
        pml_loss(emb, labels, pml_miner(emb, labels)).backward()

    def enumerated() -> None:
        with torch.no_grad():
            tuples = enumerated_semi_hard(pairwise_distances(emb), labels, MARGIN)
        loss(emb, labels, tuples).loss.backward()

    def plain() -> None:
        loss(emb, labels, miner(emb, labels)).loss.backward()

    def fast() -> None:
        fused(emb, labels)[0].backward()

    with torch.no_grad():
        mined = len(miner(emb, labels).anchor)
    out = {
        name: round(1000 * timed(fn, device, repeats), 2)
        for name, fn in (
            ("pml", pml),
            ("dml_core_enumerated", enumerated),
            ("dml_core_band_miner", plain),
            ("dml_core_fused", fast),
        )
    }
    out["semi_hard_triplets"] = mined
    out["ratio_pml_over_fused"] = round(out["pml"] / max(out["dml_core_fused"], 1e-9), 2)
    return out


def _ablation(
    data: Dataset, args: dict[str, Any], device: torch.device, steps: int
) -> dict[str, float]:
    """Milliseconds per step of B with its speed-ups switched on one at a time (interleaved)."""
    stages: dict[str, tuple[str, ...]] = {"none": ()}
    for i in range(len(FAST_PATHS)):
        stages["+" + FAST_PATHS[i]] = FAST_PATHS[: i + 1]
    trainers = {name: _make_trainer(data, **args, fast=fast) for name, fast in stages.items()}
    if not trainers["+bf16"].autocast:  # no native bf16 here, or a net too small to gain
        del trainers["+bf16"]
    for t in trainers.values():
        t.train_step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(steps):
        for name, t in trainers.items():
            sync(device)
            start = time.perf_counter()
            t.train_step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: round(1000 * statistics.median(v), 1) for name, v in times.items()}


def run_bench(
    dataset: str = "fashion-mnist",
    device: str = "auto",
    batch: int = 256,
    samples: int | None = None,
    quick: bool = False,
    seed: int = 0,
    seeds: int = 1,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring).

    Args:
        dataset: "fashion-mnist", "mnist" or "digits".
        device: "auto", "cpu" or "cuda".
        batch: samples per step for both variants (B draws P x K = batch).
        samples: training samples per variant (default 60k; 5120 with ``quick``).
        quick: a small run (< 60 s on 2 CPU cores): fewer samples, a fixed evaluation subset
            (2k queries vs 10k references), no UMAP at 10k points, a shorter ablation.
        seed: seed of weights, batches and subsets (the first one, with ``seeds`` > 1).
        seeds: train and evaluate A and B this many times, seeds ``seed, seed + 1, ...``:
            samples/s are over all of them; MAP@R is their mean, and B - A is paired by seed
            (one seed's MAP@R varies by ~0.003 on FashionMNIST, as much as B - A).
        command: the command line to record.
        log: called with a line of progress now and then (e.g. ``print`` to stderr).
    """
    if seeds < 1:
        raise ConfigError(f"The 'seeds' parameter of bench must be at least 1. Got {seeds}.")
    if samples is not None and samples < batch:
        raise ConfigError(
            f"The 'samples' parameter of bench must be at least one batch ({batch}). Got {samples}."
        )
    _batch_shape(batch)  # a bad batch fails here, before any data is loaded
    say = log or (lambda _line: None)
    try:
        dev, device_note = resolve_device(device)
    except RuntimeError as err:  # e.g. --device cuda without a GPU: one line, exit status 2
        raise ConfigError(f"The 'device' parameter of bench is {device!r}: {err}") from None
    torch.manual_seed(seed)
    load_before = os.getloadavg()
    samples = samples if samples is not None else (5120 if quick else 60_000)
    steps = max(1, samples // batch)
    data = load_dataset(dataset)
    trained = steps * batch
    gen = torch.Generator().manual_seed(seed)
    n_query = min(len(data.query), 2000 if quick else 10_000)
    n_ref = min(len(data.reference), 10_000 if quick else len(data.reference))
    queries = torch.randperm(len(data.query), generator=gen)[:n_query].sort().values
    refs = torch.randperm(len(data.reference), generator=gen)[:n_ref].sort().values
    per_seed = []
    for s in range(seed, seed + seeds):
        args = {"dataset": dataset, "device": device, "batch": batch, "steps": steps, "seed": s}
        say(
            f"seed {s}: training A and B for {steps} steps of {batch}, interleaved; evaluating "
            f"{n_query} test queries vs {n_ref} train references"
        )
        trainer, found = _one_seed(data, args, dev, queries, refs)
        per_seed.append(found)
    variants = _summarise(per_seed, trained, steps)
    variants["pml"]["what"] = (
        "Dataset + DataLoader(shuffle; no pinned memory, no workers: its input pipeline is "
        "timed too) + PML TripletMarginMiner/Loss"
    )
    shape = f"Trainer, P x K = {trainer.cfg.classes_per_batch} x {trainer.cfg.samples_per_class}"
    variants["dml_core"]["what"] = f"{shape}, fast paths: " + ", ".join(
        p for p in FAST_PATHS if p != "bf16" or trainer.autocast
    )
    if "dml_core_float32" in variants:
        variants["dml_core_float32"]["what"] = f"{shape}, fast paths: " + ", ".join(EXACT_PATHS)

    say("timing mining + loss per batch")
    idx = trainer.sampler.sample()
    x, y = trainer.train_x[idx], trainer.train_y[idx]
    with torch.no_grad():
        real = trainer.net(x).float()
    random = torch.nn.functional.normalize(
        torch.randn(batch, EMBEDDING_DIM, generator=gen), dim=1
    ).to(dev)
    repeats = 1 if quick else 5
    mining = {
        "real_batch": _mining_loss_ms(real, y, dev, repeats),
        "random_embeddings": _mining_loss_ms(random, y, dev, repeats),
    }

    say("timing a snapshot")
    snapshot_s = timed(lambda: trainer.snapshot({}), dev)

    say("timing the snapshots of a run at the default settings")
    defaults = snapshot_share_at_defaults(dev)

    say("timing B's speed-ups one at a time")
    ablation = _ablation(data, args, dev, 3 if quick else 10)

    layouts: dict[str, float | None] = {}
    if not quick:
        say("timing UMAP and PCA layouts")
        probe = np.concatenate(
            [embed(trainer.net, data.query.x, dev).numpy(), trainer.snapshot({}).probe_emb]
        )
        layouts = layout_times(probe, (2000, 10_000), seed)

    say("timing the CLI from Train pressed to its final metrics")
    a, b = variants["pml"], variants["dml_core"]
    # The float32 path: B float32 where B uses bf16; B itself where it does not (no native bf16)
    float32 = "dml_core_float32" if "dml_core_float32" in variants else "dml_core"
    return {
        "ratio": round(b["samples_per_s"] / a["samples_per_s"], 2),
        "map_at_r_delta": _quality_delta(variants, "dml_core"),
        "ratio_float32": round(variants[float32]["samples_per_s"] / a["samples_per_s"], 2),
        "map_at_r_delta_float32": _quality_delta(variants, float32),
        "seeds": seeds,
        "variants": variants,
        "mining_loss_ms": mining,
        "snapshot_s": round(snapshot_s, 3),
        "snapshot_probe_size": trainer.cfg.probe_size,
        "snapshot_share_at_defaults": defaults,
        "ablation_ms_per_step": ablation,
        "layouts": layouts,
        "time_to_verdict": {"cli": cli_time_to_verdict(dataset, quick=quick)},  # "app" beside
        "settings": {
            "dataset": dataset,
            "batch": batch,
            "samples": trained,
            "quick": quick,
            "eval_queries": n_query,
            "eval_references": n_ref,
            "net": "convnet",
            "embedding_dim": EMBEDDING_DIM,
            "margin": MARGIN,
            "lr": LR,
            "seed": seed,
            "seeds": seeds,
        },
        "machine": machine_info(dev, device_note, load_before),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command or "python -m dml_core bench",
    }


def main(
    dataset: str,
    device: str,
    batch: int,
    samples: int | None,
    quick: bool,
    as_json: bool,
    out: str | None,
    seeds: int = 1,
) -> int:
    """Run, print the table (or JSON), and write ``out`` when given."""
    import json

    from dml_core.runs import atomic_write_json

    command = "python -m dml_core " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    result = run_bench(
        dataset,
        device,
        batch,
        samples,
        quick,
        seeds=seeds,
        command=command,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, result)
    print(json.dumps(result) if as_json else format_table(result))
    return 0
