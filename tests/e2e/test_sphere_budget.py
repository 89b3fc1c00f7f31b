"""End-to-end: one student's large batch on Sphere & sampling cannot take the server down.

Issue 19: P = 32, K = 32 used to grow the server to about 22 GB in 40 s, until Linux killed it
with every training job. Now the page answers (or refuses in one sentence) within 10 s, the
server's peak memory stays under 3 GB, and a training job running alongside finishes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from e2e_util import (
    LOAD_TIMEOUT_MS,
    assert_no_exception,
    expect_title,
    new_context,
    open_app,
    run_status,
    set_number,
    train_button,
    wait_until,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

RUN_IN_URL = re.compile(r"[?&]run=([^&#]+)")
ANSWER_S = 10.0
PEAK_BYTES = 3 * 1024**3


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_large_batch_answers_quickly_in_bounded_memory(browser, server) -> None:
    contexts = [new_context(browser, {"width": 1400, "height": 1600}) for _ in range(2)]
    try:
        check_a_large_batch(server, *(context.new_page() for context in contexts))
    finally:  # a page left open keeps polling the server for the rest of the session
        for context in contexts:
            context.close()


def check_a_large_batch(server, trainer, page) -> None:
    """Train in one session while another asks Sphere & sampling for P = K = 32."""
    open_app(trainer, f"{server}/train")
    expect_title(trainer, "Train an embedding")
    set_number(trainer, "Steps", 400)
    expect(train_button(trainer)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
    train_button(trainer).click()
    trainer.wait_for_url(RUN_IN_URL, timeout=LOAD_TIMEOUT_MS)
    run_id = RUN_IN_URL.search(trainer.url).group(1)

    open_app(page, f"{server}/sphere")
    expect_title(page, "Sphere")
    expect(page.get_by_text("What each sampling method picks")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    set_number(page, "P classes", 32)
    start = time.monotonic()
    set_number(page, "K per class", 32)
    answer = page.get_by_text(re.compile(r"The batch has 1024 points|would need about"))
    expect(answer.first).to_be_visible(timeout=60_000)
    took = time.monotonic() - start
    assert_no_exception(page)
    assert took < ANSWER_S, f"P = K = 32 took {took:.1f} s to answer"

    wait_until(
        lambda: run_status(server.runs_dir, run_id).get("state") in ("finished", "failed"),
        timeout_s=300,
        what="the training run alongside to end",
    )
    assert run_status(server.runs_dir, run_id)["state"] == "finished"
    peak = peak_rss_bytes(server.pid)
    assert peak < PEAK_BYTES, f"server peak memory {peak / 1024**3:.2f} GB"
    print(f"\nP = K = 32 answered in {took:.1f} s; server peak RSS {peak / 1024**3:.2f} GB")
