"""Benchmark: dml_core's training path against the usual pytorch-metric-learning loop.

``python -m dml_core bench`` runs, in one process, on the same data, from the same initial
weights, with the same loss and miner semantics (triplet loss, margin 0.2, on semi-hard
triplets, Adam 1e-3, batch 256):

- **A, "pml"**: the loop users write today: a torchvision-style ``Dataset`` over float
  images, ``DataLoader(batch_size=256, shuffle=True)``, ``TripletMarginMiner(margin=0.2,
  type_of_triplets="semihard")`` + ``TripletMarginLoss(margin=0.2)``.
- **B, "dml_core"**: ``train.Trainer``: uint8 data resident on the device, P x K batches
  sampled there, semi-hard mining and loss fused on one distance matrix, channels_last,
  fused Adam, max-pool before ReLU, and bf16 autocast of the layers before the embedding layer
  where the hardware has native bfloat16 (CUDA from Ampere on; CPUs with AVX512-BF16 or AMX)
  and the net is big enough to gain (``train.BF16_MIN_MACS``; the 28x28 ConvNet is).
- **B float32, "dml_core_float32"**: B without bf16, only where B uses it: the speed-ups that
  compute exactly what the plain path computes.

The variants train in alternating chunks of steps, so a load spike from another process hits
all alike; the figure that matters is the ratio B / A of samples per second. All are then
evaluated the same way (``metrics.retrieval_metrics``: test queries against train
references). With ``--seeds N`` training and evaluation are repeated for N seeds: one seed's
MAP@R varies by a few thousandths, as much as the differences being measured, so quality is
compared as a mean over seeds, B - A paired by seed. Also timed: mining + loss per batch, one
snapshot, UMAP (cold and warm-started) and PCA layouts, and B with its speed-ups switched on one
at a time.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dml_core import metrics
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
from dml_core.tuples import Triplets, all_triplets

MARGIN = 0.2
LR = 1e-3
EMBEDDING_DIM = 128
CHUNK_STEPS = 5  # A and B alternate every this many steps


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Median wall time of ``fn`` in seconds, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def enumerated_semi_hard(dist: Tensor, labels: Tensor, margin: float) -> Triplets:
    """The straightforward semi-hard miner: list all B (K-1) (B-K) triplets, then filter."""
    triplets = all_triplets(labels)
    d_ap = dist[triplets.anchor, triplets.pos]  # (T,)
    d_an = dist[triplets.anchor, triplets.neg]  # (T,)
    keep = (d_an > d_ap) & (d_an < d_ap + margin)
    return Triplets(*(t[keep] for t in triplets))


class ImageDataset(torch.utils.data.Dataset):
    """What a torchvision dataset hands a DataLoader: one (float image, label) per index."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images.float()  # (N, 1, H, W), 0-255
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


class PMLLoop:
    """Variant A: the usual pytorch-metric-learning training loop, one step at a time."""

    def __init__(self, net: Embedder, data: Dataset, batch: int, device: torch.device) -> None:
        from pytorch_metric_learning import losses, miners

        self.net, self.device = net, device
        self.loader = torch.utils.data.DataLoader(
            ImageDataset(data.train.x, data.train.y), batch_size=batch, shuffle=True
        )
        self.loss = losses.TripletMarginLoss(margin=MARGIN)
        self.miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
        self.optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        self._batches: Iterator[tuple[Tensor, Tensor]] = iter(self.loader)

    def train_step(self) -> int:
        """One optimiser step; returns the number of samples it used."""
        try:
            x, y = next(self._batches)
        except StopIteration:  # a new epoch
            self._batches = iter(self.loader)
            x, y = next(self._batches)
        x, y = x.to(self.device), y.to(self.device)
        emb = self.net(x)
        loss = self.loss(emb, y, self.miner(emb, y))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return len(y)


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


def _train_interleaved(
    steppers: dict[str, Callable[[], Any]], steps: int, device: torch.device
) -> dict[str, float]:
    """Run every variant ``steps`` steps, alternating in chunks; training seconds of each."""
    seconds = dict.fromkeys(steppers, 0.0)
    done = 0
    while done < steps:
        n = min(CHUNK_STEPS, steps - done)
        for name, step in steppers.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                step()
            _sync(device)
            seconds[name] += time.perf_counter() - start
        done += n
    return seconds


def _one_seed(
    data: Dataset, args: dict[str, Any], device: torch.device, queries: Tensor, refs: Tensor
) -> tuple[Trainer, dict[str, dict[str, float]]]:
    """A, B and (where B uses bf16) B in float32, from the same initial weights, for one seed.

    Returns B's trainer and, per variant, its training seconds and retrieval metrics.
    """
    trainer = _make_trainer(data, **args)
    net_a = copy.deepcopy(trainer.net).to(memory_format=torch.contiguous_format)  # same start
    loop = PMLLoop(net_a, data, args["batch"], device)
    nets = {"pml": loop.net, "dml_core": trainer.net}
    steppers = {"pml": loop.train_step, "dml_core": trainer.train_step}
    if trainer.autocast:
        plain = _make_trainer(data, **args, fast=EXACT_PATHS)
        plain.net.load_state_dict(trainer.net.state_dict())  # same start (seeded alike anyway)
        nets["dml_core_float32"] = plain.net
        steppers["dml_core_float32"] = plain.train_step
    seconds = _train_interleaved(steppers, args["steps"], device)
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
        name: round(1000 * _timed(fn, device, repeats), 2)
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
            _sync(device)
            start = time.perf_counter()
            t.train_step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: round(1000 * statistics.median(v), 1) for name, v in times.items()}


def _snapshot_share_at_defaults() -> dict[str, float]:
    """The snapshots' share of training time in a run at the default settings, on the CPU.

    The default run is digits with the MLP, trained to its last step (issue target: <= 10%).
    """
    cfg = make_config(final_eval=False, device="cpu")
    trainer = Trainer(cfg)
    start = time.perf_counter()
    snapshots = sum(1 for _ in trainer.run())
    total = time.perf_counter() - start
    return {
        "snapshots": snapshots,
        "training_s": round(trainer.elapsed, 3),
        "snapshot_s": round(total - trainer.elapsed, 3),
        "share": round((total - trainer.elapsed) / trainer.elapsed, 3),
    }


def _layouts(emb: np.ndarray, sizes: Sequence[int], seed: int) -> dict[str, float | None]:
    """UMAP cold / warm-started and PCA timings (seconds) for the first n of ``emb``."""
    from dml_core.projection import project

    rng = np.random.default_rng(seed)
    out: dict[str, float | None] = {}
    for n in sizes:
        if n > len(emb):
            out.update({f"umap_cold_{n}_s": None, f"umap_warm_{n}_s": None, f"pca_{n}_s": None})
            continue
        x = emb[:n]
        start = time.perf_counter()
        layout = project(x, "umap", seed=seed)
        first = time.perf_counter() - start
        if not out:  # the first fit of the process compiles umap-learn's kernels (numba)
            out["umap_first_fit_s"] = round(first, 2)
            start = time.perf_counter()
            layout = project(x, "umap", seed=seed)
            first = time.perf_counter() - start
        out[f"umap_cold_{n}_s"] = round(first, 2)
        warm = []
        for _ in range(4):  # the live view's updates: a step later, from the previous layout
            moved = (x + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)
            start = time.perf_counter()
            project(moved, "umap", init=layout, seed=seed)
            warm.append(time.perf_counter() - start)
        if "umap_warm_first_s" not in out:  # the first warm start compiles its own kernels
            out["umap_warm_first_s"] = round(warm[0], 2)
        out[f"umap_warm_{n}_s"] = round(statistics.median(warm[1:]), 3)
        out[f"pca_{n}_s"] = round(_timed(lambda x=x: project(x, "pca"), torch.device("cpu")), 4)
    return out


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
    dev, device_note = resolve_device(device)
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
    variants["pml"]["what"] = "Dataset + DataLoader(shuffle) + PML TripletMarginMiner/Loss"
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
    snapshot_s = _timed(lambda: trainer.snapshot({}), dev)

    say("timing the snapshots of a run at the default settings")
    defaults = _snapshot_share_at_defaults()

    say("timing B's speed-ups one at a time")
    ablation = _ablation(data, args, dev, 3 if quick else 10)

    layouts: dict[str, float | None] = {}
    if not quick:
        say("timing UMAP and PCA layouts")
        probe = np.concatenate(
            [embed(trainer.net, data.query.x, dev).numpy(), trainer.snapshot({}).probe_emb]
        )
        layouts = _layouts(probe, (2000, 10_000), seed)

    a, b = variants["pml"], variants["dml_core"]
    float32 = variants.get("dml_core_float32")
    return {
        "ratio": round(b["samples_per_s"] / a["samples_per_s"], 2),
        "map_at_r_delta": _quality_delta(variants, "dml_core"),
        "ratio_float32": round(float32["samples_per_s"] / a["samples_per_s"], 2)
        if float32
        else None,
        "map_at_r_delta_float32": _quality_delta(variants, "dml_core_float32") if float32 else None,
        "seeds": seeds,
        "variants": variants,
        "mining_loss_ms": mining,
        "snapshot_s": round(snapshot_s, 3),
        "snapshot_probe_size": trainer.cfg.probe_size,
        "snapshot_share_at_defaults": defaults,
        "ablation_ms_per_step": ablation,
        "layouts": layouts,
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
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": dev.type,
            "device_name": torch.cuda.get_device_name(0) if dev.type == "cuda" else _cpu_name(),
            "device_note": device_note,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command or "python -m dml_core bench",
    }


COLUMNS = {"pml": "A: PML loop", "dml_core": "B: dml_core", "dml_core_float32": "B float32"}
DELTA_KEYS = {"dml_core": "map_at_r_delta", "dml_core_float32": "map_at_r_delta_float32"}


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary printed by ``python -m dml_core bench``."""
    variants = result["variants"]
    a = variants["pml"]
    m = result["machine"]
    names = [n for n in COLUMNS if n in variants]
    others = names[1:]
    header = "".join(f"{COLUMNS[n]:>14}" for n in names)
    header += "".join(f"{'B / A' if n == 'dml_core' else 'B32 / A':>9}" for n in others)
    lines = [
        f"{result['command']}  ({result['date']}; {m['device_note']}, "
        f"{m['cpu_count']} CPUs, load {m['load_average_before'][0]})",
        "",
        f"{'':<26}{header}",
    ]
    rows = [
        ("samples/s", "samples_per_s", "{:.0f}"),
        ("seconds per 60k samples", "seconds_per_60k", "{:.1f}"),
        ("P@1", "precision_at_1", "{:.4f}"),
        ("R-Precision", "r_precision", "{:.4f}"),
        ("MAP@R", "map_at_r", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        cells = "".join(f"{fmt.format(variants[n][key]):>14}" for n in names)
        ratios = "".join(
            f"{variants[n][key] / a[key] if a[key] else float('nan'):>9.2f}" for n in others
        )
        lines.append(f"{label:<26}{cells}{ratios}")
    for name in others:
        delta = result[DELTA_KEYS[name]]
        spread = f" (sd {delta['sd']})" if delta["sd"] is not None else ""
        lines.append(
            f"MAP@R {COLUMNS[name]} - A, paired over {result['seeds']} seed(s): "
            f"{delta['mean']:+.4f}{spread}"
        )
    s = result["settings"]
    lines.append(
        f"(after {s['samples']} samples each; {s['eval_queries']} test queries vs "
        f"{s['eval_references']} train references)"
    )
    lines.append("")
    lines.append("mining + loss + backward, ms per batch:")
    for kind, row in result["mining_loss_ms"].items():
        cells = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("ratio_pml_over_fused",))
        lines.append(f"  {kind}: {cells}; PML / fused = {row['ratio_pml_over_fused']}")
    lines.append("B ms per step, speed-ups added one at a time:")
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in result["ablation_ms_per_step"].items()))
    lines.append(
        f"snapshot ({result['snapshot_probe_size']} probe points): {result['snapshot_s']} s"
    )
    if "snapshot_share_at_defaults" in result:
        d = result["snapshot_share_at_defaults"]
        lines.append(
            f"default run (digits): {d['snapshots']} snapshots take {d['snapshot_s']} s, "
            f"{100 * d['share']:.1f}% of its {d['training_s']} s of training"
        )
    if result["layouts"]:
        lines.append("layouts, s: " + ", ".join(f"{k} {v}" for k, v in result["layouts"].items()))
    lines.append(f"ratio B / A (samples/s): {result['ratio']}")
    if result["ratio_float32"] is not None:
        lines.append(f"ratio B float32 / A (samples/s): {result['ratio_float32']}")
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """The README's "Performance" block for one benchmark file: a table and the timings.

    ``python -m dml_core bench-report FILE`` prints it; a test checks that the README holds
    exactly this text for the committed file, so no figure there is typed by hand.
    """
    variants = result["variants"]
    names = [n for n in COLUMNS if n in variants]
    seeds = result["seeds"]
    lines = [
        "| | " + " | ".join(COLUMNS[n] for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    rows = [
        ("samples/s", "samples_per_s", "{:.0f}"),
        ("seconds per 60k samples", "seconds_per_60k", "{:.1f}"),
        (f"P@1, mean of {seeds} seed(s)", "precision_at_1", "{:.4f}"),
        (f"R-Precision, mean of {seeds}", "r_precision", "{:.4f}"),
        (f"MAP@R, mean of {seeds}", "map_at_r", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        lines.append(
            f"| {label} | " + " | ".join(fmt.format(variants[n][key]) for n in names) + " |"
        )
    a = variants["pml"]["samples_per_s"]
    lines.append(
        "| speed vs A | 1 | "
        + " | ".join(f"**{variants[n]['samples_per_s'] / a:.2f}x**" for n in names[1:])
        + " |"
    )
    cells = []
    for n in names[1:]:
        delta = result[DELTA_KEYS[n]]
        sd = f" ± {delta['sd']:.4f}" if delta["sd"] is not None else ""
        cells.append(f"{delta['mean']:+.4f}{sd}")
    lines.append("| MAP@R - A, paired by seed (mean ± sd) | | " + " | ".join(cells) + " |")
    settings, machine = result["settings"], result["machine"]
    lines += [
        "",
        f"`{result['command']}` on {machine['device_name']} ({machine['device']}; "
        f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads), "
        f"{result['date'][:10]}: {settings['dataset']}, "
        f"{settings['net']} D={settings['embedding_dim']}, {settings['samples']} training "
        f"samples per variant and seed, {settings['eval_queries']} test queries against "
        f"{settings['eval_references']} training references.",
        "",
        "- B's speed-ups added one at a time, ms per step: "
        + ", ".join(f"{k} {v}" for k, v in result["ablation_ms_per_step"].items())
        + ".",
    ]
    real = result["mining_loss_ms"]["real_batch"]
    lines.append(
        f"- Semi-hard mining + triplet loss + backward on a real batch: PML {real['pml']} ms, "
        f"ours fused {real['dml_core_fused']} ms ({real['ratio_pml_over_fused']}x)."
    )
    lines.append(
        f"- One snapshot ({result['snapshot_probe_size']} probe points: embed, distances, "
        f"metrics): {result['snapshot_s']} s."
    )
    if "snapshot_share_at_defaults" in result:
        d = result["snapshot_share_at_defaults"]
        lines.append(
            f"- A run at the default settings (digits, MLP, 300 steps): its {d['snapshots']} "
            f"snapshots take {d['snapshot_s']} s, {100 * d['share']:.1f}% of its "
            f"{d['training_s']} s of training."
        )
    layouts = result["layouts"]
    if layouts.get("umap_warm_2000_s") is not None:  # None: fewer than 2000 test images
        lines.append(
            f"- UMAP, 2000 points: first fit in a process {layouts['umap_first_fit_s']} s "
            f"(numba), cold {layouts['umap_cold_2000_s']} s, first warm start "
            f"{layouts['umap_warm_first_s']} s, then **{layouts['umap_warm_2000_s']} s** per "
            f"warm-started update; 10,000 points: cold {layouts['umap_cold_10000_s']} s, warm "
            f"{layouts['umap_warm_10000_s']} s. PCA: {layouts['pca_2000_s']} s / "
            f"{layouts['pca_10000_s']} s."
        )
    return "\n".join(lines)


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


def report_main(file: str) -> int:
    """Print ``format_markdown`` of a benchmark file; a missing or bad file is one clear line."""
    import json

    try:
        result = json.loads(Path(file).read_text())
        print(format_markdown(result))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"The benchmark file {file!r} could not be read as the output of "
            f"'python -m dml_core bench --out': {type(err).__name__}: {err}"
        ) from err
    return 0
