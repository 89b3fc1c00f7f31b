"""Benchmark: opening a folder of 60k 28x28 PNGs, first (decoding) and again (from the cache).

The folder is generated into a temporary directory: 10 classes of blurred-stroke images with
noise, each a distinct PNG written by a small zlib encoder (Pillow's encoder is ~20x slower
and would dominate the set-up). Three opens are timed, each with a fresh cache directory
except the last: decoding in one process, decoding in the pool (the default), and the
cached open. The PNG files are in the page cache for all of them (they were just written),
so the figures measure decoding, not the disk. Each open reports wall-clock seconds and CPU
seconds (this process and the pool's processes): on a machine shared with other work the
wall clock mixes in their load, the CPU time does not.

Run: ``python -m dml_core.bench.user_data_speed [--images N] [--workers W] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from dml_core.user_data.images import default_workers, load_image_folder

CLASSES = 10
SIDE = 28


def png_bytes(image: np.ndarray) -> bytes:
    """A grayscale 8-bit PNG of ``image`` (H, W) uint8 (PNG spec: IHDR, one IDAT, IEND)."""
    h, w = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = np.concatenate([np.zeros((h, 1), np.uint8), image], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_folder(root: Path, n_images: int, seed: int = 0) -> float:
    """``root/c<k>/<i>.png``: ``n_images`` distinct images in :data:`CLASSES` classes.

    Returns:
        seconds taken.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    templates = (rng.random((CLASSES, SIDE, SIDE)) > 0.8).astype(np.float32) * 255  # (C, H, W)
    for k in range(CLASSES):
        (root / f"c{k}").mkdir(parents=True)
    for i in range(n_images):
        k = i % CLASSES
        shifted = np.roll(templates[k], tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        noisy = shifted * 0.7 + rng.integers(0, 64, (SIDE, SIDE))
        (root / f"c{k}" / f"{i:06d}.png").write_bytes(png_bytes(noisy.astype(np.uint8)))
    return time.perf_counter() - start


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its reaped children (the pool)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed_open(root: Path, cache: Path, workers: int | None) -> dict:
    """Wall and CPU seconds of one ``load_image_folder`` call (CPU time is load-independent)."""
    os.environ["DML_CACHE_DIR"] = str(cache)
    cpu, start = _cpu_seconds(), time.perf_counter()
    arrays = load_image_folder(root, workers=workers)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if arrays.bad:
        raise RuntimeError(f"benchmark images failed to decode: {arrays.bad[:3]}")
    n = len(arrays.y)
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds),
        "cpu_seconds": round(cpu, 3),
        "images_per_cpu_s": round(n / max(cpu, 1e-9)),
        "note": arrays.cache_note,
    }


def run_user_data_bench(n_images: int = 60_000, workers: int | None = None) -> dict:
    """Time the three opens of a generated folder; returns the figures (images/s, seconds)."""
    saved = os.environ.get("DML_CACHE_DIR")
    workers = workers or default_workers()
    result: dict = {"images": n_images, "workers": workers, "usable_cores": default_workers()}
    try:
        with tempfile.TemporaryDirectory(prefix="dml_user_data_bench_") as tmp:
            root = Path(tmp) / "pngs"
            result["generate_s"] = round(write_folder(root, n_images), 2)
            for label, cache, w in (
                ("serial", "cache_serial", 1),
                ("parallel", "cache", workers),
                ("cached", "cache", workers),
            ):
                result[label] = _timed_open(root, Path(tmp) / cache, w)
            cleanup = time.perf_counter()
        result["cleanup_s"] = round(time.perf_counter() - cleanup, 2)
    finally:
        if saved is None:
            os.environ.pop("DML_CACHE_DIR", None)
        else:
            os.environ["DML_CACHE_DIR"] = saved
    result["parallel_speedup"] = round(
        result["serial"]["seconds"] / result["parallel"]["seconds"], 2
    )
    result["cache_speedup"] = round(result["parallel"]["seconds"] / result["cached"]["seconds"], 1)
    return result


def report(result: dict) -> str:
    """The figures as a few lines of text."""
    lines = [
        f"{result['images']} PNGs of {SIDE}x{SIDE}, {result['usable_cores']} usable cores "
        f"(generated in {result['generate_s']} s, removed in {result['cleanup_s']} s)"
    ]
    for label in ("serial", "parallel", "cached"):
        r = result[label]
        w = 1 if label == "serial" else result["workers"]
        lines.append(
            f"  {label:<8} ({w} worker{'s' if w > 1 else ''}): {r['seconds']:.2f} s, "
            f"{r['images_per_s']:,} images/s; CPU {r['cpu_seconds']:.2f} s, "
            f"{r['images_per_cpu_s']:,} images per CPU-second ({r['note']})"
        )
    lines.append(
        f"  pool vs one process: {result['parallel_speedup']}x; cache vs decoding: "
        f"{result['cache_speedup']}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dml_core bench user-data [--images N --workers W --json]``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dml_core bench user-data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=60_000, help="how many PNGs (default 60k)")
    parser.add_argument("--workers", type=int, help="decoding processes (default: usable cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    result = run_user_data_bench(args.images, args.workers)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
