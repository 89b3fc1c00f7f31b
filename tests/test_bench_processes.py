"""The app benchmark's process accounting (``dml_core.bench.processes``), on real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dml_core.bench.processes import TrainingWindow, descendants

BUSY = "while True: pass"
SERVER = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BUSY!r}])"


def test_descendants_walk_the_whole_tree() -> None:
    """Catches: only direct children counted (a browser's renderers are grandchildren)."""
    tree = {1: [2, 3], 2: [4], 4: [5], 9: [10]}
    assert sorted(descendants(1, tree)) == [2, 3, 4, 5]
    assert descendants(5, tree) == []


# Run in a fresh process: the test session's own children (the e2e tests' server and browser)
# would otherwise count as this process's "browser".
PROBE = f"""
import json, os, signal, subprocess, sys, time
from dml_core.bench.processes import cpu_by_group
server = subprocess.Popen([sys.executable, "-c", {SERVER!r}], start_new_session=True)
try:
    groups = cpu_by_group(server.pid)
    deadline = time.monotonic() + 120  # a bound on the wait, not a timing check
    while groups["umap_worker"] < 0.5 and time.monotonic() < deadline:
        time.sleep(0.1)
        groups = cpu_by_group(server.pid)
    print(json.dumps(groups))
finally:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_cpu_groups_split_the_server_tree_from_the_rest() -> None:
    """A busy child of the "server" counts as its UMAP worker, not as this process's browser.

    Catches: the server's children counted as the browser too (both are descendants of the
    benchmark's process), or not at all.
    """
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    groups = json.loads(out.stdout)
    assert groups["umap_worker"] >= 0.5, groups
    assert groups["browser"] < 0.5, groups


def test_the_training_window_is_read_while_the_status_says_training(tmp_path) -> None:
    """``TrainingWindow``: CPU seconds from the run's phase turning "training" to its end.

    Catches: a window that never opens or closes (a phase name misread), and one that closes
    as it opens (no seconds, no CPU of the busy "server" inside it).
    """
    run = tmp_path / "runs" / "run-1"
    run.mkdir(parents=True)
    server = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        window = TrainingWindow(tmp_path / "runs", server.pid, every_s=0.02)
        (run / "status.json").write_text(json.dumps({"state": "running", "phase": "training"}))
        deadline = time.monotonic() + 30  # a bound on the wait, not a timing check
        while window.start is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        (run / "status.json").write_text(json.dumps({"phase": "final evaluation"}))
        while window.end is None and time.monotonic() < deadline:
            time.sleep(0.01)
        cpu, seconds = window.result()
    finally:
        server.kill()
        server.wait()
    assert cpu is not None
    assert seconds is not None
    assert seconds >= 0.5
    assert cpu["server"] > 0.05  # busy throughout the window
