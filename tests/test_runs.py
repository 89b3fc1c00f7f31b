import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.runs import (
    ACTIVE,
    FINAL,
    RESUMABLE,
    RunEmbeddings,
    RunState,
    RunStore,
    atomic_write_bytes,
)
from dml_core.snapshot import Snapshot


def make_snapshot(step: int, n: int = 20, dim: int = 4) -> Snapshot:
    rng = np.random.default_rng(step)
    return Snapshot(
        step=step, samples_seen=step * 10, elapsed=step * 0.1, loss=1.0 / (step + 1),
        active_fraction=0.5, probe_emb=rng.normal(size=(n, dim)).astype(np.float32),
        probe_labels=np.arange(n) % 3, pos_dist=rng.random(30).astype(np.float32),
        neg_dist=rng.random(40).astype(np.float32), kind_shares={"easy": 0.2, "semi-hard": 0.8},
        metrics={"precision_at_1": 0.5}, collapse={"mean_distance": 1.2}, extras={"beta": 1.1},
    )  # fmt: skip


def test_round_trip(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(loss="contrastive", miner="all")
    run_id = store.create(cfg)
    for step in (0, 25, 50):
        store.save_snapshot(run_id, make_snapshot(step))
    store.save_checkpoint(run_id, {"step": 50, "w": np.zeros(3).tolist()})
    record = store.load(run_id)
    assert record.config == cfg
    assert record.snapshot_steps == (0, 25, 50)
    assert record.history["step"].tolist() == [0, 25, 50]
    assert record.history["beta"].tolist() == [1.1] * 3
    back = store.load_snapshot(run_id, 25)
    want = make_snapshot(25)
    np.testing.assert_array_equal(back.probe_emb, want.probe_emb)
    assert back.kind_shares == want.kind_shares
    assert back.metrics == want.metrics
    assert store.load_checkpoint(run_id)["step"] == 50
    assert store.list() == [run_id]
    assert store.exists(run_id)
    store.delete(run_id)
    assert store.list() == []


def test_a_step_saved_again_replaces_its_row_and_new_columns_join_the_table(
    tmp_path: Path,
) -> None:
    """The metrics table keeps one row per step, the newest, in every column.

    Catches: a row appended without dropping the old one of its step (a resume rewrites the
    snapshots after its checkpoint: step 10 would be there twice), a row matched by a prefix
    of the step ("10" dropping "100"), and a snapshot with a new column written under the old
    header (its values shifted into the wrong columns, or lost).
    """
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    for step in (0, 10, 100):
        store.save_snapshot(run_id, make_snapshot(step))
    again = dataclasses.replace(make_snapshot(10), loss=7.5)
    store.save_snapshot(run_id, again)
    history = store.history(run_id)
    assert history["step"].tolist() == [0, 10, 100]
    assert history["loss"].tolist() == [1.0, 7.5, 1.0 / 101]
    metrics = {"precision_at_1": 0.5, "map_at_r": 0.25}  # a column amid the others
    wider = dataclasses.replace(make_snapshot(200), metrics=metrics, extras={"beta": 1.3})
    store.save_snapshot(run_id, wider)
    history = store.history(run_id)
    assert history["step"].tolist() == [0, 10, 100, 200]
    assert history["map_at_r"].iloc[:3].isna().all()
    assert history["map_at_r"].iloc[3] == 0.25
    assert history["mean_distance"].tolist() == [1.2] * 4
    assert history["beta"].tolist() == [1.1, 1.1, 1.1, 1.3]
    assert history["loss"].iloc[3] == 1.0 / 201


def test_after_a_new_column_later_snapshots_do_not_parse_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a column came (step 10's metrics, amid the other columns), later snapshots with
    the same columns append their row as text, each value under its own column.

    Catches: a table rebuilt in the snapshot's own column order, whose header no later row
    matched, so that every later snapshot parsed and rebuilt the whole table (28 ms each in
    a Ray sweep's driver, 2026-11-29); a row appended in the snapshot's order under the
    table's header (values under the wrong columns).
    """
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    metrics = {"precision_at_1": 0.5, "map_at_r": 0.25}
    snaps = [make_snapshot(0)]
    snaps += [dataclasses.replace(make_snapshot(s), metrics=metrics) for s in (10, 20, 30, 40)]
    parsed = []
    read_csv = pd.read_csv
    with monkeypatch.context() as patch:
        patch.setattr(pd, "read_csv", lambda *a, **k: parsed.append(a) or read_csv(*a, **k))
        for snap in snaps:
            store.save_snapshot(run_id, snap)
    assert len(parsed) == 1  # at step 10, when the metrics' columns came
    history = store.history(run_id)
    expected = pd.DataFrame([snap.scalars() for snap in snaps])
    assert set(history.columns) == set(expected.columns)
    pd.testing.assert_frame_equal(history[expected.columns], expected, check_dtype=False)


def test_list_is_newest_first_and_ids_never_collide(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    first = store.create(make_config(), "run-a")
    time.sleep(0.01)
    second = store.create(make_config(), "run-b")
    assert store.list() == [second, first]
    with pytest.raises(ConfigError, match="exists already"):
        store.create(make_config(), "run-a")


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", "", ".hidden", "x" * 101, "run id"])
def test_run_ids_cannot_escape_the_store(tmp_path: Path, bad: str) -> None:
    store = RunStore(tmp_path / "runs")
    with pytest.raises(ConfigError, match="run id"):
        store.create(make_config(), bad)
    with pytest.raises(ConfigError):
        store.load(bad)
    with pytest.raises(ConfigError):
        store.delete(bad)
    assert not store.exists(bad)
    assert not (tmp_path / "evil").exists()


def test_atomic_write_leaves_old_content_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_runs import make_snapshot
    from dml_core.runs import RunStore
    store = RunStore({runs!r})
    step = 0
    print("ready", flush=True)
    while True:
        store.save_snapshot("victim", make_snapshot(step, n=3000, dim=64))
        store.save_checkpoint("victim", {{"step": step, "blob": list(range(20000))}})
        step += 1
    """
)


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8])
def test_kill_9_during_writes_leaves_a_loadable_run(tmp_path: Path, delay: float) -> None:
    store = RunStore(tmp_path)
    store.create(make_config(), "victim")
    root = str(Path(__file__).resolve().parents[1])
    code = WRITER.format(root=root, runs=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    record = store.load("victim")
    assert len(record.snapshot_steps) >= 1
    for step in record.snapshot_steps:
        assert store.load_snapshot("victim", step).probe_emb.shape == (3000, 64)
    assert set(record.history["step"]) <= set(record.snapshot_steps)
    assert store.load_checkpoint("victim")["step"] >= 0


def test_states_are_one_enum_stored_as_the_old_strings(tmp_path: Path) -> None:
    assert set(RunState) == ACTIVE | FINAL
    assert not ACTIVE & FINAL
    assert RESUMABLE <= FINAL
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    status_file = tmp_path / run_id / "status.json"
    assert json.loads(status_file.read_text())["state"] == "queued"
    store.set_status(run_id, state=RunState.FINISHED)
    assert json.loads(status_file.read_text())["state"] == "finished"
    # a run saved before the enum, with a plain string, reads back as the enum member
    status = json.loads(status_file.read_text())
    status["state"] = "stopped"
    status_file.write_text(json.dumps(status))
    assert store.status(run_id)["state"] is RunState.STOPPED


def test_an_active_run_whose_process_died_reads_interrupted(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.set_status(run_id, state=RunState.RUNNING, pid=dead.pid, step=7)
    status = store.status(run_id)
    assert status["state"] is RunState.INTERRUPTED
    assert "step 7" in status["message"]


def test_label_is_saved_with_the_run_and_survives_a_reload(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    assert store.label(run_id) is None
    store.set_label(run_id, "  margin 0.2, semi-hard — first try ✓ ")
    assert RunStore(tmp_path).label(run_id) == "margin 0.2, semi-hard — first try ✓"
    assert store.load(run_id).config == make_config()  # nothing else touched
    store.set_label(run_id, "x" * 80)
    assert store.label(run_id) == "x" * 80
    store.set_label(run_id, "   ")  # blank: the name is removed
    assert store.label(run_id) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x" * 81, "at most 80 characters. Got 81"),
        ("two\nlines", "one line"),
        ("carriage\rreturn", "one line"),
        ("tab\there", "one line"),
        ("unicode\u2028line separator", "one line"),
        (42, "must be text"),
    ],
)
def test_bad_labels_are_refused_and_the_old_one_kept(
    tmp_path: Path, text: object, message: str
) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    store.set_label(run_id, "kept")
    with pytest.raises(ConfigError, match=message):
        store.set_label(run_id, text)  # type: ignore[arg-type]
    assert store.label(run_id) == "kept"


def test_label_needs_an_existing_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run named"):
        RunStore(tmp_path).set_label("nope", "a name")


def test_label_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the final rename fails; the old label stays, no temp file is left."""
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    store.set_label(run_id, "old name")
    before = sorted(p.name for p in (tmp_path / run_id).iterdir())

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dml_core.runs.os.replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.set_label(run_id, "new name")
    monkeypatch.undo()
    assert store.label(run_id) == "old name"
    assert sorted(p.name for p in (tmp_path / run_id).iterdir()) == before


def make_embeddings(step: int, n_query: int = 30, n_ref: int = 70, dim: int = 4) -> RunEmbeddings:
    rng = np.random.default_rng(step)
    return RunEmbeddings(
        step,
        rng.normal(size=(n_query, dim)),  # float64 in, float32 on disk
        np.arange(n_query) % 3,
        rng.normal(size=(n_ref, dim)),
        np.arange(n_ref) % 3,
    )


def test_embeddings_round_trip_as_float32(tmp_path: Path) -> None:
    """Catches: a file that loses the step, the labels, or keeps float64 (twice the bytes)."""
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    assert store.load_embeddings(run_id) is None
    assert store.embeddings_step(run_id) is None
    want = make_embeddings(40)
    store.save_embeddings(run_id, want)
    got = store.load_embeddings(run_id)
    assert got is not None
    assert got.step == store.embeddings_step(run_id) == 40
    assert got.query_emb.dtype == got.ref_emb.dtype == np.float32
    assert got.query_labels.dtype == got.ref_labels.dtype == np.int64
    np.testing.assert_array_equal(got.query_emb, want.query_emb.astype(np.float32))
    np.testing.assert_array_equal(got.ref_emb, want.ref_emb.astype(np.float32))
    np.testing.assert_array_equal(got.query_labels, want.query_labels)
    np.testing.assert_array_equal(got.ref_labels, want.ref_labels)


def test_embeddings_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the disk fills during the write (half the bytes, then ENOSPC at fsync).

    The earlier embeddings still load and no temporary file is left. Catches: writing the
    final file in place (``np.savez(path, ...)``): it would be half a file.
    """
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    store.save_embeddings(run_id, make_embeddings(10))
    before = sorted(p.name for p in (tmp_path / run_id).iterdir())
    fsync = os.fsync

    def full_disk(fd: int) -> None:
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.save_embeddings(run_id, make_embeddings(20, n_query=300, n_ref=700))
    monkeypatch.setattr(os, "fsync", fsync)
    got = store.load_embeddings(run_id)
    assert got is not None
    assert got.step == 10
    np.testing.assert_array_equal(got.ref_emb, make_embeddings(10).ref_emb.astype(np.float32))
    assert sorted(p.name for p in (tmp_path / run_id).iterdir()) == before


def test_geometry_and_class_weights_round_trip(tmp_path: Path) -> None:
    """Catches: class weights written into the JSON meta (or dropped), geometry left out of
    the metrics table."""
    store = RunStore(tmp_path)
    run_id = store.create(make_config(loss="arcface", miner="all"))
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(6, 4)).astype(np.float32)
    snap = dataclasses.replace(
        make_snapshot(10),
        geometry={"alignment": 0.4, "uniformity": -2.5, "effective_rank": 3.2},
        class_weights=weights,
        class_weight_labels=np.repeat(np.arange(3), 2),
    )
    store.save_snapshot(run_id, snap)
    store.save_snapshot(run_id, make_snapshot(20))  # a loss without class weights
    back = store.load_snapshot(run_id, 10)
    assert back.geometry == snap.geometry
    np.testing.assert_array_equal(back.class_weights, weights)
    np.testing.assert_array_equal(back.class_weight_labels, [0, 0, 1, 1, 2, 2])
    assert store.load_snapshot(run_id, 20).class_weights is None
    history = store.history(run_id)
    assert history["effective_rank"].tolist()[0] == 3.2
    assert history["uniformity"].tolist()[0] == -2.5


def test_snapshots_saved_before_geometry_and_class_weights_still_load(tmp_path: Path) -> None:
    """A snapshot file as save_snapshot wrote it before 2026-11-30: four arrays, no geometry."""
    store = RunStore(tmp_path)
    run_id = store.create(make_config())
    old = make_snapshot(5)
    arrays = ("probe_emb", "probe_labels", "pos_dist", "neg_dist")
    meta = {
        k: getattr(old, k)
        for k in ("step", "samples_seen", "elapsed", "loss", "active_fraction", "kind_shares",
                  "mining", "metrics", "collapse", "extras", "lines")
    }  # fmt: skip
    path = store.path(run_id) / "snapshots" / "00000005.npz"
    np.savez(path, meta=np.array(json.dumps(meta)), **{k: getattr(old, k) for k in arrays})
    back = store.load_snapshot(run_id, 5)
    assert back.geometry == {}
    assert back.class_weights is None
    assert back.class_weight_labels is None
    np.testing.assert_array_equal(back.probe_emb, old.probe_emb)
    assert back.collapse == {"mean_distance": 1.2}
