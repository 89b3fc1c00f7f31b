"""The Ray executor on a real local Ray instance (``ray.init(num_cpus=2)``, once per module).

No mocks: runs train in Ray worker processes, stream their records back, and this process
(the driver) writes the run store. Waits are on markers written by the runs (a step reached,
a state), with a generous deadline only so that a broken propagation fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dml_core.cli import main as cli_main
from dml_core.config import RunConfig, make_config
from dml_core.runs import RunState, RunStore
from dml_core.services import jobs
from dml_core.services.job_manager import JobManager
from dml_core.services.sweep_runner import SweepRunner, make_executor
from dml_core.sweep_cli import main
from dml_core.sweeps import SweepState, SweepStore, build_sweep

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("ray_instance")  # tests/conftest.py: one per module

ROOT = Path(__file__).resolve().parents[1]

DEADLINE_S = 180.0  # only reached when a stop, pause or kill does not propagate
TINY = [  # the flags of tests/test_sweeps.py's tiny runs
    "--probe-size", "50", "--embedding-dim", "8", "--classes-per-batch", "4",
    "--samples-per-class", "8", "--device", "cpu", "--num-cpus", "1",
]  # fmt: skip


def tiny(steps: int, every: int) -> RunConfig:
    """A tiny digits run (D = 8, 4 x 8 batches, 50 probe points)."""
    return make_config(
        steps=steps,
        snapshot_every=every,
        probe_size=50,
        embedding_dim=8,
        classes_per_batch=4,
        samples_per_class=8,
        device="cpu",
    )


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll ``condition`` until it is truthy; fail (not hang) after ``DEADLINE_S``."""
    end = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def launch(store: RunStore, base: RunConfig, seeds: int) -> tuple[SweepRunner, list[str]]:
    """Save a sweep of ``seeds`` runs of ``base`` and start it on Ray in the background."""
    sweep = build_sweep(base, [], seeds)
    SweepStore(store).save(sweep)
    runner = SweepRunner(store, sweep, make_executor("ray", store))
    runner.start()
    return runner, [r.run_id for r in sweep.runs]


def test_ray_sweep_matches_local(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The same grid on both backends: identical MAP@R per cell and seed, every Ray run trained
    by a worker process other than this one, and every run's files written here.

    Catches: a Ray run that trains another config or seed than the local one (scores would
    differ), a worker recorded as the driver (pid), records lost on the way back (snapshots
    or the checkpoint missing), the worker's pid left as the run's pid (the run would read
    interrupted once that worker process is gone).
    """
    results = {}
    for backend in ("local", "ray"):
        args = [*TINY, "--steps", "20", "--snapshot-every", "10", "--grid", "margin=0.1,0.3"]
        args += ["--seeds", "2", "--backend", backend, "--runs", str(tmp_path / backend), "--json"]
        assert main(args) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    ray_out = results["ray"]
    assert ray_out["backend"] == "ray"
    assert ray_out["state"] == SweepState.FINISHED
    scores = {
        b: [(json.dumps(r["cell"]), r["seed"], r["map_at_r"]) for r in out["runs"]]
        for b, out in results.items()
    }
    assert scores["ray"] == scores["local"]
    assert len({s for *_, s in scores["ray"]}) == 4  # the grid and the seeds matter
    store = RunStore(tmp_path / "ray")
    for run in ray_out["runs"]:
        assert run["state"] == RunState.FINISHED
        assert run["worker"]["pid"] != os.getpid()
        assert store.snapshot_steps(run["run_id"]) == (0, 10, 20)
        assert store.has_checkpoint(run["run_id"])
        assert store.load_checkpoint(run["run_id"])["step"] == 20
        assert store.status(run["run_id"])["pid"] == os.getpid()
    workers = {r["worker"]["pid"] for r in ray_out["runs"]}
    assert 1 <= len(workers) <= 2  # two CPUs, one per run: at most two worker processes


def test_pause_stop_and_cancel_reach_the_workers(tmp_path: Path) -> None:
    """Three endless runs on two CPUs: two train, one waits in Ray's queue. Pausing one is
    seen in its status (written by the worker); stopping the sweep ends the two at their
    current step with a last snapshot, and cancels the queued one before it starts.

    Catches: an order the worker never reads (the runs would train on to 100,000 steps and
    the deadline fail the test), a pause that does not hold, a stop that kills instead of
    stopping (no last snapshot at the final step), a queued run that still trains.
    """
    store = RunStore(tmp_path)
    runner, run_ids = launch(store, tiny(steps=100_000, every=5), seeds=3)

    def training() -> list[str]:
        going = [r for r in run_ids if store.status(r).get("step", 0) >= 5]
        return going if len(going) == 2 else []

    first, second = wait_for(training, "two runs to train 5 steps")
    (queued,) = set(run_ids) - {first, second}
    runner.pause(first)
    wait_for(lambda: store.status(first)["state"] == RunState.PAUSED, "the pause")
    held = store.snapshot_steps(first)
    wait_for(lambda: store.status(second).get("step", 0) >= 15, "the other run to go on")
    assert store.snapshot_steps(first) == held  # paused: no new snapshot
    runner.stop()
    wait_for(lambda: runner.done, "the sweep to stop")
    assert runner.state == SweepState.STOPPED
    for run_id in (first, second):
        status = store.status(run_id)
        assert status["state"] == RunState.STOPPED
        assert status["worker"]["pid"] != os.getpid()
        assert 5 <= status["step"] < 100_000
        assert store.snapshot_steps(run_id)[-1] == status["step"]
    assert store.snapshot_steps(first)[-1] >= held[-1]
    cancelled = store.status(queued)
    assert cancelled["state"] == RunState.STOPPED
    assert "Cancelled" in cancelled["message"]
    assert "worker" not in cancelled
    assert store.snapshot_steps(queued) == ()


def test_killed_worker_leaves_run_resumable_and_sweep_resumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A worker killed (SIGKILL, by the pid it reported, while its run is held paused at a
    step) leaves the run interrupted with its checkpoint; resuming the sweep continues it
    from there and it ends exactly as an uninterrupted run.

    Catches: a dead worker recorded as failed or left "running", a run that cannot be
    resumed (no checkpoint on the driver), a resume that restarts from step 0 (snapshot 0
    would be rewritten) or restores less than the whole state (a different MAP@R).
    """
    store = RunStore(tmp_path / "runs")
    cfg = tiny(steps=300, every=20)  # a worker runs at most ~4 snapshots ahead of the store
    runner, (victim, other) = launch(store, cfg, seeds=2)
    wait_for(lambda: store.status(victim).get("step", 0) >= 20, "the run to reach step 20")
    runner.pause(victim)
    wait_for(lambda: store.status(victim)["state"] == RunState.PAUSED, "the pause")
    pid = store.status(victim)["worker"]["pid"]
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: runner.done, "the sweep to end")
    status = store.status(victim)
    assert status["state"] == RunState.INTERRUPTED
    assert "died" in status["message"]
    assert jobs.resumable(store, victim).status["state"] == RunState.INTERRUPTED
    assert runner.state == SweepState.INCOMPLETE
    assert store.status(other)["state"] == RunState.FINISHED
    snapshot_0 = store.path(victim) / "snapshots" / "00000000.npz"
    written = snapshot_0.stat().st_mtime_ns

    args = ["--resume", runner.sweep.sweep_id, "--backend", "ray", "--runs", str(store.root)]
    capsys.readouterr()  # Ray's own note of the death, if it came already
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == SweepState.FINISHED
    resumed = next(r for r in out["runs"] if r["run_id"] == victim)
    assert resumed["state"] == RunState.FINISHED
    assert resumed["worker"]["pid"] != pid
    assert snapshot_0.stat().st_mtime_ns == written
    reference = RunStore(tmp_path / "reference")
    reference.create(cfg, "uninterrupted")
    assert jobs.train_and_save(cfg, reference, "uninterrupted") is RunState.FINISHED
    final = reference.status("uninterrupted")["final_metrics"]
    assert resumed["map_at_r"] == final["map_at_r"]
    assert resumed["precision_at_1"] == final["precision_at_1"]


@pytest.fixture
def ray_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobManager]:
    """The app's job manager with ``DML_RAY_ADDRESS`` set (this process's Ray instance)."""
    monkeypatch.setenv("DML_RAY_ADDRESS", "auto")
    manager = JobManager(RunStore(tmp_path))
    yield manager
    manager.close()


def test_a_manager_with_a_ray_address_trains_a_single_run_on_a_worker(
    ray_manager: JobManager,
) -> None:
    """A Train-page run submitted to a manager with ``DML_RAY_ADDRESS`` set trains to its end
    on a Ray worker; its job shows what the worker sent, and the driver wrote every file.

    Catches: the address ignored (the run trains in this process: worker pid = ours, and no
    ``worker`` recorded), a job whose state never hears the replayed records (it would stay
    queued and the wait fail), ``done`` before the files are written (final metrics or the
    last snapshot missing when the job reads finished).
    """
    store = ray_manager.store
    assert ray_manager.cluster is not None
    assert ray_manager.max_running == 2  # the instance's 2 CPUs, one per run
    cfg = tiny(steps=20, every=10).model_copy(update={"final_eval": True})
    run_id = ray_manager.submit(cfg)
    job = ray_manager.get(run_id)
    assert job is not None
    wait_for(lambda: job.done, "the run to end")
    progress = job.progress()
    assert (progress.state, progress.step, progress.snapshots) == (RunState.FINISHED, 20, 3)
    assert job.latest is not None
    assert job.latest.step == 20
    status = store.status(run_id)
    assert status["state"] == RunState.FINISHED
    assert job.final == status["final_metrics"]
    assert "map_at_r" in job.final
    assert status["worker"]["pid"] != os.getpid()
    assert job.worker == status["worker"]
    assert status["pid"] == os.getpid()  # the driver: the run is interrupted if it dies
    assert store.snapshot_steps(run_id) == (0, 10, 20)
    assert store.load_checkpoint(run_id)["step"] == 20
    job.join(DEADLINE_S)  # the task's end reported too
    assert ray_manager.running() == []


def test_pause_and_stop_from_the_manager_reach_the_ray_worker(ray_manager: JobManager) -> None:
    """Pause, resume and stop of a single run go through the channel to its worker.

    Catches: a pause that the worker never hears (state never paused) or that does not hold
    (new snapshots while paused), a resume that does not release it, a stop that does not
    reach the worker (the run would train on to 100,000 steps and the deadline fail), a stop
    that kills instead of stopping (no last snapshot at the stopped step), a resumed run
    cancelled at once by its earlier stop order (it would never pass the stopped step).
    """
    store = ray_manager.store
    run_id = ray_manager.submit(tiny(steps=100_000, every=5))
    job = ray_manager.get(run_id)
    assert job is not None
    wait_for(lambda: job.progress().step >= 5 and job.state is RunState.RUNNING, "5 steps")
    ray_manager.pause(run_id)
    wait_for(lambda: job.state is RunState.PAUSED, "the pause")
    held = store.snapshot_steps(run_id)
    time.sleep(1.0)  # several order polls (ORDER_EVERY_S = 0.2) of a worker that holds
    assert store.snapshot_steps(run_id) == held
    ray_manager.resume(run_id)
    wait_for(lambda: store.snapshot_steps(run_id)[-1] > held[-1], "training after resume")
    ray_manager.stop(run_id)
    wait_for(lambda: job.done, "the stop")
    job.join(DEADLINE_S)
    status = store.status(run_id)
    assert status["state"] == job.state == RunState.STOPPED
    assert 5 <= status["step"] < 100_000
    assert store.snapshot_steps(run_id)[-1] == status["step"]
    assert status["worker"]["pid"] != os.getpid()
    # Resumed (the Train page's Resume): a new task goes on from the checkpoint, not
    # cancelled by the stop order its run id still had, and not from step 0.
    stopped_at = status["step"]
    snapshot_0 = store.path(run_id) / "snapshots" / "00000000.npz"
    written = snapshot_0.stat().st_mtime_ns
    ray_manager.resume(run_id)
    again = ray_manager.get(run_id)
    assert again is not job
    wait_for(lambda: store.status(run_id).get("step", 0) >= stopped_at + 10, "the resumed run")
    assert store.status(run_id)["state"] == RunState.RUNNING
    ray_manager.stop(run_id)
    wait_for(lambda: again.done, "the second stop")
    assert store.status(run_id)["state"] == RunState.STOPPED
    assert snapshot_0.stat().st_mtime_ns == written  # resumed from the checkpoint, not step 0


def test_queue_positions_follow_the_cluster(ray_manager: JobManager) -> None:
    """Four endless runs on a 2-CPU instance: two train, two wait in Ray's queue at places 1
    and 2. Stopping a training run lets the first waiting one start (the last moves up);
    stopping a waiting run cancels it before any worker takes it.

    Catches: positions from the manager's own queue (it hands every run to Ray at once, so
    all would read None), positions that ignore Ray (all four would train or be queued
    behind max_running), a stop that does not free the slot, a cancel that still trains.
    """
    store = ray_manager.store
    ids = [ray_manager.submit(tiny(steps=100_000, every=5)) for _ in range(4)]

    def positions() -> list[int | None]:
        return [ray_manager.queue_position(r) for r in ids]

    def two_training() -> list[str]:
        going = [r for r in ids if store.status(r).get("step", 0) >= 5]
        return going if len(going) == 2 else []

    training = wait_for(two_training, "two runs to train")
    waiting = [r for r in ids if r not in training]
    wait_for(lambda: sorted(positions(), key=str) == [1, 2, None, None], "the queue")
    assert [ray_manager.queue_position(r) for r in waiting] == [1, 2]
    assert {ray_manager.get(r).state for r in waiting} == {RunState.QUEUED}
    ray_manager.stop(training[0])
    wait_for(lambda: ray_manager.queue_position(waiting[0]) is None, "the first to start")
    assert ray_manager.queue_position(waiting[1]) == 1
    ray_manager.stop(waiting[1])
    cancelled = ray_manager.get(waiting[1])
    wait_for(lambda: cancelled.done, "the cancel")
    assert store.status(waiting[1])["state"] == RunState.STOPPED
    assert "Cancelled" in store.status(waiting[1])["message"]
    assert store.snapshot_steps(waiting[1]) == ()
    assert ray_manager.queue_position(waiting[1]) is None


def test_the_channel_process_loads_no_torch_and_orders_after_close_do_nothing(
    tmp_path: Path,
) -> None:
    """A run's records pass through the channel actor, whose process imports neither torch
    nor dml_core (seconds of CPU at a sweep's start): its class is shipped by value and the
    records are bytes pickled by the worker. Once closed, the executor ignores orders (a job
    manager stops its jobs again at exit).

    Catches (each tried once): ``Channel`` a module-level ``@ray.remote`` class (Ray imports
    its module by name, and with it torch); records put unpickled (the channel unpickles
    their tensors); an order after close sent to the killed channel (Ray raises).
    """
    from dml_core.services.ray_backend import RayExecutor
    from dml_core.services.sweep_runner import RunTask

    store, cfg = RunStore(tmp_path), tiny(steps=10, every=5)
    store.create(cfg, "run")
    executor = RayExecutor(store)
    executor.submit(RunTask("run", cfg))
    wait_for(lambda: executor.wait(0.1), "the run to end")
    assert store.snapshot_steps("run") == (0, 5, 10)
    imported = executor.channel.__ray_call__.remote(
        lambda _: [m for m in ("torch", "dml_core") if m in sys.modules]
    )
    assert ray.get(imported) == []
    executor.close()
    executor.stop("run")
    executor.pause("run")


def test_closing_the_executor_lands_the_last_records_of_a_run_going(tmp_path: Path) -> None:
    """Closing the executor while a run trains (a sweep interrupted, the app shutting down)
    stops the run, and the records it sends as it stops are written before the channel goes:
    it reads "stopped", with a last snapshot and a checkpoint at that step, so Resume goes on
    from where it stopped.

    Catches (tried once): a close that kills the channel right after the stop order. The run
    then still read "running" and its checkpoint was the one sent up to
    ``CHECKPOINT_EVERY_S`` earlier.
    """
    from dml_core.services.ray_backend import RayExecutor
    from dml_core.services.sweep_runner import RunTask

    store, cfg = RunStore(tmp_path), tiny(steps=100_000, every=5)
    store.create(cfg, "run")
    executor = RayExecutor(store)
    executor.submit(RunTask("run", cfg))

    def trained() -> bool:
        executor.wait(0.1)  # replays what arrived
        return store.status("run").get("step", 0) >= 40

    wait_for(trained, "the run to train 40 steps")
    sent = store.load_checkpoint("run")["step"]  # the first, at step 0: the next is 10 s on
    executor.close()
    status = store.status("run")
    assert status["state"] == RunState.STOPPED
    last = store.snapshot_steps("run")[-1]
    assert last == status["step"] >= 40
    assert store.load_checkpoint("run")["step"] == last > sent


def test_the_driver_writes_only_each_runs_newest_checkpoint_of_a_batch() -> None:
    """Of the records taken at once, a run's older checkpoints are dropped (a later one
    replaces them on disk anyway); everything else stays, in order.

    Catches (tried once): dropping by method name ``save_checkpoint`` only, which no worker
    sends since checkpoints travel as bytes (every checkpoint is then written).
    """
    from dml_core.services.ray_backend import newest_checkpoints

    records = [
        ("a", "save_checkpoint_bytes", (b"a1",), {}),
        ("b", "save_checkpoint_bytes", (b"b1",), {}),
        ("a", "set_status", (), {"step": 1}),
        ("a", "save_checkpoint_bytes", (b"a2",), {}),
    ]
    assert newest_checkpoints(records) == records[1:]


def test_bench_sweep_is_a_bench_entry(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m dml_core bench sweep`` reaches bench/sweep_speed.py with its own flags
    (only --help here: the benchmark itself starts its own Ray instance).

    Catches: the entry missing (argparse would answer with the plain bench's help, which has
    sweep's own usage) or wired to another benchmark.
    """
    with pytest.raises(SystemExit) as ended:
        cli_main(["bench", "sweep", "--help"])
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m dml_core bench sweep")
    assert "CPUs of the Ray instance" in out  # the help of sweep_speed's --workers


def test_the_train_page_trains_on_ray_when_the_address_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classroom case: with ``DML_RAY_ADDRESS`` set, Train on the Train page (AppTest,
    real clicks) trains the run on a Ray worker, and the page shows it finished.

    Catches: the app's job manager built without the address (the run would train in this
    process: no worker recorded, or this pid), a page that never sees the remote run end.
    """
    from streamlit.testing.v1 import AppTest

    import pages.ui

    # The projection subprocess first, without the address: spawned from a page run, it
    # would re-run the page (AppTest's __main__) and open a Ray job manager of its own.
    pages.ui._projection_worker()
    monkeypatch.setenv("DML_RAY_ADDRESS", "auto")
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(tmp_path))
    pages.ui._jobs.clear()
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    at.run()
    _, manager, _ = pages.ui.services()  # the page's own (cached per runs directory)
    try:
        assert manager.cluster is not None
        at.number_input(key="cfg.steps").set_value(20).run()
        at.button(key="btn.train").click().run()
        assert not at.exception
        run_id = at.session_state["current_run"]
        store = RunStore(tmp_path)
        wait_for(lambda: store.status(run_id).get("state") == RunState.FINISHED, "the run")
        assert store.status(run_id)["worker"]["pid"] != os.getpid()
        assert manager.get(run_id) is not None  # the page's manager: it trained the run

        def shown_finished() -> bool:
            at.run()  # timed fragments do not fire by themselves in AppTest
            return any("finished" in p.proto.text for p in at.get("progress"))

        wait_for(shown_finished, "the page to show the run finished")
        assert not at.exception
    finally:
        manager.close()
        pages.ui._jobs.clear()


def test_the_sweep_bench_floor_times_a_run_alone_and_runs_at_once() -> None:
    """The floor of ``bench sweep``: one run alone on a Ray worker, then two at once, folded
    by ``ratio_floor``.

    Catches: the floor taken as 1 / workers whatever the runs took (two runs each as slow as
    1.2 runs alone give 0.6, not 0.5), or a result that misses a run.
    """
    from dml_core.bench.sweep_speed import contention, ratio_floor

    assert ratio_floor(1.0, [1.2, 1.2], 2) == pytest.approx(0.6)
    assert ratio_floor(2.0, [2.0, 3.0], 2) == pytest.approx(0.625)
    out = contention(2, steps=3)
    assert out["alone_s"] > 0
    assert len(out["together_s"]) == 2
    assert all(t > 0 for t in out["together_s"])
    folded = ratio_floor(out["alone_s"], out["together_s"], 2)
    assert out["ratio_floor"] == pytest.approx(folded, abs=1e-3)
