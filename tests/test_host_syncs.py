"""Host syncs per training step, counted on the CPU as they would stall a GPU.

``devices.HostSyncCounter`` counts the calls that make Python wait for the device: scalar reads
(``aten._local_scalar_dense``: ``.item()``, ``int()``, ``float()``, ``bool()``), ``.tolist()``,
``.cpu()``, data-dependent shapes (``nonzero``, boolean indexing) and ``cuda.synchronize``.
"""

from __future__ import annotations

import pytest
import torch

from dml_core import train
from dml_core.config import make_config
from dml_core.devices import HostSyncCounter
from dml_core.step_stats import StepStats, mean_stats
from dml_core.train import FAST_PATHS, Trainer

STEPS = 6


def test_the_counter_sees_every_kind_of_host_read() -> None:
    x = torch.arange(6.0)
    reads = [
        lambda: x.sum().item(),
        lambda: int(x.max()),
        lambda: float(x.mean()),
        lambda: bool((x > 0).all()),
        lambda: x.tolist(),
        lambda: x.cpu(),
        lambda: x.nonzero(),
        lambda: x[x > 2],
    ]
    for read in reads:
        with HostSyncCounter() as counter:
            read()
        assert counter.total == 1, counter.counts
    with HostSyncCounter() as counter:
        (x * 2 + 1).sort().values.cumsum(0).topk(2)  # device work only
    assert counter.total == 0


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_the_fused_path_syncs_at_most_twice_per_step(net: str) -> None:
    trainer = Trainer(make_config(net=net, steps=100, probe_size=50, device="cpu"), fast=FAST_PATHS)
    assert trainer.fused is not None
    trainer.train_step()
    with HostSyncCounter() as counter:
        window = [trainer.train_step() for _ in range(STEPS)]
    assert counter.total <= 2 * STEPS, counter.counts
    with HostSyncCounter() as counter:  # at the snapshot: all the interval's numbers at once
        stats = mean_stats(window)
    assert counter.total <= 2, counter.counts
    assert stats["mining"]["tuples_per_batch"] > 0


def test_device_statistics_read_as_the_old_per_step_numbers() -> None:
    trainer = Trainer(make_config(steps=10, probe_size=50, device="cpu"), fast=())
    stats = trainer.train_step()
    assert isinstance(stats, StepStats)
    assert set(stats) >= {"loss", "tuples", "active", "active_fraction"}
    assert isinstance(stats["tuples"], int)
    assert stats["active_fraction"] == pytest.approx(stats["active"] / stats["tuples"])
    assert sum(stats["kind_shares"].values()) == pytest.approx(1.0)


def test_the_clock_waits_for_the_device_before_each_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[int] = []
    trainer = Trainer(make_config(steps=10, snapshot_every=5, probe_size=50, device="cpu"))
    monkeypatch.setattr(train, "synchronize", lambda device: waits.append(trainer.step))
    assert [s.step for s in trainer.run()] == [0, 5, 10]
    assert waits == [5, 10]
