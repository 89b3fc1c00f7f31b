"""Does training in the app keep the CLI's speed? Both measured in one script run.

``python -m dml_core bench app [--dataset D] [--net N] [--steps S] [--repeats R] [--out FILE]``
prints one JSON object (defaults: FashionMNIST, ConvNet, the Train page's 300 steps):

1. **CLI**: ``python -m dml_core train --json`` with the settings given (the Train page's
   defaults otherwise); its ``samples_per_s`` and its whole time, the time to a verdict.
2. **App**: a real ``streamlit run app.py`` (runs in a temporary folder) driven by Debian's
   Chromium through Playwright, as a user would: open Train, pick the same settings, wait
   until the server's UMAP subprocess has compiled its kernels (once per server, when its
   first page opens; a standing server did that long ago), press Train, and keep watching,
   so the live view reruns and the UMAP worker lays out every snapshot while the run trains.
   Its samples/s is read from the run on disk (the last row of its metrics table: steps x
   batch / training seconds, the CLI's own definition); its time to a verdict runs from the
   click to the page showing the final metrics.
3. **CLI again**, so a change of load between the two shows as a spread of the CLI figures.
   With ``--repeats N``, steps 2 and 3 run N times (CLI, app, CLI, app, ..., CLI).

The figure is ``ratio`` = app samples/s / mean CLI samples/s of the CLI runs on either side
(the issue asks >= 0.8 on 2 cores); with repeats, the median of the N ratios (``ratios``).
Beside it, the CPU seconds each process group used from Train pressed to the verdict: the
run's training process (the app trains each run in a child process of the server,
``services.process_jobs``), the server (page reruns), its UMAP subprocess, and the browser;
and the CLI's CPU seconds for the same run. The same groups' CPU seconds while the run's
status says "training" (``app_cpu_s_training``, over ``app_training_window_s``) show what the
live view takes from the steps themselves. CPU seconds hardly depend on other processes'
load, so they show the app's extra work even on a busy machine, where wall-clock rates do
not: the load shows in ``loadavg`` before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dml_core.bench.processes import TrainingWindow, cpu_by_group, umap_settled
from dml_core.bench.timing import cpu_name
from dml_core.bench.verdict import cli_parts, verdict_entry
from dml_core.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's; the e2e tests launch it with the same flags
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_S = 900.0  # a bound on each wait, not a measurement
RUN_IN_URL = re.compile(r"[?&]run=([^&#]+)")  # the run id a page shows, in its address


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (also used by the end-to-end tests' server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether the Streamlit server at ``url`` answers its health check with "ok"."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    predicate: Any, what: str, timeout_s: float = TIMEOUT_S, every_s: float = 0.1
) -> None:
    """Poll ``predicate`` until it is truthy, or raise TimeoutError naming ``what``.

    ``timeout_s`` bounds the wait; it is not a measurement. The e2e tests wait with it too.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def cli_run(cfg: RunConfig, runs: Path) -> dict[str, Any]:
    """``python -m dml_core train --json`` with ``cfg``'s settings; its JSON, wall and CPU time."""
    cmd = [
        sys.executable, "-m", "dml_core", "train", "--json", "--runs", str(runs),
        "--dataset", cfg.dataset, "--net", cfg.net, "--steps", str(cfg.steps),
    ]  # fmt: skip
    start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:  # its own words (once a SIGABRT that did not come back in 9 tries)
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    result["wall_s"] = time.perf_counter() - start
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    return result


@contextlib.contextmanager
def streamlit_server(runs: Path, log: Path) -> Iterator[tuple[str, int]]:
    """``streamlit run app.py`` on a free port with its runs in ``runs``; (url, pid)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    env = {**os.environ, "DML_RUNS_DIR": str(runs), "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or healthy(url), "the server", 120, 0.25)
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited: {log.read_text()[-2000:]}")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _choose(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox ``label``."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.press_sequentially(option)
    page.get_by_role("option", name=option, exact=True).click()


def train_button(page: Any) -> Any:
    """The Train page's Train button (its label carries an icon before the word)."""
    return page.get_by_role("button", name=re.compile(r"^\W*Train$"))


def set_number(page: Any, label: str, value: int, timeout_ms: int = 60_000) -> None:
    """Type ``value`` into the Streamlit number input ``label`` and commit it with Enter.

    While a rerun redraws the sidebar, the stale field and its replacement can both be on the
    page for a moment; the value is typed once only one is left.
    """
    from playwright.sync_api import expect

    field = page.get_by_label(label, exact=True)
    expect(field).to_have_count(1, timeout=timeout_ms)
    field.click()
    field.fill(str(value))
    field.press("Enter")
    expect(field).to_have_value(str(value), timeout=timeout_ms)


def app_run(cfg: RunConfig, runs: Path, log: Path, timeout_s: float) -> dict[str, Any]:
    """Train ``cfg`` from the Train page of a real server, watched live (see the docstring).

    Waits at most ``timeout_s`` for the verdict; then the samples/s of the steps done so far
    are reported and ``time_to_verdict_s`` is None.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect, sync_playwright

    runs.mkdir(parents=True, exist_ok=True)
    with streamlit_server(runs, log) as (url, server_pid), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.goto(f"{url}/train", timeout=120_000)
        train = train_button(page)
        expect(train).to_be_enabled(timeout=120_000)
        _choose(page, "Dataset", cfg.dataset)
        page.locator("[data-testid='stRadio']", has_text="Net").get_by_text(
            cfg.net, exact=True
        ).click()
        set_number(page, "Steps", cfg.steps)
        expect(train).to_be_enabled(timeout=120_000)
        page.wait_for_timeout(1000)  # the last widget change has rerun the script
        wait_until(lambda: umap_settled(server_pid), "the UMAP worker's warm-up", every_s=0)
        cpu_before = cpu_by_group(server_pid)
        window = TrainingWindow(runs, server_pid)
        clicked, clicked_at = time.perf_counter(), time.time()
        train.click()
        wait_until(lambda: any(runs.iterdir()), "the run's folder")
        run_dir = next(runs.iterdir())
        # Not expect(): on each poll that fails, Playwright's expect renders an ARIA snapshot of
        # the whole page (for its failure message); waiting out a run that way cost Chromium
        # 19-22 of its 52-56 CPU-s, taken from the training measured here. wait_for polls the
        # selector only, here the metric labels alone.
        final = page.locator("[data-testid='stMetricLabel']", has_text="MAP@R final").first
        try:
            final.wait_for(state="visible", timeout=int(timeout_s * 1000))
            verdict_s: float | None = time.perf_counter() - clicked
        except PlaywrightTimeoutError:  # too slow to wait for: report the steps trained so far
            verdict_s = None
        cpu_after = cpu_by_group(server_pid)
        cpu_training, window_s = window.result()
        browser.close()
    status = json.loads((run_dir / "status.json").read_text())
    last = pd.read_csv(run_dir / "metrics.csv").sort_values("step").iloc[-1]
    saved = RunConfig.model_validate_json((run_dir / "config.json").read_text())
    if (saved.dataset, saved.net, saved.steps) != (cfg.dataset, cfg.net, cfg.steps):
        raise RuntimeError(f"the app trained {saved.dataset}/{saved.net}/{saved.steps} steps")
    return {
        "state": status.get("state"),
        "samples_per_s": float(last["step"]) * cfg.batch_size / float(last["elapsed"]),
        "train_seconds": float(last["elapsed"]),
        "steps_done": int(last["step"]),
        "time_to_verdict_s": verdict_s,
        "parts_s": {  # as bench.verdict's: the click to the run's creation is its setup
            "setup": float(status["created"]) - clicked_at,
            "train": float(last["elapsed"]),
            "eval": float(status.get("eval_seconds") or 0.0),
        },
        "cpu_s": {k: cpu_after[k] - cpu_before[k] for k in cpu_after},
        "cpu_s_training": cpu_training,
        "training_window_s": window_s,
        "map_at_r": (status.get("final_metrics") or {}).get("map_at_r"),
    }


def run_app_speed(
    cfg: RunConfig, workdir: Path, timeout_s: float = TIMEOUT_S, repeats: int = 1
) -> dict[str, Any]:
    """CLI, then ``repeats`` times app and CLI; the JSON of the module docstring.

    Each app run is set against the mean of the CLI runs just before and just after it, and
    ``ratio`` is the median of those ratios (all in ``ratios``). The other figures are those
    of the median run (the lower of the two middle ones for an even count) and its two CLIs.
    """
    load_before = os.getloadavg()
    clis = [cli_run(cfg, workdir / "cli0")]
    apps = []
    for i in range(repeats):
        apps.append(app_run(cfg, workdir / f"app{i}", workdir / f"streamlit{i}.log", timeout_s))
        clis.append(cli_run(cfg, workdir / f"cli{i + 1}"))
    ratios = [
        app["samples_per_s"] / ((clis[i]["samples_per_s"] + clis[i + 1]["samples_per_s"]) / 2)
        for i, app in enumerate(apps)
    ]
    median = sorted(range(repeats), key=ratios.__getitem__)[(repeats - 1) // 2]
    app, first, second = apps[median], clis[median], clis[median + 1]
    return {
        "config": {"dataset": cfg.dataset, "net": cfg.net, "steps": cfg.steps},
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "repeats": repeats,
        "ratios": [round(r, 3) for r in ratios],
        "cli_samples_per_s": [round(r["samples_per_s"], 1) for r in (first, second)],
        "cli_time_to_verdict_s": [round(r["wall_s"], 2) for r in (first, second)],
        "cli_cpu_s": [round(r["cpu_s"], 1) for r in (first, second)],
        "app_samples_per_s": round(app["samples_per_s"], 1),
        "app_time_to_verdict_s": app["time_to_verdict_s"] and round(app["time_to_verdict_s"], 2),
        "app_steps_done": app["steps_done"],
        "app_train_seconds": round(app["train_seconds"], 2),
        "app_cpu_s_click_to_verdict": {k: round(v, 1) for k, v in app["cpu_s"].items()},
        "app_cpu_s_training": app["cpu_s_training"]
        and {k: round(v, 2) for k, v in app["cpu_s_training"].items()},
        "app_training_window_s": app["training_window_s"] and round(app["training_window_s"], 2),
        "ratio": round(statistics.median(ratios), 3),
        "time_to_verdict": {
            "cli": verdict_entry(
                "python -m dml_core train --json",
                first["wall_s"],
                cli_parts(first["wall_s"], first),
                samples_per_s=first["samples_per_s"],
            ),
            "app": app["time_to_verdict_s"]
            and verdict_entry(
                "Train pressed on the Train page, watched live",
                app["time_to_verdict_s"],
                {
                    **app["parts_s"],
                    "other": app["time_to_verdict_s"] - sum(app["parts_s"].values()),
                },
                samples_per_s=round(app["samples_per_s"], 1),
            ),
        },
        "map_at_r": {"cli": first.get("map_at_r"), "app": app["map_at_r"]},
    }


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); prints the JSON, returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dml_core bench app")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--net", default="convnet")
    parser.add_argument("--steps", type=int, default=RunConfig.model_fields["steps"].default)
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="longest wait for the app's verdict (s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="app runs, each between two CLI runs (median)"
    )
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1 (got {args.repeats})")
    cfg = RunConfig(dataset=args.dataset, net=args.net, steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="dml-app-speed-") as tmp:
        result = run_app_speed(cfg, Path(tmp), args.timeout, args.repeats)
    print_result(result, "python -m dml_core bench app", argv, args.out)
    return 0


def print_result(
    result: dict[str, Any], command: str, argv: list[str] | None, out: str | None
) -> None:
    """Add the command line, the date and the CPU to ``result``; print it as JSON.

    The JSON is also written to ``out`` when given.
    """
    flags = sys.argv[1:] if argv is None else list(argv)
    result["command"] = " ".join([command, *flags])
    result["date"] = time.strftime("%Y-%m-%d")
    result["cpu_name"] = cpu_name()
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
