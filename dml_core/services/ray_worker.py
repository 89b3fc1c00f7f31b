"""What a run's Ray processes hold: the channel actor, and the worker's store and control.

``ray_backend.train_remote`` trains a run on a Ray worker against a ``StreamingStore``, whose
writes go, in groups, to the driver's ``Channel`` actor; ``RemoteControl`` reads the run's
order (run, pause, stop) from that channel. The driver side is ``ray_backend.RayExecutor``.
"""

from __future__ import annotations

import math
import pickle
import time
from typing import Any

import ray

from dml_core.runs import RunState, RunStore, checkpoint_bytes

ORDER_EVERY_S = 0.2
"""How often (at most) a worker asks the channel for its run's order."""
CHECKPOINT_EVERY_S = 10.0
"""How often (at most) a worker sends its run's checkpoint to the driver while it trains, and
with every change of state or phase (paused, stopped, final evaluation, finished). A
snapshot's checkpoint is 1.1 MB on the default digits run: sent with each snapshot, through
Ray's object store to the channel and on to the driver, it cost the sweep benchmark 0.025 of
its ratio. A worker that dies loses at most this much training: its run resumes from the
newest checkpoint the driver wrote."""
PAUSE_POLL_S = 0.1
MAX_BACKLOG = 12
"""Records a worker may have waiting in the channel before it waits for the driver (about
six snapshots with their status, and a checkpoint now and then): the driver writes each
snapshot with fsyncs, so a tiny run snapshotting every few steps would otherwise run far
ahead of what is on disk, and a stop would take as long as writing that backlog."""
WRITES = frozenset(n for n in vars(RunStore) if n.startswith("save_")) | {
    "set_status",
    "forget_after",
}
"""The RunStore methods a worker's records may replay on the driver."""
Record = tuple[str, str, tuple[Any, ...], dict[str, Any]]  # run id, method, args, kwargs


@ray.remote(num_cpus=0)
class Channel:
    """Records from workers to the driver, and each run's order from the driver to workers.

    The records are bytes pickled by the worker (``StreamingStore.post``): a channel that
    unpickled them would import torch and ``dml_core`` for their tensors and snapshots, seconds
    of CPU taken from the runs at a sweep's start. Its process imports nothing beyond Ray.
    """

    def __init__(self) -> None:
        self.parcels: list[tuple[str, bytes]] = []
        self.orders: dict[str, str] = {}
        self.waiting: dict[str, int] = {}  # records per run not taken yet

    def put(self, run_id: str, parcel: bytes, count: int) -> tuple[int, str]:
        """Append ``count`` pickled records of ``run_id``.

        Returns its records not taken, and its order: a worker that sends often need not ask
        for it apart.
        """
        self.parcels.append((run_id, parcel))
        self.waiting[run_id] = self.waiting.get(run_id, 0) + count
        return self.waiting[run_id], self.order(run_id)

    def backlog(self, run_id: str) -> int:
        """The run's records not taken yet."""
        return self.waiting.get(run_id, 0)

    def take(self) -> list[tuple[str, bytes]]:
        """Every record since the last call, in arrival order."""
        parcels, self.parcels = self.parcels, []
        self.waiting.clear()
        return parcels

    def set_order(self, run_id: str, order: str) -> None:
        """``run``, ``pause`` or ``stop``."""
        self.orders[run_id] = order

    def order(self, run_id: str) -> str:
        """The run's current order (``run`` unless told otherwise)."""
        return self.orders.get(run_id, "run")


class StreamingStore:
    """The RunStore a worker sees: reads what the driver sent, sends every write back.

    Writes travel in groups, one channel call each: a group is sent at each status change
    (``set_status``), so a snapshot goes with its checkpoint and its step's status, and the
    driver replays them together. A worker that dies loses at most the group it was filling.

    Args:
        channel: the driver's ``Channel``.
        checkpoint: the state to resume from (None: a new run).
    """

    def __init__(self, channel: Any, checkpoint: dict[str, Any] | None) -> None:
        self.channel = channel
        self.checkpoint = checkpoint
        self._group: list[Record] = []
        self._kept: Record | None = None  # the newest checkpoint not sent yet
        self._checkpoint_sent_at = -math.inf
        self._newest: tuple[float, Any] | None = None  # when the newest put left; its answer
        self._snapshot_put: Any = None  # the last snapshot put's answer: its backlog

    def send(self, run_id: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Add one write to the group (sent, in order, at the next status change)."""
        self._group.append((run_id, method, args, kwargs))

    def post(self) -> None:
        """Send the group as one pickled parcel; after a snapshot, mind the driver's backlog.

        The backlog looked at is the one the previous snapshot's put answered: that answer
        has long arrived by the next snapshot, so the worker does not wait for a round trip
        to the channel at each snapshot. So it may run one group further ahead than
        ``MAX_BACKLOG``.
        """
        if not self._group:
            return
        run_id, count = self._group[0][0], len(self._group)
        snapshot = any(method == "save_snapshot" for _, method, *_ in self._group)
        parcel = pickle.dumps(self._group, pickle.HIGHEST_PROTOCOL)
        self._group = []
        sent = time.perf_counter()
        answer = self.channel.put.remote(run_id, parcel, count).future()
        self._newest = (sent, answer)
        if snapshot:
            previous, self._snapshot_put = self._snapshot_put, answer
            backlog = 0 if previous is None else previous.result()[0]
            while backlog > MAX_BACKLOG:
                time.sleep(PAUSE_POLL_S)
                backlog = self.channel.backlog.remote(run_id).future().result()

    def order_since(self, since: float) -> tuple[float, str] | None:
        """The run's order as the newest put's answer says, if answered and sent after ``since``.

        Returns:
            (when that put left, the order), or None.
        """
        if self._newest is None or self._newest[0] <= since or not self._newest[1].done():
            return None
        return self._newest[0], self._newest[1].result()[1]

    def flush(self) -> None:
        """Send the group; wait until every write reached the channel (see RemoteControl)."""
        self._send_kept()
        self.post()
        if self._newest is not None:
            self._newest[1].result()

    def set_status(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Send a status change with the group; the driver's pid stays the run's ``pid``.

        A change of state or phase takes the checkpoint kept back along, before it.
        """
        fields.pop("pid", None)
        if "state" in fields or "phase" in fields:
            self._send_kept()
        if fields:
            self.send(run_id, "set_status", **fields)
        self.post()
        return fields

    def save_checkpoint(self, run_id: str, state: dict[str, Any]) -> None:
        """Serialise the state here, on the worker; send it if ``CHECKPOINT_EVERY_S`` passed.

        Otherwise it is kept back, replacing the one kept before, until a change of state or
        phase or the next checkpoint due. Serialised now: the state's tensors are the
        trainer's own, which the next steps change in place. The driver writes the bytes as
        they came (``RunStore.save_checkpoint_bytes``) instead of unpickling and saving again.
        """
        self._kept = (run_id, "save_checkpoint_bytes", (checkpoint_bytes(state),), {})
        if time.perf_counter() - self._checkpoint_sent_at >= CHECKPOINT_EVERY_S:
            self._send_kept()

    def _send_kept(self) -> None:
        """Add the checkpoint kept back, if any, to the group."""
        if self._kept is not None:
            self._group.append(self._kept)
            self._kept = None
            self._checkpoint_sent_at = time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        """Any ``RunStore.save_*`` (snapshots, checkpoints, embeddings) joins the group."""
        if name not in WRITES:
            raise AttributeError(f"A Ray worker's store cannot {name}: only writes are sent.")
        return lambda run_id, *args, **kwargs: self.send(run_id, name, *args, **kwargs)

    def has_checkpoint(self, run_id: str) -> bool:
        """Whether the driver sent a state to resume from."""
        return self.checkpoint is not None

    def load_checkpoint(self, run_id: str) -> dict[str, Any]:
        """The state the driver sent."""
        if self.checkpoint is None:
            raise FileNotFoundError(f"No checkpoint was sent for {run_id}.")
        return self.checkpoint


class RemoteControl:
    """The ``control`` of ``train_and_save`` on a worker: the driver's order, from the channel.

    A worker never calls ``ray.get`` or ``ray.wait``: a task blocked in them hands its CPU
    back to Ray, which then starts another run beside it (measured: 3 tasks at once on 2
    CPUs). Answers arrive as futures instead. The order comes with every answer to the
    store's puts (a snapshot's or a status's); a question of its own is asked only when the
    newest order known is ``ORDER_EVERY_S`` old and the last question was answered. Of two
    answers, the one sent later wins.
    """

    def __init__(self, channel: Any, store: StreamingStore, run_id: str) -> None:
        self.channel, self.store, self.run_id = channel, store, run_id
        self.order = "run"
        self._known_at = -math.inf  # when the order held was the channel's
        self._ask()

    def _ask(self) -> None:
        self._asked_at = time.perf_counter()
        self._answer = self.channel.order.remote(self.run_id).future()

    def _read(self) -> None:
        """Take the newest order answered (a put's or a question's); ask when it is old."""
        put = self.store.order_since(self._known_at)
        if put is not None:
            self._known_at, self.order = put
        if self._answer.done():
            if self._asked_at > self._known_at:
                self._known_at, self.order = self._asked_at, self._answer.result()
            if time.perf_counter() - self._known_at >= ORDER_EVERY_S:
                self._ask()

    def __call__(self, step: int = 0) -> bool:
        """Before a step: hold while paused; False once told to stop."""
        self._read()
        if self.order == "pause":
            self.store.set_status(self.run_id, state=RunState.PAUSED)
            while self.order == "pause":
                time.sleep(PAUSE_POLL_S)
                self._read()
            if self.order != "stop":
                self.store.set_status(self.run_id, state=RunState.RUNNING)
        return self.order != "stop"

    def first(self) -> bool:
        """Before training: the first answer; False if the run was stopped while queued."""
        self._known_at, self.order = self._asked_at, self._answer.result()
        self._ask()
        return self.order != "stop"
