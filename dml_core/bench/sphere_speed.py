"""Sphere & sampling beside a training run: how soon P = K = 32 answers, and peak memory.

Issue 19's scenario, timed in a benchmark rather than in a test.

``python -m dml_core bench sphere [--steps S] [--out FILE]`` starts a real ``streamlit run
app.py`` (runs in a temporary folder) and drives Debian's Chromium through Playwright. One
session presses Train at the Train page's defaults (digits) with ``S`` steps (default 400);
another opens Sphere & sampling, sets P = 32 and then K = 32. The figure is the time from K's
change to the page's answer (issue 19's target: within 10 s on 2 cores, with the run training
alongside). The run must then finish, and the server's peak resident memory (``VmHWM``) is
reported (target: under 3 GB).

``tests/e2e/test_sphere_budget.py`` drives the same scenario (``large_batch_beside_a_run``) on
the suite's server and checks that the page answers, that the run finishes and the memory
bound. The time is this benchmark's figure: on two cores the suite's other tests share the
machine (2026-12-01: 14.2 s inside a full suite run, 2.7 and 3.8 s with the test alone).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dml_core.bench.app_speed import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RUN_IN_URL,
    TIMEOUT_S,
    print_result,
    set_number,
    streamlit_server,
    train_button,
    wait_until,
)
from dml_core.runs import FINAL, RunState, RunStore

ANSWER_TARGET_S = 10.0  # issue 19: the page answers (or refuses) within this, on 2 cores
PEAK_TARGET_BYTES = 3 * 1024**3  # ... and the server stays under this much resident memory
ANSWER = re.compile(r"The batch has 1024 points|would need about")
LOAD_MS = 60_000  # a bound on each page wait, not a measurement


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory (``VmHWM``), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def large_batch_beside_a_run(url: str, trainer: Any, page: Any, steps: int) -> dict[str, Any]:
    """Train on ``trainer`` (a page of its own session) while ``page`` asks for P = K = 32.

    Returns the run's id and ``answer_s``: seconds from K's change to the page's answer (the
    answer must come within a minute; a page that hangs raises Playwright's timeout).
    """
    from playwright.sync_api import expect

    trainer.goto(f"{url}/train", timeout=LOAD_MS)
    train = train_button(trainer)
    expect(train).to_be_enabled(timeout=LOAD_MS)
    set_number(trainer, "Steps", steps)
    expect(train).to_be_enabled(timeout=LOAD_MS)
    train.click()
    trainer.wait_for_url(RUN_IN_URL, timeout=LOAD_MS)
    run_id = RUN_IN_URL.search(trainer.url).group(1)

    page.goto(f"{url}/sphere", timeout=LOAD_MS)
    expect(page.get_by_text("What each sampling method picks")).to_be_visible(timeout=LOAD_MS)
    set_number(page, "P classes", 32)
    start = time.monotonic()
    set_number(page, "K per class", 32)
    expect(page.get_by_text(ANSWER).first).to_be_visible(timeout=LOAD_MS)
    return {"run_id": run_id, "answer_s": time.monotonic() - start}


def wait_for_run_end(runs_dir: Path, run_id: str, timeout_s: float = TIMEOUT_S) -> RunState:
    """The state the run ends in (finished, failed, ...), once it has left the active states."""
    store = RunStore(runs_dir)

    def ended() -> bool:
        return store.status(run_id).get("state") in FINAL

    wait_until(ended, f"run {run_id} to end", timeout_s, 0.5)
    return store.status(run_id)["state"]  # read as a RunState


def run_sphere_speed(steps: int, workdir: Path) -> dict[str, Any]:
    """The scenario on a fresh server and browser; the JSON of the module docstring."""
    from playwright.sync_api import sync_playwright

    runs = workdir / "runs"
    runs.mkdir(parents=True)
    load_before = os.getloadavg()
    with streamlit_server(runs, workdir / "streamlit.log") as (url, pid), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = [browser.new_page(viewport={"width": 1400, "height": 1600}) for _ in range(2)]
        found = large_batch_beside_a_run(url, *pages, steps)
        state = wait_for_run_end(runs, found["run_id"])
        peak = peak_rss_bytes(pid)
        browser.close()
    return {
        "scenario": f"Train (digits, {steps} steps); P = K = 32 on Sphere in another session",
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "answer_s": round(found["answer_s"], 2),
        "answer_target_s": ANSWER_TARGET_S,
        "run_state": str(state.value),
        "server_peak_rss_gb": round(peak / 1024**3, 2),
        "peak_target_gb": PEAK_TARGET_BYTES / 1024**3,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); prints the JSON, returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dml_core bench sphere")
    parser.add_argument("--steps", type=int, default=400, help="steps of the run alongside")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dml-sphere-speed-") as tmp:
        result = run_sphere_speed(args.steps, Path(tmp))
    print_result(result, "python -m dml_core bench sphere", argv, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
