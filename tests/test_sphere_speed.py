"""``dml_core.bench.sphere_speed``: the command is wired, and peak memory is read from /proc.

The scenario itself (a real server, two browser sessions) runs in
``tests/e2e/test_sphere_budget.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dml_core.bench.sphere_speed import peak_rss_bytes


def test_bench_sphere_is_a_command_of_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches the command not wired (``bench`` then rejects ``sphere`` with exit status 2)."""
    from dml_core import cli

    with pytest.raises(SystemExit) as leaving:
        cli.main(["bench", "sphere", "--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m dml_core bench sphere")
    assert "--steps" in out


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
