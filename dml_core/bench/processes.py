"""Which process used how much CPU: the app benchmark's accounting, from ``/proc``.

The app benchmark (``app_speed``) starts a Streamlit server, which starts the UMAP worker and
a child process per run (``services.process_jobs``, named ``dml-train``), and drives Chromium
from this process. Their CPU seconds are read from ``/proc/<pid>/stat`` by process tree: the
server, its training children, its other descendants (the UMAP worker) and this process's
other descendants (the browser and its renderers). ``TrainingWindow`` reads them while a run's
status says "training".
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
TRAINING_NAME = "dml-train"  # services.process_jobs.PROCESS_NAME (not imported: no torch here)


def children() -> dict[int, list[int]]:
    """Child pids of every process, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    """Every process below ``pid`` in ``tree`` (``children()``): children, theirs, and so on."""
    found, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def name(pid: int) -> str:
    """A process's name (``comm``), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)[0]
    except (OSError, IndexError):
        return ""


def _stat_seconds(pid: int, first: int) -> float:
    """Two adjacent CPU-tick fields of ``/proc/<pid>/stat`` (after the name), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[first]) + int(fields[first + 1])) / TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    return _stat_seconds(pid, 11)  # utime, stime


def ended_children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the children ``pid`` waited for (0 once it is gone)."""
    return _stat_seconds(pid, 13)  # cutime, cstime


def cpu_by_group(server_pid: int) -> dict[str, float]:
    """CPU seconds so far: the server, its runs' children, its other children, the browser.

    The runs' children are the live ``dml-train`` processes and those the server waited for
    (a run's child ends with its run); the other children are the UMAP worker and the child
    started ahead for the next run, which live as long as the server.
    """
    tree = children()
    below = descendants(server_pid, tree)
    browser = [p for p in descendants(os.getpid(), tree) if p != server_pid and p not in below]
    training = [p for p in below if name(p) == TRAINING_NAME]
    return {
        "server": cpu_seconds(server_pid),
        "training_process": sum(cpu_seconds(p) for p in training)
        + ended_children_cpu_seconds(server_pid),
        "umap_worker": sum(cpu_seconds(p) for p in below if p not in training),
        "browser": sum(cpu_seconds(p) for p in browser),
    }


def umap_settled(server_pid: int, quiet_s: float = 1.0) -> bool:
    """Whether the server's UMAP subprocess exists and used no CPU for ``quiet_s`` seconds.

    A standing server compiled UMAP's kernels long before anyone presses Train; a fresh
    one compiles them in the background when its first page opens (``warm_up``, about
    6 s of CPU here). The app is timed as the standing server it is once that is done.
    """
    before = cpu_by_group(server_pid)["umap_worker"]
    time.sleep(quiet_s)
    return before > 0 and cpu_by_group(server_pid)["umap_worker"] == before


class TrainingWindow:
    """CPU seconds of each process group while a run trains (its status says "training").

    A thread polls the runs folder's first run's ``status.json`` every ``every_s`` and reads
    ``cpu_by_group`` when the phase turns to training and when it leaves it. Unlike the span
    from Train to the verdict, this window holds only the steps (and the snapshots between
    them): what the live view takes from training.
    """

    def __init__(self, runs: Path, server_pid: int, every_s: float = 0.05) -> None:
        self.runs, self.server_pid, self.every_s = runs, server_pid, every_s
        self.start: dict[str, float] | None = None
        self.end: dict[str, float] | None = None
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _phase(self) -> str | None:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            run = next(self.runs.iterdir())
            return json.loads((run / "status.json").read_text()).get("phase")
        return None

    def _watch(self) -> None:
        began = 0.0
        while not self._stop.wait(self.every_s):
            phase = self._phase()
            if self.start is None and phase == "training":
                self.start, began = cpu_by_group(self.server_pid), time.perf_counter()
            elif self.start is not None and phase != "training":
                self.end, self.seconds = cpu_by_group(self.server_pid), time.perf_counter() - began
                return

    def result(self) -> tuple[dict[str, float] | None, float | None]:
        """(CPU seconds per group, wall seconds) of the window, or (None, None) if not seen."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.start is None or self.end is None:
            return None, None
        return {k: self.end[k] - self.start[k] for k in self.end}, self.seconds
