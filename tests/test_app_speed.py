"""The app-speed benchmark's process accounting (the benchmark itself drives a real server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dml_core.bench.app_speed import _descendants, cpu_by_group

BUSY = "while True: pass"
SERVER = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BUSY!r}])"


def test_descendants_walk_the_whole_tree() -> None:
    """Catches: only direct children counted (a browser's renderers are grandchildren)."""
    tree = {1: [2, 3], 2: [4], 4: [5], 9: [10]}
    assert sorted(_descendants(1, tree)) == [2, 3, 4, 5]
    assert _descendants(5, tree) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_cpu_groups_split_the_server_tree_from_the_rest() -> None:
    """A busy child of the "server" counts as its UMAP worker, not as this process's browser.

    Catches: the server's children counted as the browser too (both are descendants of the
    benchmark's process), or not at all.
    """
    server = subprocess.Popen([sys.executable, "-c", SERVER], start_new_session=True)
    try:
        groups = cpu_by_group(server.pid)
        deadline = time.monotonic() + 120  # a bound on the wait, not a timing check
        while groups["umap_worker"] < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
            groups = cpu_by_group(server.pid)
        assert groups["umap_worker"] >= 0.5, groups
        assert groups["browser"] < 0.5, groups
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
