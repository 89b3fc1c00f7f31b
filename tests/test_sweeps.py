"""Sweeps without Ray: grid checks, the saved sweep, the local backend, resuming (sweeps.py,
services/sweep_runner.py, sweep_cli.py). The Ray backend is tested in test_ray_backend.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.runs import RunState, RunStore
from dml_core.services import jobs
from dml_core.sweep_cli import main
from dml_core.sweeps import (
    MAX_RUNS,
    Axis,
    Sweep,
    SweepState,
    SweepStore,
    build_sweep,
    cell_config,
    cell_results,
    missing_runs,
    parse_axis,
    progress,
    sweep_state,
)
from tests.user_data_files import gaussian_table, write_npz

TINY = [  # flags of a run that takes about a second on digits (one torch thread)
    "--steps", "6", "--snapshot-every", "3", "--probe-size", "50", "--embedding-dim", "8",
    "--classes-per-batch", "4", "--samples-per-class", "8", "--device", "cpu", "--num-cpus", "1",
]  # fmt: skip


def sweep_json(capsys: pytest.CaptureFixture[str], *args: str, tiny: bool = True) -> dict[str, Any]:
    """Run ``sweep [TINY] ... --json`` in this process; the parsed stdout (exit status 0)."""
    assert main([*(TINY if tiny else []), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run a sweep that must be refused: exit status 2 and one line on stderr; that line."""
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_axes_parse_typed_values() -> None:
    """Catches values kept as text (``"0.1"`` would then fail the float field check later)."""
    assert parse_axis("margin=0.1, 0.3").values == (0.1, 0.3)
    assert parse_axis("embedding_dim=8,16").values == (8, 16)
    assert parse_axis("loss=triplet,contrastive").values == ("triplet", "contrastive")
    with pytest.raises(ConfigError, match="NAME=V1,V2"):
        parse_axis("margin")
    with pytest.raises(ConfigError, match="repeats"):
        parse_axis("margin=0.1,0.1")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--grid", "wobble=1,2"], ["'wobble' is unknown", "margin", "embedding_dim"]),
        (["--grid", "margin=0.1,3"], ["margin=3", "'margin'", "(0, 2]", "Got 3"]),
        (["--grid", "embedding_dim=8,1024"], ["embedding_dim=1024", "[2, 512]"]),
        (["--grid", "seed=1,2"], ["--seeds"]),
        (["--grid", "lr=0.1", "--grid", "lr=0.2"], ["once"]),
        (["--seeds", "0"], ["'seeds'", "[1, 1000]"]),
    ],
)
def test_bad_grids_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], names: list[str]
) -> None:
    """Catches a check that is missing (a traceback, or a run directory for a bad value) and a
    message that does not name the parameter and its range (reused from RunConfig/registry)."""
    err = refused(capsys, *args, "--runs", str(tmp_path))
    for name in names:
        assert name in err
    assert not any(tmp_path.iterdir())  # nothing saved


def test_an_axis_without_values_is_refused_in_one_sentence() -> None:
    """Catches an empty axis reaching the grid product (``max()`` of nothing: a traceback on
    the Sweep page, whose value boxes may be left empty)."""
    with pytest.raises(ConfigError, match="'margin' has no values"):
        build_sweep(make_config(steps=6), [Axis(name="margin", values=())], 1)


def test_a_sweep_on_a_users_table_fits_its_batch_and_net(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Catches: the sweep's base config not fitted to the data (6 x 16 that 3 classes of 10
    training rows cannot fill, refused), or the ConvNet kept for feature vectors."""
    x, y = gaussian_table(per_class=12)
    keep = np.isin(y, ["alpha", "beta", "gamma"])
    table = write_npz(tmp_path / "t.npz", x[keep], y[keep])
    out = sweep_json(
        capsys, "--dataset", str(table), "--steps", "4", "--snapshot-every", "2",
        "--embedding-dim", "8", "--device", "cpu", "--num-cpus", "1",
        "--grid", "margin=0.1,0.3", "--runs", str(tmp_path / "runs"), tiny=False,
    )  # fmt: skip
    assert out["state"] == SweepState.FINISHED
    for run in out["runs"]:
        cfg = run["config"]
        assert (cfg["classes_per_batch"], cfg["samples_per_class"], cfg["net"]) == (3, 10, "mlp")
        assert cfg["dataset"] == str(table)


def test_more_than_max_runs_needs_yes(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches a grid over ``MAX_RUNS`` launched without confirmation (and --yes ignored)."""
    grid = ["--grid", f"lr={','.join(str(0.001 + i * 1e-5) for i in range(MAX_RUNS // 2 + 1))}"]
    err = refused(capsys, *grid, "--seeds", "2")
    assert f"{MAX_RUNS + 2} runs" in err
    assert "--yes" in err
    base = make_config(steps=6)
    sweep = build_sweep(base, [parse_axis(grid[1])], 2, yes=True)
    assert len(sweep.runs) == MAX_RUNS + 2
    exactly = Axis(
        name="lr", values=tuple(round(0.001 + i * 1e-5, 8) for i in range(MAX_RUNS // 2))
    )
    assert len(build_sweep(base, [exactly], 2).runs) == MAX_RUNS  # the bound itself: no --yes


def test_one_margin_drives_loss_and_miner_unless_a_side_is_named() -> None:
    """Catches a grid margin that moves the loss's margin but leaves the semi-hard miner's at
    its default (pytorch-metric-learning issue #466), and ``loss.``/``miner.`` ignored."""
    base = make_config()  # triplet + semi-hard, both with a margin
    both = cell_config(base, {"margin": 0.3}, 0)
    assert both.loss_params["margin"] == both.miner_params["margin"] == 0.3
    loss_only = cell_config(base, {"loss.margin": 0.3}, 0)
    assert (loss_only.loss_params["margin"], loss_only.miner_params["margin"]) == (0.3, 0.2)
    miner_only = cell_config(base, {"miner.margin": 0.3}, 5)
    assert (miner_only.loss_params["margin"], miner_only.miner_params["margin"]) == (0.2, 0.3)
    assert miner_only.seed == 5
    swapped = cell_config(make_config(loss_params={"margin": 0.5}), {"loss": "contrastive"}, 0)
    assert swapped.loss == "contrastive"
    assert "margin" not in swapped.loss_params


def test_local_sweep_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A 2 x 2 grid with 2 seeds on the local backend: every run lands in the store, the JSON
    has what the issue lists, and each cell's mean and sd are those of its seeds.

    Catches: runs missing from the store or the JSON, a worker that is not this process (the
    local backend trains here), seeds not varied (the two seeds would score alike), the sd
    computed with ddof = 0 or over the wrong runs.
    """
    out = sweep_json(
        capsys, "--grid", "margin=0.1,0.3", "--grid", "lr=0.001,0.003", "--seeds", "2",
        "--runs", str(tmp_path),
    )  # fmt: skip
    assert out["backend"] == "local"
    assert out["state"] == SweepState.FINISHED
    store = RunStore(tmp_path)
    assert len(out["runs"]) == 8
    assert sorted(store.list()) == sorted(r["run_id"] for r in out["runs"])
    for run in out["runs"]:
        assert run["state"] == RunState.FINISHED
        assert {"run_id", "config", "precision_at_1", "r_precision", "map_at_r", "seconds"} <= set(
            run
        )
        assert run["worker"]["pid"] == os.getpid()
        assert run["seconds"] > 0
        assert run["config"]["seed"] == run["seed"]
        assert run["config"]["lr"] == run["cell"]["lr"]
    for cell in out["cells"]:
        scores = [
            r["map_at_r"]
            for r in out["runs"]
            if r["cell"] == {"margin": cell["margin"], "lr": cell["lr"]}
        ]
        assert len(scores) == 2
        assert scores[0] != scores[1]
        assert cell["map_at_r_mean"] == pytest.approx(sum(scores) / 2)
        assert cell["map_at_r_sd"] == pytest.approx(abs(scores[0] - scores[1]) / math.sqrt(2))


def test_the_json_state_is_the_final_one_even_when_its_write_is_slow(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a runner that reports itself done before its final status is on disk: the CLI
    then printed "running" for a finished sweep (seen once in a full run under load)."""
    write = SweepStore.set_status

    def slow_final_write(self: SweepStore, sweep_id: str, **fields: Any) -> None:
        if fields.get("state") not in (None, SweepState.RUNNING):
            time.sleep(0.5)
        write(self, sweep_id, **fields)

    monkeypatch.setattr(SweepStore, "set_status", slow_final_write)
    out = sweep_json(capsys, "--grid", "margin=0.1", "--runs", str(tmp_path))
    assert out["state"] == SweepState.FINISHED


def train_again_until_stopped(store: RunStore, sweep: Sweep, index: int, at_step: int) -> None:
    """Train run ``index`` of ``sweep`` again from scratch, stopped by its control at ``at_step``
    (a checkpoint is written there, as at every stop)."""
    run = sweep.runs[index]
    store.delete(run.run_id)
    store.create(sweep.config(run), run.run_id)
    halted = jobs.train_and_save(
        sweep.config(run), store, run.run_id, control=lambda step: step < at_step
    )
    assert halted is RunState.STOPPED
    assert store.status(run.run_id)["step"] == at_step


def test_resume_trains_only_missing_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A sweep with one run deleted and one stopped half way: --resume trains those two only.

    Catches a resume that retrains finished runs (their status would be rewritten), that
    restarts a stopped run instead of continuing it from its checkpoint (snapshot 0 would be
    rewritten), or that forgets a run that was never created.
    """
    out = sweep_json(capsys, "--grid", "margin=0.1,0.3", "--seeds", "2", "--runs", str(tmp_path))
    store = RunStore(tmp_path)
    sweep = SweepStore(store).load(out["sweep_id"])
    gone, stopped, *kept = [r.run_id for r in sweep.runs]
    store.delete(gone)
    train_again_until_stopped(store, sweep, 1, at_step=3)
    snapshot_0 = store.path(stopped) / "snapshots" / "00000000.npz"
    before = {r: (store.path(r) / "status.json").stat().st_mtime_ns for r in kept}
    written = snapshot_0.stat().st_mtime_ns
    assert [(r.run_id, resume) for r, resume in missing_runs(store, sweep)] == [
        (gone, False),
        (stopped, True),
    ]
    again = sweep_json(capsys, "--resume", out["sweep_id"], "--runs", str(tmp_path), tiny=False)
    assert again["state"] == SweepState.FINISHED
    assert all(r["state"] == RunState.FINISHED for r in again["runs"])
    assert {r: (store.path(r) / "status.json").stat().st_mtime_ns for r in kept} == before
    assert snapshot_0.stat().st_mtime_ns == written
    first = {r["run_id"]: r["map_at_r"] for r in out["runs"]}
    assert {r["run_id"]: r["map_at_r"] for r in again["runs"]} == first  # deterministic
    assert cell_results(store, sweep)["finished"].tolist() == [2, 2]


def test_a_run_interrupted_before_its_checkpoint_is_trained_again_from_a_clean_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A run killed after its first snapshots but before any checkpoint: --resume trains it
    from step 0 in a fresh folder, and it ends as the uninterrupted run did.

    Catches: the old folder kept (``SweepRunner._prepare`` not deleting it): the new training
    writes the same files again, but what the kill left half-written (a temporary file of
    ``runs.atomic_write_bytes``) would stay in the run's folder for good.
    """
    out = sweep_json(capsys, "--seeds", "1", "--runs", str(tmp_path))
    store = RunStore(tmp_path)
    sweep = SweepStore(store).load(out["sweep_id"])
    (run_id,) = [r.run_id for r in sweep.runs]
    want = store.history(run_id)
    train_again_until_stopped(store, sweep, 0, at_step=3)  # then as a kill at step 3 left it:
    folder = store.path(run_id)
    (folder / "checkpoint.pt").unlink()  # killed while the checkpoint was being written:
    (folder / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    store.set_status(run_id, state=RunState.INTERRUPTED)
    assert len(store.history(run_id)) == 2  # the rows of steps 0 and 3 are on disk
    assert [(r.run_id, resume) for r, resume in missing_runs(store, sweep)] == [(run_id, False)]
    again = sweep_json(capsys, "--resume", out["sweep_id"], "--runs", str(tmp_path), tiny=False)
    assert [r["state"] for r in again["runs"]] == [RunState.FINISHED]
    assert store.history(run_id)["step"].tolist() == want["step"].tolist() == [0, 3, 6]
    assert sorted(p.name for p in folder.rglob("*.tmp")) == []
    assert again["runs"][0]["map_at_r"] == out["runs"][0]["map_at_r"]


def test_resume_refuses_new_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Catches --resume silently ignoring a changed grid (the saved one is what resumes)."""
    out = sweep_json(capsys, "--runs", str(tmp_path))
    err = refused(capsys, "--resume", out["sweep_id"], "--runs", str(tmp_path))
    assert "--resume continues a sweep with its saved grid; drop --" in err


def test_dead_driver_reads_incomplete(tmp_path: Path) -> None:
    """Catches a sweep that reads "running" forever after its driver process was killed."""
    sweeps = SweepStore(RunStore(tmp_path))
    sweep = build_sweep(make_config(steps=6), [], 1)
    sweeps.save(sweep)
    sweeps.mark_running(sweep.sweep_id, "local")
    assert sweeps.status(sweep.sweep_id)["state"] == SweepState.RUNNING
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    sweeps.set_status(sweep.sweep_id, pid=int(dead.stdout))
    assert sweeps.status(sweep.sweep_id)["state"] == SweepState.INCOMPLETE
    assert sweeps.load(sweep.sweep_id) == sweep
    assert sweeps.list() == [sweep.sweep_id]


def test_a_parameter_that_one_of_the_swept_losses_lacks_is_refused_not_dropped() -> None:
    """A loss axis of triplet and contrastive beside a ``neg_margin`` axis: the triplet cells
    cannot take it. Catches: the parameter silently dropped where a loss lacks it (the
    triplet cells would repeat one run per margin and read as a margin sweep)."""
    axes = [
        Axis(name="loss", values=("triplet", "contrastive")),
        Axis(name="neg_margin", values=(0.5, 1.0)),
    ]
    with pytest.raises(ConfigError, match="neg_margin"):
        build_sweep(make_config(miner="all"), axes, 1)


def test_cells_count_only_finished_runs_and_a_stopped_run_keeps_the_sweep_open(
    tmp_path: Path,
) -> None:
    """Three seeds of one cell: finished, failed, stopped at step 4 without a checkpoint.

    Catches: a cell that counts every run as finished, a sweep read as finished while a
    stopped run can still train, a progress table that loses the stopped run's step, and a
    stopped run without a checkpoint "resumed" (it must train again from scratch).
    """
    store = RunStore(tmp_path)
    sweep = build_sweep(make_config(steps=6), [], 3)
    SweepStore(store).save(sweep)
    done, failed, stopped = sweep.runs
    for run, state, step in (
        (done, RunState.FINISHED, 6),
        (failed, RunState.FAILED, 6),
        (stopped, RunState.STOPPED, 4),
    ):
        store.create(cell_config(sweep.base, sweep.cells[run.cell], run.seed), run.run_id)
        metrics = {"map_at_r": 0.5, "precision_at_1": 0.7, "r_precision": 0.6}
        store.set_status(run.run_id, state=state, step=step, final_metrics=metrics)
    row = cell_results(store, sweep).iloc[0]
    assert (row["runs"], row["finished"]) == (3, 1)
    assert math.isnan(row["map_at_r_sd"])  # one finished run: no spread
    assert sweep_state(store, sweep) is SweepState.INCOMPLETE
    assert sweep_state(store, sweep, stopped=True) is SweepState.STOPPED
    assert progress(store, sweep)["step"].tolist() == [6, 6, 4]
    assert missing_runs(store, sweep) == [(stopped, False)]
    store.save_checkpoint(stopped.run_id, {"step": 4})
    assert missing_runs(store, sweep) == [(stopped, True)]
