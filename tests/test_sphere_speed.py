"""``dml_core.bench.sphere_speed``: peak memory is read from /proc.

The command's wiring is tested beside ``bench app``'s (``tests/test_app_speed.py``); the
scenario itself (a real server, two browser sessions) runs in
``tests/e2e/test_sphere_budget.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dml_core.bench.sphere_speed import peak_rss_bytes


def test_peak_memory_is_the_high_water_mark_in_bytes() -> None:
    """At least the current resident size (VmRSS) and read in bytes, not kB.

    Catches reading VmRSS (lower than the peak after a large allocation is freed) and a
    missing kB-to-bytes factor (1024 times too small).
    """
    block = bytearray(64 * 1024**2)  # 64 MiB, touched, then freed: the peak keeps it
    block[::4096] = b"\1" * len(block[::4096])
    del block
    rss = next(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    peak = peak_rss_bytes(os.getpid())
    assert peak >= rss + 32 * 1024**2
