import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core import metrics
from dml_core.config import make_config
from dml_core.evaluation import Evaluation
from dml_core.runs import RunState, RunStore
from dml_core.services.job_manager import training_here
from dml_core.services.jobs import JobManager, Phase, StepRate, TrainingJob, train_and_save
from dml_core.train import Trainer
from tests.thread_counts import fresh_thread_count

FAST = {
    "steps": 60,
    "snapshot_every": 20,
    "probe_size": 200,
    "embedding_dim": 8,
    "final_eval": False,
}


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_job_trains_in_background_and_saves_every_snapshot(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(**{**FAST, "final_eval": True})
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join(120)
    progress = job.progress()
    assert progress.state == "finished"
    assert progress.step == 60
    assert store.snapshot_steps(run_id) == (0, 20, 40, 60)
    status = store.status(run_id)
    assert status["state"] == "finished"
    assert status["final_metrics"]["precision_at_1"] > 0.5
    assert store.load_checkpoint(run_id)["step"] == 60


def test_a_finished_run_saves_the_embeddings_of_its_final_metrics(tmp_path: Path) -> None:
    """The saved embeddings are the final evaluation's: its metrics recomputed from them.

    Catches: no embeddings saved; embeddings of another step (the snapshot before the last);
    query and reference swapped or labels misaligned (the recomputed metrics differ).
    """
    store = RunStore(tmp_path)
    cfg = make_config(**{**FAST, "final_eval": True})
    run_id = store.create(cfg)
    assert train_and_save(cfg, store, run_id) is RunState.FINISHED
    saved = store.load_embeddings(run_id)
    assert saved is not None
    assert saved.step == store.load_checkpoint(run_id)["step"] == 60
    assert saved.query_emb.shape == (540, 8)  # digits: 540 test images, 1,257 train images
    assert saved.ref_emb.shape == (1257, 8)
    assert saved.query_emb.dtype == saved.ref_emb.dtype == np.float32
    again = metrics.retrieval_metrics(
        torch.from_numpy(saved.query_emb),
        torch.from_numpy(saved.query_labels),
        torch.from_numpy(saved.ref_emb),
        torch.from_numpy(saved.ref_labels),
    )
    final = store.status(run_id)["final_metrics"]
    assert {"precision_at_1", "r_precision", "map_at_r"} <= final.keys()
    assert {key: again[key] for key in final} == final


def test_a_run_without_final_evaluation_saves_no_embeddings(tmp_path: Path) -> None:
    """Catches: embeddings computed (a full pass) for a run that asked for no evaluation."""
    store = RunStore(tmp_path)
    cfg = make_config(**FAST)
    run_id = store.create(cfg)
    assert train_and_save(cfg, store, run_id) is RunState.FINISHED
    assert store.load_embeddings(run_id) is None
    assert store.embeddings_step(run_id) is None


def test_pause_resume_stop(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(**{**FAST, "steps": 100_000})
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    wait_for(lambda: job.progress().state == "running" and job.latest is not None)
    job.pause()
    time.sleep(0.3)
    assert job.progress().state == "paused"
    paused_at = job.progress().step
    time.sleep(0.5)
    assert job.progress().step == paused_at
    job.resume()
    assert job.progress().state == "running"
    # Steps go on after the resume (on a slow machine the pause can come before step 1).
    wait_for(lambda: job.progress().step > paused_at)
    job.stop()
    job.join(30)
    assert job.progress().state == "stopped"
    assert store.status(run_id)["state"] == "stopped"
    stopped_at = job.progress().step
    assert stopped_at > 0
    assert store.snapshot_steps(run_id)[-1] == stopped_at  # a last snapshot at the stopping step


def test_divergence_is_recorded_and_last_good_snapshot_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: at step 30 a weight becomes NaN, as after a blown-up update."""
    original = Trainer.train_step

    def poisoned_step(self: Trainer) -> dict:
        if self.step == 30:
            with torch.no_grad():
                self.net.trunk[1].weight[0, 0] = float("nan")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", poisoned_step)
    store = RunStore(tmp_path)
    cfg = make_config(**FAST)
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join(120)
    progress = job.progress()
    assert progress.state == "diverged"
    assert "diverged at step 31" in progress.message
    assert store.status(run_id)["diverged_at"] == 31
    assert store.snapshot_steps(run_id) == (0, 20)
    assert store.load_checkpoint(run_id)["step"] == 20
    assert torch.isfinite(store.load_checkpoint(run_id)["net"]["trunk.1.weight"]).all()


def test_manager_caps_concurrent_jobs_and_queues_the_rest(tmp_path: Path) -> None:
    manager = JobManager(RunStore(tmp_path), max_running=1)
    cfg = make_config(**{**FAST, "steps": 100_000})
    first = manager.submit(cfg)
    second = manager.submit(cfg)
    wait_for(lambda: manager.get(first).state == "running")
    time.sleep(0.3)
    assert manager.get(second).state == "queued"
    assert manager.queue_position(second) == 1
    manager.stop(first)
    wait_for(lambda: manager.get(second).state in ("starting", "running"))
    assert manager.queue_position(second) is None
    manager.stop_all()
    assert manager.get(first).done
    assert manager.get(second).done


def test_manager_jobs_share_the_cpu_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU job training alone takes all of torch's threads, two at once half each, and a
    job takes them all again once the other has ended.

    Catches: a fixed share (a lone job held to 1 of 2 threads, or two jobs on 2 each: OpenMP
    teams of 2 jobs, the page reruns and the browser oversubscribe the cores), a share that
    never adapts while a job runs, and threads set in the wrong thread (the manager's, not the
    training thread). ``training()`` (what the UMAP process yields to) counts the same jobs.
    """
    default = torch.get_num_threads()  # an xdist worker runs on 1 (tests/conftest.py)
    torch.set_num_threads(2)  # as the app on 2 cores
    seen: dict[str, list[int]] = {}
    original = Trainer.train_step

    def counting_step(self: Trainer):
        seen.setdefault(threading.current_thread().name, []).append(torch.get_num_threads())
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", counting_step)
    before = fresh_thread_count()
    manager = JobManager(RunStore(tmp_path), max_running=2)
    long = {**FAST, "steps": 100_000, "snapshot_every": 10_000}

    def steps_of(run_id: str) -> list[int]:
        return seen.get(f"train-{run_id}", [])

    try:
        alone = manager.submit(make_config(**FAST))
        wait_for(lambda: manager.get(alone).done, timeout=120)
        assert manager.get(alone).state == RunState.FINISHED
        assert set(steps_of(alone)) == {2}  # alone: every thread
        assert manager.training() == 0  # a finished job trains no more
        first = manager.submit(make_config(**long))
        wait_for(lambda: len(steps_of(first)) > 3, timeout=120)
        second = manager.submit(make_config(**{**long, "seed": 1}))
        wait_for(lambda: manager.get(second).state == RunState.RUNNING, timeout=120)
        mark = {r: len(steps_of(r)) for r in (first, second)}
        wait_for(lambda: all(len(steps_of(r)) > mark[r] + 3 for r in mark), timeout=120)
        for run_id in (first, second):  # both training: one thread each
            assert set(steps_of(run_id)[mark[run_id] + 1 :]) == {1}
        assert manager.training() == 2
        assert training_here()  # what the UMAP process asks: any manager of this process
        manager.stop(second)
        wait_for(lambda: manager.get(second).done, timeout=120)
        mark = len(steps_of(first))
        wait_for(lambda: len(steps_of(first)) > mark + 3, timeout=120)
        assert steps_of(first)[-1] == 2  # alone again: every thread
        assert manager.training() == 1
        manager.stop(first)
        wait_for(lambda: manager.get(first).done, timeout=120)
        assert torch.get_num_threads() == 2  # this thread's are untouched
        wait_for(lambda: not training_here(), timeout=30)  # no job of any manager trains
        # torch's count is process-wide in effect: a thread started after the job adopts what
        # one started before it saw (whatever earlier code in this process left), not the job's
        assert fresh_thread_count() == before  # the jobs gave their threads back when they ended
    finally:
        manager.stop_all()
        torch.set_num_threads(default)  # threads started later get the default again


def feed(rate: StepRate, t0: float, t1: float, steps_per_s: float, step0: int) -> int:
    """Report steps at ``steps_per_s`` from t0 to t1, every 0.1 s (like a job's per-step
    calls); returns the step reached."""
    step = step0
    for i in range(round((t1 - t0) * 10) + 1):
        step = step0 + round(i * 0.1 * steps_per_s)
        rate.update(step, t0 + i * 0.1)
    return step


def test_eta_follows_the_recent_rate_not_the_mean_since_the_start() -> None:
    """10 steps/s for 5 s, then 2 steps/s for 20 s, 100 steps to go: 50 s left."""
    rate = StepRate()
    step = feed(rate, 0.0, 5.0, 10.0, 0)
    step = feed(rate, 5.0, 25.0, 2.0, step)
    assert step == 90
    mean_eta = 100 / (step / 25.0)  # 27.8 s: what a cumulative average says
    assert rate.eta(100) == pytest.approx(50.0, rel=0.1)
    assert abs(mean_eta - 50.0) > 0.4 * 50.0


def test_a_pause_does_not_count_as_slow_training() -> None:
    rate = StepRate()
    step = feed(rate, 0.0, 5.0, 10.0, 0)
    rate.restart(step, 65.0)  # paused for a minute
    feed(rate, 65.0, 67.0, 10.0, step)
    assert rate.steps_per_s == pytest.approx(10.0, rel=0.05)
    assert math.isnan(StepRate().eta(100))  # unknown before any measurement


def test_final_evaluation_is_a_visible_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job says "final evaluation" (with its time) after the last step, not a silent ETA 0."""
    evaluating, release = threading.Event(), threading.Event()
    original = Trainer.final_evaluation

    def slow_final_evaluation(self: Trainer) -> Evaluation:
        evaluating.set()
        release.wait(60)
        return original(self)

    monkeypatch.setattr(Trainer, "final_evaluation", slow_final_evaluation)
    now = [100.0]
    store = RunStore(tmp_path)
    cfg = make_config(**{**FAST, "final_eval": True})
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id, clock=lambda: now[0])
    job.start()
    assert evaluating.wait(120)
    now[0] += 12.0
    progress = job.progress()
    assert progress.state == RunState.RUNNING
    assert progress.phase is Phase.FINAL_EVALUATION
    assert progress.step == progress.steps == 60
    assert progress.phase_s == pytest.approx(12.0)
    assert math.isnan(progress.eta_s)
    assert "Final evaluation" in progress.message
    assert store.status(run_id)["phase"] == "final evaluation"
    job.pause()  # cannot hold a single call: nothing changes
    assert job.progress().state == RunState.RUNNING
    release.set()
    job.join(120)
    assert job.progress().state == RunState.FINISHED
    assert store.status(run_id)["final_metrics"]["precision_at_1"] > 0.5


def test_manager_pauses_and_resumes_a_live_job(tmp_path: Path) -> None:
    manager = JobManager(RunStore(tmp_path), max_running=1)
    run_id = manager.submit(make_config(**{**FAST, "steps": 100_000}))
    wait_for(lambda: manager.get(run_id).state == RunState.RUNNING)
    manager.pause(run_id)
    assert manager.get(run_id).state == RunState.PAUSED
    manager.resume(run_id)
    assert manager.get(run_id).state == RunState.RUNNING
    manager.stop_all()
    assert manager.get(run_id).state == RunState.STOPPED


def test_stop_all_cancels_queued_jobs(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    manager = JobManager(store, max_running=1)
    cfg = make_config(**{**FAST, "steps": 100_000})
    first, second = manager.submit(cfg), manager.submit(cfg)
    wait_for(lambda: manager.get(first).state == RunState.RUNNING)
    manager.stop_all()
    assert manager.get(second).done
    assert store.status(second)["state"] is RunState.STOPPED


def test_a_local_manager_imports_no_ray(tmp_path: Path) -> None:
    """Without ``DML_RAY_ADDRESS`` the manager trains here and Ray stays an optional extra.

    Catches: ``services.ray_jobs`` (hence ``ray``) imported by the job manager whatever the
    address, which would make Ray a dependency of every app. Checked in a fresh process: the
    test session may have imported Ray for the Ray tests.
    """
    code = (
        "import sys; from dml_core.services.jobs import JobManager; "
        "from dml_core.runs import RunStore; "
        f"m = JobManager(RunStore({str(tmp_path)!r})); "
        "print(m.cluster, m.max_running, 'ray' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DML_RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    cluster, slots, imported = out.stdout.split()
    assert (cluster, imported) == ("None", "False")
    assert int(slots) in (1, 2)


@pytest.mark.parametrize("app", [True, False])
def test_the_app_waits_passively_in_openmp_and_the_cli_keeps_the_default(app: bool) -> None:
    """Catches: the app's OpenMP threads left spinning (no setting, or one made after torch and
    its OpenMP runtime loaded, which read it once), and the setting leaking to the CLI."""
    first = "import streamlit; " if app else ""
    code = (
        f"import sys; {first}loaded = 'torch' in sys.modules; import dml_core, os; "
        "print(loaded, os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-2:]
    assert out == ["False", "PASSIVE" if app else "None"]


@pytest.mark.parametrize(("app", "numpy_first"), [(True, True), (True, False), (False, True)])
def test_the_apps_blas_runs_on_one_thread_and_torch_keeps_its_own(
    app: bool, numpy_first: bool
) -> None:
    """Catches: numpy's and scipy's OpenBLAS left on every core in the app (its page reruns'
    small products then ran 50x slower beside training), whether numpy loaded before dml_core
    (capped in place) or after (read from the environment); torch's threads capped with them;
    the cap leaking to the CLI."""
    first = ("import streamlit; " if app else "") + ("import numpy; " if numpy_first else "")
    code = (
        f"{first}import dml_core, numpy, scipy.linalg, threadpoolctl, torch; "
        "blas = {i['num_threads'] for i in threadpoolctl.threadpool_info() "
        "if i['internal_api'] == 'openblas'}; print(sorted(blas), torch.get_num_threads())"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    cores = os.cpu_count()
    assert out == (f"[1] {cores}" if app else f"[{cores}] {cores}"), out
