"""End-to-end load and isolation (issue 9): five browser sessions train at once on one server.

Each session (its own browser context) opens /train, sets Steps and Probe points, and presses
Train. Checked: every session gets its own ``?run=`` id and shows only its own run; the job
manager caps concurrent jobs (default 2 on CPU) and the others wait with a visible queue
position; a tab closed mid-training does not stop its run (the documented choice: jobs keep
running); every run finishes; no page shows a traceback; the server answers its health check
throughout (each check within 30 s: two busy cores can delay one answer by seconds).
"""

from __future__ import annotations

import re
import time

import pytest
from e2e_util import (
    LOAD_TIMEOUT_MS,
    RUN_IN_URL,
    assert_no_exception,
    expect_title,
    new_context,
    open_app,
    progress_text,
    run_status,
    set_number,
    train_button,
    wait_healthy,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

SESSIONS = 5
STEPS = 150  # long enough that runs are still running and queued when the polling starts
PROBE_POINTS = 300  # digits has 540 test images: fewer makes snapshots and UMAP cheaper
MAX_RUNNING = 2  # the job manager's default cap on CPU (1 on a GPU: still <= 2)
BUDGET_S = 360  # all five runs must have finished by then
VIEWPORT = {"width": 1280, "height": 900}
QUEUED = re.compile(r"queued \(position (\d+) in the queue\)")
BAD = ("failed", "diverged", "stopped", "interrupted")


def queue_position(text: str) -> int | None:
    """N of "queued (position N in the queue)" in a progress text, if there."""
    match = QUEUED.search(text)
    return int(match.group(1)) if match else None


def test_five_sessions_train_at_once(browser, server, tmp_path) -> None:
    contexts = [new_context(browser, VIEWPORT) for _ in range(SESSIONS)]
    pages = [context.new_page() for context in contexts]
    closed: set[int] = set()
    start = time.monotonic()
    try:
        for page in pages:
            open_app(page, f"{server}/train")
            expect_title(page, "Train an embedding")
        for page in pages:
            set_number(page, "Steps", STEPS)
            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.locator("[data-testid='stExpander']", has_text="More").click()
            set_number(page, "Probe points", PROBE_POINTS)
            expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
        wait_healthy(server)

        # Press Train in all five sessions, one right after the other.
        for page in pages:
            train_button(page).click()
        run_ids = []
        for page in pages:
            page.wait_for_url(RUN_IN_URL, timeout=LOAD_TIMEOUT_MS)
            run_ids.append(RUN_IN_URL.search(page.url).group(1))
        assert len(set(run_ids)) == SESSIONS, run_ids
        print(f"\n{SESSIONS} sessions opened and started runs in {time.monotonic() - start:.1f} s")

        # Poll every session and the runs' status files until every run has finished.
        queued: dict[int, set[int]] = {i: set() for i in range(SESSIONS)}
        most_running = 0
        slowest_health = 0.0
        closed_at: dict | None = None
        deadline = time.monotonic() + BUDGET_S
        while True:
            slowest_health = max(slowest_health, wait_healthy(server))
            states = [run_status(server.runs_dir, r) for r in run_ids]
            running = [i for i, s in enumerate(states) if s.get("state") == "running"]
            most_running = max(most_running, len(running))
            for i, page in enumerate(pages):
                if i in closed:
                    continue
                text = progress_text(page)
                if text:  # each session shows its own run, never another's
                    assert run_ids[i] in text, (i, text)
                    assert not any(r in text for r in run_ids if r != run_ids[i]), (i, text)
                if (position := queue_position(text)) is not None:
                    queued[i].add(position)
            # Close the tab of a run in mid-training: its job must go on.
            if not closed and running and states[running[0]].get("step", 0) < STEPS:
                victim = running[0]
                closed_at = dict(states[victim])
                contexts[victim].close()
                closed.add(victim)
            if all(s.get("state") == "finished" for s in states):
                break
            bad = {r: s for r, s in zip(run_ids, states, strict=True) if s.get("state") in BAD}
            assert not bad, bad
            assert time.monotonic() < deadline, f"runs not finished after {BUDGET_S} s: {states}"
            time.sleep(0.3)

        print(
            f"all runs finished after {time.monotonic() - start:.1f} s; queued: {queued}; "
            f"slowest health check {slowest_health:.1f} s"
        )
        assert closed, "no run was seen running, so no tab was closed mid-training"
        victim = next(iter(closed))
        assert closed_at["state"] == "running", closed_at
        assert run_status(server.runs_dir, run_ids[victim])["state"] == "finished"
        assert run_status(server.runs_dir, run_ids[victim])["step"] == STEPS

        # The cap held, and the sessions beyond it waited with a visible position.
        assert 1 <= most_running <= MAX_RUNNING, most_running
        waited = {i: sorted(p) for i, p in queued.items() if p}
        assert waited, "no session ever showed 'queued (position N in the queue)'"
        assert all(p >= 1 for positions in waited.values() for p in positions), waited

        # Every open session ends on its own finished run, with no traceback.
        for i, page in enumerate(pages):
            if i in closed:
                continue
            want = ("finished", f"step {STEPS}/{STEPS}", run_ids[i])
            text, until = "", time.monotonic() + LOAD_TIMEOUT_MS / 1000
            while time.monotonic() < until:
                text = progress_text(page)
                if all(w in text for w in want):
                    break
                page.wait_for_timeout(250)
            else:
                shot = tmp_path / f"session-{i}.png"
                page.screenshot(path=str(shot))
                raise AssertionError(f"session {i} shows {text!r}, not {want}; see {shot}")
            assert f"run={run_ids[i]}" in page.url
            assert_no_exception(page)
        wait_healthy(server)
    finally:
        for i, context in enumerate(contexts):
            if i not in closed:
                context.close()
