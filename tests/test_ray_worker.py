"""A Ray worker's store (``ray_worker.StreamingStore``) against a real channel actor.

On a real local Ray instance (``ray.init(num_cpus=2)``, once per module); the driver's side
and whole runs on Ray are in ``tests/test_ray_backend.py``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import pytest
import torch

from dml_core.runs import RunState

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("ray_instance")  # tests/conftest.py: one per module


def taken(channel: Any) -> list[tuple]:
    """Every record the channel holds, in order (as the driver takes them)."""
    return [
        record for _, parcel in ray.get(channel.take.remote()) for record in pickle.loads(parcel)
    ]


def checkpoint_steps(records: list[tuple]) -> list[int]:
    """The step of each checkpoint among ``records``, as the driver would write it."""
    return [
        int(torch.load(io.BytesIO(args[0]), weights_only=True)["step"])
        for _, method, args, _ in records
        if method == "save_checkpoint_bytes"
    ]


def test_a_worker_sends_its_writes_in_one_call_per_status_change() -> None:
    """The worker's store sends a snapshot, its checkpoint and its step's status as one
    parcel (one channel call), in order, without the run's pid (the driver's stays); a
    write after them waits for the next status change or the final flush.

    Catches (tried once): one channel call per write (four parcels, not two).
    """
    from dml_core.services.ray_worker import Channel, StreamingStore

    channel = Channel.remote()  # type: ignore[attr-defined]
    store = StreamingStore(channel, None)
    store.save_snapshot("run", "snapshot")
    store.save_checkpoint("run", {"step": 5})
    store.set_status("run", step=5, pid=1)
    store.save_embeddings("run", "embeddings")
    (group,) = ray.get(channel.take.remote())  # the embeddings wait
    snapshot, checkpoint, status = [record[1:] for record in pickle.loads(group[1])]
    assert snapshot == ("save_snapshot", ("snapshot",), {})
    assert status == ("set_status", (), {"step": 5})
    method, (data,), _ = checkpoint  # serialised on the worker, written as it came
    assert method == "save_checkpoint_bytes"
    assert torch.load(io.BytesIO(data), weights_only=True) == {"step": 5}
    store.flush()
    (rest,) = ray.get(channel.take.remote())
    assert pickle.loads(rest[1]) == [("run", "save_embeddings", ("embeddings",), {})]
    assert ray.get(channel.backlog.remote("run")) == 0
    ray.kill(channel)


def test_a_checkpoint_goes_at_most_every_so_often_and_the_newest_with_each_change() -> None:
    """While a run trains, its checkpoint travels at most every ``CHECKPOINT_EVERY_S`` (the
    first at once); the newest kept back goes, serialised when it was saved, just before a
    change of state or phase, and at the final flush.

    Catches: every checkpoint sent (steps 0, 5, 10); the kept one lost at a pause (a run
    stopped or killed there would resume from step 0) or at the end; an older one kept
    instead of the newest; a state serialised when sent (the trainer's tensors have moved on
    to step 99 by then).
    """
    from dml_core.services.ray_worker import Channel, StreamingStore

    channel = Channel.remote()  # type: ignore[attr-defined]
    store = StreamingStore(channel, None)
    state = {"step": torch.tensor(0)}  # the trainer's tensors, changed in place

    def snapshot(step: int) -> None:
        state["step"].fill_(step)
        store.save_snapshot("run", step)
        store.save_checkpoint("run", state)
        store.set_status("run", step=step)

    for step in (0, 5, 10):
        snapshot(step)
    state["step"].fill_(99)
    store.set_status("run", state=RunState.PAUSED)
    records = taken(channel)
    assert checkpoint_steps(records) == [0, 10]
    assert [r[1] for r in records[-2:]] == ["save_checkpoint_bytes", "set_status"]
    snapshot(15)
    store.set_status("run", phase="final evaluation")
    snapshot(20)
    store.flush()
    assert checkpoint_steps(taken(channel)) == [15, 20]
    ray.kill(channel)


def test_with_no_interval_every_snapshot_takes_its_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``CHECKPOINT_EVERY_S`` = 0: each snapshot's checkpoint goes in its snapshot's parcel."""
    from dml_core.services import ray_worker

    monkeypatch.setattr(ray_worker, "CHECKPOINT_EVERY_S", 0.0)
    channel = ray_worker.Channel.remote()  # type: ignore[attr-defined]
    store = ray_worker.StreamingStore(channel, None)
    for step in (0, 5, 10):
        store.save_snapshot("run", step)
        store.save_checkpoint("run", {"step": step})
        store.set_status("run", step=step)
    parcels = ray.get(channel.take.remote())
    assert [checkpoint_steps(pickle.loads(parcel)) for _, parcel in parcels] == [[0], [5], [10]]
    ray.kill(channel)


def test_a_puts_answer_brings_the_order_and_the_newest_answer_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The channel answers each put with the run's order, so a worker that sends often asks
    for it rarely; of a question's answer and a put's, the one sent later counts.

    Here the worker asks no question after the first (``ORDER_EVERY_S`` is made endless):
    a stop set after that reaches it only with a put's answer. Then a question answered
    "stop" before a "run" came with a later put: the run goes on.
    Catches: the order read from questions alone (the stop never arrives); a question's
    older answer taken over a put's newer one (the run would stop after its resume).
    """
    from dml_core.services import ray_worker

    monkeypatch.setattr(ray_worker, "ORDER_EVERY_S", float("inf"))
    channel = ray_worker.Channel.remote()  # type: ignore[attr-defined]
    store = ray_worker.StreamingStore(channel, None)
    control = ray_worker.RemoteControl(channel, store, "run")
    assert control.first()
    ray.get(channel.set_order.remote("run", "stop"))
    assert control(0)  # nothing has told it yet
    store.set_status("run", step=1)
    store.flush()  # the put's answer is in
    assert not control(1)

    monkeypatch.setattr(ray_worker, "ORDER_EVERY_S", 0.0)  # a question at every read
    control._read()  # asks, while the order is still "stop"
    control._answer.result()  # ... and its answer ("stop") is in
    ray.get(channel.set_order.remote("run", "run"))
    store.set_status("run", step=2)
    store.flush()  # a later put answered "run"
    assert control(2)
    ray.kill(channel)
