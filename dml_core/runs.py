"""RunStore: every run on disk under ``<root>/<run-id>/``, written atomically.

Layout of a run directory::

    config.json         the RunConfig
    status.json         state (a ``RunState``), phase, message, device, step, final metrics,
                        timestamps
    label.txt           the name a user gave the run (optional; see ``RunStore.set_label``)
    metrics.csv         one row per snapshot (``Snapshot.scalars``), read with pandas
    snapshots/NNNNNNNN.npz   one file per snapshot (arrays + scalars as JSON)
    checkpoint.pt       the last good training state (weights, optimiser, step, RNG)
    embeddings.npz      the query and reference embeddings of the final evaluation (or of
                        the Retrieval page's "Compute full index"), with the checkpoint step
                        they belong to (``RunStore.save_embeddings``)

Every file is written to a temporary file in the same directory, flushed, fsynced and moved
into place with ``os.replace``, so a process killed at any moment leaves each file either
old or new, never half-written, and the run always loads.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import threading
import time
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dml_core.config import RunConfig
from dml_core.errors import ConfigError
from dml_core.files import atomic_write_bytes, atomic_write_json, locked
from dml_core.snapshot import ARRAY_FIELDS, OPTIONAL_ARRAY_FIELDS, Snapshot

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
LABEL_MAX = 80
EMBEDDINGS_FILE = "embeddings.npz"


class RunState(StrEnum):
    """Where a run is in its life; the value is what status.json stores.

    queued -> starting -> running <-> paused, then one of the final states: finished (every
    step done), stopped (by the user), diverged (NaN/inf), failed (an error), interrupted (its
    process died while it was active; read from disk, never set by a job).
    """

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


ACTIVE = frozenset({RunState.QUEUED, RunState.STARTING, RunState.RUNNING, RunState.PAUSED})
FINAL = frozenset(RunState) - ACTIVE
RESUMABLE = frozenset({RunState.INTERRUPTED, RunState.STOPPED})  # with a checkpoint


def _process_alive(pid: Any) -> bool:
    """Whether a process with this id exists on this machine (False for None)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _ended(pid)


def _ended(pid: int) -> bool:
    """Whether the process has ended and waits to be reaped (a zombie; Linux's /proc only).

    A run's training process whose server was killed ends with it, and whoever adopts it may
    reap it late: until then ``os.kill(pid, 0)`` still finds it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _row_step(row: str) -> float:
    """The step of one of metrics.csv's rows: "step" is the first column (``Snapshot.scalars``)."""
    return float(row.split(",", 1)[0])


def _with_row(table: Path, snap: Snapshot) -> str:
    """metrics.csv's text with the snapshot's row last (replacing a row of the same step).

    The old rows are kept as text, so a snapshot costs the same at the thousandth row as at
    the first. The row is written in the table's own column order (blank where the snapshot
    has no value); only when the snapshot brings a new column is the whole table parsed and
    rebuilt, with the new column last, so that later rows fit its header again. (A rebuild
    that took the snapshot's own order left a header that no later row matched: every
    snapshot of a run then parsed and rebuilt the table.)
    """
    new = pd.DataFrame([snap.scalars()])
    if not table.exists():
        return new.to_csv(index=False)
    old_header, *rows = table.read_text().splitlines()
    columns = old_header.split(",")
    if not set(new.columns) <= set(columns):  # a new column: rebuild the table around it
        history = pd.read_csv(table)
        return pd.concat([history[history.step != snap.step], new]).to_csv(index=False)
    row = new.reindex(columns=columns).to_csv(index=False, header=False).rstrip("\n")
    kept = [r for r in rows if _row_step(r) != snap.step]
    return "\n".join([old_header, *kept, row]) + "\n"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe directory name, else raise ConfigError."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise ConfigError(
            f"The run id {run_id!r} is invalid: use 1-100 letters, digits, '-' or '_', "
            "starting with a letter or digit."
        )
    return run_id


def new_run_id(cfg: RunConfig) -> str:
    """A fresh, sortable, unique id: ``20261123-154501-triplet-3fa2``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{cfg.loss.replace('_', '-')}-{secrets.token_hex(2)}"


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """A training state as ``checkpoint.pt`` holds it (``torch.save``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class RunEmbeddings:
    """Every query and reference image of a run embedded by the weights of one step.

    Attributes:
        step: the training step of the weights (the checkpoint's step).
        query_emb: (n_query, D) float32 embeddings of the query (test) images.
        query_labels: (n_query,) int64.
        ref_emb: (n_ref, D) float32 embeddings of the reference (train) images.
        ref_labels: (n_ref,) int64.
    """

    step: int
    query_emb: np.ndarray
    query_labels: np.ndarray
    ref_emb: np.ndarray
    ref_labels: np.ndarray


@dataclass(frozen=True)
class RunRecord:
    """A run as read from disk."""

    run_id: str
    path: Path
    config: RunConfig
    status: dict[str, Any]
    history: pd.DataFrame
    snapshot_steps: tuple[int, ...]


class RunStore:
    """Runs on disk: create, save snapshots and checkpoints, list, load, delete.

    Args:
        root: the runs directory (created if missing).
    """

    def __init__(self, root: str | Path = "runs") -> None:
        self.root = Path(root)
        self._status_lock = threading.Lock()  # jobs and pages update status.json concurrently

    def path(self, run_id: str) -> Path:
        """Directory of a run (the id is validated first)."""
        return self.root / check_run_id(run_id)

    def exists(self, run_id: object) -> bool:
        """Whether ``run_id`` names a saved run (False for anything that is not a valid id)."""
        return (
            isinstance(run_id, str)
            and bool(RUN_ID.match(run_id))
            and (self.root / run_id / "config.json").exists()
        )

    def create(self, cfg: RunConfig, run_id: str | None = None) -> str:
        """Make the directory of a new run and write its config; never overwrites a run."""
        run_id = check_run_id(new_run_id(cfg) if run_id is None else run_id)
        path = self.root / run_id
        try:
            (path / "snapshots").mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise ConfigError(
                f"A run named {run_id!r} exists already; choose another name."
            ) from None
        except OSError as err:
            raise OSError(f"Cannot create the run directory {path}: {err.strerror}.") from err
        atomic_write_json(path / "config.json", cfg.model_dump(mode="json"))
        self.set_status(run_id, state=RunState.QUEUED, created=time.time(), pid=os.getpid())
        return run_id

    def set_status(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json (with an ``updated`` timestamp)."""
        file = self.path(run_id) / "status.json"
        # read-modify-write: one writer at a time, in this process and across processes (the
        # app's runs train in child processes that write their status beside the server)
        with self._status_lock, locked(file):
            status = json.loads(file.read_text()) if file.exists() else {}
            status.update(fields, updated=time.time())
            atomic_write_json(file, status)
        return status

    def status(self, run_id: str) -> dict[str, Any]:
        """The run's status.json ({} if absent); a run whose process died reads "interrupted".

        "state" is read as a ``RunState``. A job records the id of the process training it. If
        the state says the run is still active but that process is gone (killed, crashed,
        server restarted), the run was interrupted: it can be resumed from its last checkpoint.
        """
        file = self.path(run_id) / "status.json"
        status = json.loads(file.read_text()) if file.exists() else {}
        if status.get("state") in set(RunState):
            status["state"] = RunState(status["state"])
        if status.get("state") in ACTIVE and not _process_alive(status.get("pid")):
            status["state"] = RunState.INTERRUPTED
            status["message"] = (
                "This run was interrupted (its process stopped) at step "
                f"{status.get('step', 0)}. Resume it from its last checkpoint."
            )
        return status

    def save_snapshot(self, run_id: str, snap: Snapshot) -> None:
        """Write one snapshot file and append its scalars to metrics.csv."""
        path = self.path(run_id)
        arrays = {k: getattr(snap, k) for k in ARRAY_FIELDS}
        arrays |= {
            k: getattr(snap, k) for k in OPTIONAL_ARRAY_FIELDS if getattr(snap, k) is not None
        }
        meta = {
            k: v
            for k, v in snap.__dict__.items()
            if k not in ARRAY_FIELDS and k not in OPTIONAL_ARRAY_FIELDS
        }
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        atomic_write_bytes(path / "snapshots" / f"{snap.step:08d}.npz", buffer.getvalue())
        table = path / "metrics.csv"
        atomic_write_bytes(table, _with_row(table, snap).encode())

    def forget_after(self, run_id: str, step: int) -> None:
        """Drop the snapshots and metrics rows after ``step``, where a resume starts again.

        What an attempt recorded after its last checkpoint (a Ray worker sends one at most
        every 10 s) is retrained by the resume; a resume that then stops earlier would
        otherwise show the dead attempt's later points.
        """
        folder = self.path(run_id) / "snapshots"
        for later in (s for s in self.snapshot_steps(run_id) if s > step):
            (folder / f"{later:08d}.npz").unlink(missing_ok=True)
        table = self.path(run_id) / "metrics.csv"
        if table.exists():
            header, *rows = table.read_text().splitlines()
            kept = [r for r in rows if _row_step(r) <= step]
            if len(kept) < len(rows):
                atomic_write_bytes(table, "\n".join([header, *kept, ""]).encode())

    def save_checkpoint(self, run_id: str, state: dict[str, Any]) -> None:
        """Atomically write the training state (``Trainer.state_dict``)."""
        self.save_checkpoint_bytes(run_id, checkpoint_bytes(state))

    def save_checkpoint_bytes(self, run_id: str, data: bytes) -> None:
        """Atomically write a training state already serialised by ``checkpoint_bytes``.

        A Ray worker serialises its checkpoints; the driver writes the bytes as they came.
        """
        atomic_write_bytes(self.path(run_id) / "checkpoint.pt", data)

    def has_checkpoint(self, run_id: str) -> bool:
        """Whether the run has a saved training state to resume from."""
        return (self.path(run_id) / "checkpoint.pt").exists()

    def load_checkpoint(self, run_id: str) -> dict[str, Any]:
        """The last saved training state, in host memory.

        Loaded with ``weights_only=True`` (no code runs) and ``map_location="cpu"``: a run
        trained on a GPU reads on a machine without one, and reading it on a GPU machine (the
        Retrieval page, Miner view, a resume) puts nothing on the GPU by itself; whoever uses
        the state copies it onto its own device (``Trainer.load_state_dict``).
        """
        return torch.load(
            self.path(run_id) / "checkpoint.pt", map_location="cpu", weights_only=True
        )

    def save_embeddings(self, run_id: str, emb: RunEmbeddings) -> None:
        """Atomically write the query and reference embeddings (uncompressed float32 .npz).

        70k FashionMNIST images at D = 32 take 9 MB: one read instead of a second
        embedding pass (15 s on 2 cores) whenever a page needs every embedding.
        """
        arrays = {
            "query_emb": np.asarray(emb.query_emb, dtype=np.float32),  # (n_query, D)
            "query_labels": np.asarray(emb.query_labels, dtype=np.int64),  # (n_query,)
            "ref_emb": np.asarray(emb.ref_emb, dtype=np.float32),  # (n_ref, D)
            "ref_labels": np.asarray(emb.ref_labels, dtype=np.int64),  # (n_ref,)
        }
        buffer = io.BytesIO()
        np.savez(buffer, step=np.int64(emb.step), **arrays)
        atomic_write_bytes(self.path(run_id) / EMBEDDINGS_FILE, buffer.getvalue())

    def embeddings_step(self, run_id: str) -> int | None:
        """The step of the saved embeddings (None without them); reads only that number."""
        file = self.path(run_id) / EMBEDDINGS_FILE
        if not file.exists():
            return None
        with np.load(file) as f:
            return int(f["step"])

    def load_embeddings(self, run_id: str) -> RunEmbeddings | None:
        """The saved embeddings (no pickle: ``allow_pickle=False``), or None without them."""
        file = self.path(run_id) / EMBEDDINGS_FILE
        if not file.exists():
            return None
        with np.load(file) as f:
            return RunEmbeddings(
                int(f["step"]), f["query_emb"], f["query_labels"], f["ref_emb"], f["ref_labels"]
            )

    def history(self, run_id: str) -> pd.DataFrame:
        """The metrics table: one row per snapshot, sorted by step."""
        file = self.path(run_id) / "metrics.csv"
        if not file.exists():
            return pd.DataFrame()
        return pd.read_csv(file).sort_values("step").reset_index(drop=True)

    def snapshot_steps(self, run_id: str) -> tuple[int, ...]:
        """Steps at which snapshots were saved, ascending."""
        folder = self.path(run_id) / "snapshots"
        return tuple(sorted(int(f.stem) for f in folder.glob("*.npz") if f.stem.isdigit()))

    def load_snapshot(self, run_id: str, step: int) -> Snapshot:
        """Read one snapshot back (no pickle: ``allow_pickle=False``).

        Files written before a field existed load with its default (no geometry, no class
        weights).
        """
        with np.load(self.path(run_id) / "snapshots" / f"{int(step):08d}.npz") as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k: f[k] for k in ARRAY_FIELDS}
            arrays |= {k: f[k] for k in OPTIONAL_ARRAY_FIELDS if k in f.files}
        return Snapshot(**meta, **arrays)

    def list(self) -> list[str]:
        """Run ids, newest first (ids start with their creation time)."""
        if not self.root.is_dir():
            return []
        runs = [
            p.name
            for p in self.root.iterdir()
            if RUN_ID.match(p.name) and (p / "config.json").exists()
        ]
        return sorted(runs, key=lambda r: (self.status(r).get("created", 0), r), reverse=True)

    def config(self, run_id: str) -> RunConfig:
        """The run's config (ConfigError when there is no such run)."""
        file = self.path(run_id) / "config.json"
        if not file.exists():
            raise ConfigError(f"There is no run named {run_id!r} in {self.root}.")
        return RunConfig.model_validate_json(file.read_text())

    def set_label(self, run_id: str, text: str) -> None:
        """Name a run (shown instead of its id); an empty or blank text removes the name.

        The label lives in its own file, written atomically, so renaming a run while its job
        writes status.json can lose neither.

        Raises:
            ConfigError: no such run, or the text is longer than 80 characters or has a
                line break or another control character.
        """
        self.config(run_id)  # the run must exist
        if not isinstance(text, str):
            raise ConfigError(f"The label of a run must be text. Got {type(text).__name__}.")
        text = text.strip()
        if len(text) > LABEL_MAX:
            raise ConfigError(
                f"The label of a run must be at most {LABEL_MAX} characters. Got {len(text)}."
            )
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
            raise ConfigError("The label of a run must be one line, without control characters.")
        file = self.path(run_id) / "label.txt"
        if text:
            atomic_write_bytes(file, text.encode("utf-8"))
        else:
            file.unlink(missing_ok=True)

    def label(self, run_id: str) -> str | None:
        """The name a user gave the run, or None."""
        file = self.path(run_id) / "label.txt"
        return file.read_text(encoding="utf-8") if file.exists() else None

    def load(self, run_id: str) -> RunRecord:
        """Config, status, history and snapshot list of a run."""
        config = self.config(run_id)
        return RunRecord(
            run_id,
            self.path(run_id),
            config,
            self.status(run_id),
            self.history(run_id),
            self.snapshot_steps(run_id),
        )

    def delete(self, run_id: str) -> None:
        """Remove a run directory and everything in it."""
        path = self.path(run_id)
        if not (path / "config.json").exists():
            raise ConfigError(f"There is no run named {run_id!r} in {self.root}.")
        shutil.rmtree(path)
