"""Clocks of the benchmark, and the timings that do not race A against B.

``timed`` (median of a few calls after a warm-up), ``train_interleaved`` (variants trained in
alternating chunks of steps, so a load spike from another process hits all alike), the
machine's description, the snapshots' share of a run at the default settings, and UMAP / PCA
layout times (McInnes et al., UMAP, 2018; cold, and warm-started from the previous layout as
the live view does).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml_core.config import make_config
from dml_core.train import Trainer

CHUNK_STEPS = 5  # the variants alternate every this many steps


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages(mode_file: Path = THP_MODE) -> dict[str, str | None]:
    """Whether large CPU tensors can get transparent huge pages: the kernel's mode, torch's switch.

    At batch 256 the ConvNet's largest activations (256 x 64 x 24 x 24 floats, 37.7 MB) are
    allocated afresh each step and page-faulted in 4 KiB at a time: 20,000-30,000 minor faults
    per step of B were measured, about 3,600 with huge pages. With ``THP_MEM_ALLOC_ENABLE=1``,
    torch aligns allocations of 2 MB and more to huge pages, which the kernel grants where its
    mode is ``madvise`` or ``always``. Measured on 2 AVX2 cores,
    ``bench --quick`` once each way (notes of issue 14): A went from 451.5 to 658.5 samples/s
    and B from 735.1 to 886.9, so B / A fell from 1.63 to 1.35; the CLI's default run did not
    change. The benchmark reports both settings, so figures from two machines are compared
    knowingly.

    Returns:
        ``kernel``: the kernel's mode (None where it has no such file); ``torch_thp_alloc``:
        the ``THP_MEM_ALLOC_ENABLE`` variable (None when unset: torch leaves it off).
    """
    try:
        modes = mode_file.read_text().split()
    except OSError:
        modes = []
    chosen = next((m[1:-1] for m in modes if m.startswith("[") and m.endswith("]")), None)
    return {"kernel": chosen, "torch_thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE")}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so the wall clock measures it (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Median wall time of ``fn`` in seconds, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_interleaved(
    steppers: dict[str, Callable[[], Any]], steps: int, device: torch.device
) -> dict[str, float]:
    """Run every variant ``steps`` steps, alternating in chunks; training seconds of each."""
    seconds = dict.fromkeys(steppers, 0.0)
    done = 0
    while done < steps:
        n = min(CHUNK_STEPS, steps - done)
        for name, step in steppers.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                step()
            sync(device)
            seconds[name] += time.perf_counter() - start
        done += n
    return seconds


def machine_info(
    device: torch.device, device_note: str, load_before: tuple[float, float, float]
) -> dict[str, Any]:
    """What the figures were measured on, with the load average before and after."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name(),
        "device_note": device_note,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "huge_pages": huge_pages(),
    }


def snapshot_share_at_defaults(device: torch.device) -> dict[str, Any]:
    """The snapshots' share of training time in a run at the default settings, on ``device``.

    The default run is digits with the MLP, trained to its last step (issue target: <= 10%),
    measured on the benchmark's device, so it is reported under that device's name.
    """
    cfg = make_config(final_eval=False, device=device.type)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    snapshots = sum(1 for _ in trainer.run())
    total = time.perf_counter() - start
    return {
        "device": device.type,
        "snapshots": snapshots,
        "training_s": round(trainer.elapsed, 3),
        "snapshot_s": round(total - trainer.elapsed, 3),
        "share": round((total - trainer.elapsed) / trainer.elapsed, 3),
    }


def layout_times(emb: np.ndarray, sizes: Sequence[int], seed: int) -> dict[str, float | None]:
    """UMAP cold / warm-started and PCA timings (seconds) for the first n of ``emb``.

    Args:
        emb: embeddings, ``(N, D)``.
        sizes: the numbers of points to lay out; a size above N gives None.
        seed: seed of UMAP and of the small moves between warm-started updates.
    """
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
        out[f"pca_{n}_s"] = round(timed(lambda x=x: project(x, "pca"), torch.device("cpu")), 4)
    return out
