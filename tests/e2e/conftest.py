"""End-to-end fixtures: a real ``streamlit run app.py`` server and Debian's Chromium via Playwright.

Without Chromium or Playwright the e2e tests skip with a reason; in CI (``CI=true``) they fail
instead, so a missing browser cannot silently turn the suite green.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import WAIT_MS, new_context
from playwright.sync_api import expect

from dml_core.bench.app_speed import CHROMIUM, CHROMIUM_ARGS, free_port, healthy
from dml_core.runs import ACTIVE

ROOT = Path(__file__).resolve().parents[2]
HEALTH_TIMEOUT_S = 60.0
LEFTOVER_STOP_S = 120.0  # a leftover run in its final evaluation cannot be stopped: it ends


class ServerUrl(str):
    """The server's base URL; ``log_path`` is where its output goes, ``runs_dir`` its runs,
    ``pid`` its process."""

    log_path: Path
    runs_dir: Path
    pid: int


expect.set_options(timeout=WAIT_MS)  # every e2e test's expect(), like its actions


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    """Skip locally; fail in CI, where the e2e tests must run."""
    if _in_ci():
        pytest.fail(f"CI=true but the end-to-end tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sync_playwright_cls():
    """Playwright's sync entry point and the browser binary, or skip (fail in CI)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    return sync_playwright


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, sync_playwright_cls) -> Iterator[ServerUrl]:
    """``streamlit run app.py`` on a free localhost port, runs in a temporary directory."""
    port = free_port()
    runs_dir = tmp_path_factory.mktemp("e2e-runs")
    log_path = tmp_path_factory.mktemp("e2e-log") / "streamlit.log"
    env = {**os.environ, "DML_RUNS_DIR": str(runs_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("DML_RUNS_IN_THREADS", None)  # the app as users run it: each run in a process
    # fmt: off
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]
    # fmt: on
    url = ServerUrl(f"http://127.0.0.1:{port}")
    url.log_path = log_path
    url.runs_dir = runs_dir
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url.pid = proc.pid
        try:
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while not healthy(url):
                if proc.poll() is not None:
                    pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"streamlit not healthy after {HEALTH_TIMEOUT_S:.0f} s:\n"
                        f"{log_path.read_text()}"
                    )
                time.sleep(0.25)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser(sync_playwright_cls) -> Iterator:
    """One headless Debian Chromium for the session."""
    with sync_playwright_cls() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(browser, server, request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh page (own context: own Streamlit session) with a tall viewport.

    On failure, a screenshot and the server log's tail are attached to the report's output.
    """
    context = new_context(browser)
    page = context.new_page()
    try:
        yield page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            shot = tmp_path / "failure.png"
            try:
                page.screenshot(path=str(shot))
                print(f"\nscreenshot at failure: {shot}")
            except Exception as err:  # the page may be gone; the log still helps
                print(f"\nno screenshot at failure: {err}")
            if server.log_path.exists():
                tail = server.log_path.read_text(errors="replace").splitlines()[-40:]
                print("streamlit log (tail):\n" + "\n".join(tail))
        context.close()


def _state(runs_dir: Path, run_id: str) -> str:
    """A run's state as its status.json says ("" while absent or mid-replace)."""
    try:
        return str(json.loads((runs_dir / run_id / "status.json").read_text()).get("state", ""))
    except (OSError, json.JSONDecodeError):
        return ""


def _active_runs(runs_dir: Path, since: set[str]) -> list[str]:
    """Runs created after ``since`` was listed that are still queued, running or paused."""
    new = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in since)
    return [r for r in new if _state(runs_dir, r) in ACTIVE]


def _stop_through_the_page(browser, server: ServerUrl, run_ids: list[str]) -> None:
    """Press each run's Stop on the Train page (as a user would) until every run has ended."""
    from playwright.sync_api import Error as PlaywrightError

    context = new_context(browser)
    try:
        page = context.new_page()
        for run_id in run_ids:
            page.goto(f"{server}/train?run={run_id}", timeout=60_000)
            deadline = time.monotonic() + LEFTOVER_STOP_S
            while _state(server.runs_dir, run_id) in ACTIVE:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the leftover run {run_id} did not stop at teardown")
                stop = page.get_by_role("button", name="Stop", exact=True)
                try:  # disabled in its final evaluation, which ends by itself
                    if stop.count() and stop.first.is_enabled():
                        stop.first.click(timeout=5_000)
                except PlaywrightError:  # the live fragment replaced the button meanwhile
                    pass
                page.wait_for_timeout(500)
    finally:
        context.close()


@pytest.fixture(autouse=True)
def stop_leftover_runs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the shared server, stop every run it started and left active.

    A run left training would share the two cores with every later test of the session (and
    slow it). Runs are stopped through the Train page's Stop button, after the test's own
    pages have closed; a test that ends its runs itself is untouched.
    """
    if "server" not in request.fixturenames:
        yield
        return
    server: ServerUrl = request.getfixturevalue("server")
    browser = request.getfixturevalue("browser")  # the session's: started once
    before = {p.name for p in server.runs_dir.iterdir()}
    yield
    leftovers = _active_runs(server.runs_dir, before)
    if leftovers:
        print(f"\nstopping runs left active by the test: {leftovers}")
        _stop_through_the_page(browser, server, leftovers)
