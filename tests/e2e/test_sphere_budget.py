"""End-to-end: one student's large batch on Sphere & sampling cannot take the server down.

Issue 19: P = 32, K = 32 used to grow the server to about 22 GB in 40 s, until Linux killed it
with every training job. Now the page answers (or refuses in one sentence), the server's peak
memory stays under 3 GB, and a training job running alongside finishes.

How soon it answers is a speed goal, so it is timed by ``python -m dml_core bench sphere``
(target: within 10 s on 2 cores), which runs this same scenario on a server of its own. Here
the suite's other tests share the two cores: inside a full suite run the answer once took
14.2 s where it takes 2.7 to 3.8 s alone (2026-12-01). This test asks only that it comes, within
the scenario's one-minute wait.
"""

from __future__ import annotations

import pytest
from e2e_util import assert_no_exception, new_context

from dml_core.bench.sphere_speed import (
    PEAK_TARGET_BYTES,
    large_batch_beside_a_run,
    peak_rss_bytes,
    wait_for_run_end,
)
from dml_core.runs import RunState

pytestmark = pytest.mark.e2e


def test_a_large_batch_answers_in_bounded_memory_beside_a_run(browser, server) -> None:
    contexts = [new_context(browser, {"width": 1400, "height": 1600}) for _ in range(2)]
    try:
        trainer, page = (context.new_page() for context in contexts)
        found = large_batch_beside_a_run(server, trainer, page, steps=400)
        assert_no_exception(page)
        assert wait_for_run_end(server.runs_dir, found["run_id"], 300) == RunState.FINISHED
    finally:  # a page left open keeps polling the server for the rest of the session
        for context in contexts:
            context.close()
    peak = peak_rss_bytes(server.pid)
    assert peak < PEAK_TARGET_BYTES, f"server peak memory {peak / 1024**3:.2f} GB"
    print(f"\nP = K = 32 answered in {found['answer_s']:.1f} s; peak RSS {peak / 1024**3:.2f} GB")
