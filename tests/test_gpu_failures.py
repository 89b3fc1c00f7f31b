"""How the GPU fails, simulated on the CPU: allocation failures free the run's memory and give
advice that helps, a device-side assert says to restart the server, checkpoints are copied to
host memory, and the final evaluation searches on the training device."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dml_core import evaluation
from dml_core.config import make_config
from dml_core.devices import CudaHealth, DeviceAssertError, out_of_memory
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import train_and_save
from dml_core.train import Trainer

TINY = {"steps": 20, "probe_size": 60, "embedding_dim": 8, "device": "cpu", "final_eval": False}
CUBLAS = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
CUDNN = "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"
ASSERT = (
    "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect."
)


def failing_run(tmp_path: Path, mp: pytest.MonkeyPatch, error: Exception) -> tuple[RunStore, str]:
    """A run whose third step raises ``error``."""

    def step(self: Trainer) -> dict:
        if self.step == 2:
            raise error
        return original(self)

    original = Trainer.train_step
    mp.setattr(Trainer, "train_step", step)
    store = RunStore(tmp_path)
    cfg = make_config(**TINY)
    run_id = store.create(cfg)
    assert train_and_save(cfg, store, run_id) is RunState.FAILED
    return store, run_id


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(CUBLAS),
        RuntimeError(CUDNN),
    ],
)
def test_allocation_failures_are_out_of_memory_with_advice_that_helps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    store, run_id = failing_run(tmp_path, monkeypatch, error)
    message = store.status(run_id)["message"]
    assert message.startswith("Out of GPU memory")
    assert "smaller batch" in message
    assert "P x K = 6 x 16" in message  # the run's own batch
    assert "smaller net" in message
    assert "probe" not in message  # probes are embedded in chunks: shrinking them frees nothing


def test_other_runtime_errors_are_not_out_of_memory() -> None:
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == "memory"


def test_out_of_memory_releases_the_cache_only_once_the_trainer_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """empty_cache() can only return blocks nothing refers to any more."""
    trainers: list[weakref.ref] = []
    gone_at_release: list[bool] = []
    init = Trainer.__init__

    def tracked_init(self: Trainer, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        trainers.append(weakref.ref(self))

    def empty_cache() -> None:
        gc.collect()
        gone_at_release.append(all(ref() is None for ref in trainers))

    monkeypatch.setattr(Trainer, "__init__", tracked_init)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    failing_run(tmp_path, monkeypatch, torch.OutOfMemoryError("CUDA out of memory."))
    assert trainers
    assert gone_at_release == [True]


def test_a_device_side_assert_says_to_restart_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CudaHealth, "broken", False)
    store, run_id = failing_run(tmp_path, monkeypatch, RuntimeError(ASSERT))
    assert "restart the server" in store.status(run_id)["message"]
    assert CudaHealth.broken
    with pytest.raises(DeviceAssertError, match="restart the server"):
        CudaHealth.check(torch.device("cuda"))  # every later GPU job says so at once
    CudaHealth.check(torch.device("cpu"))  # the CPU still works


def test_checkpoints_are_copied_to_host_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer whose net and Adam state live on a (fake) GPU saves CPU copies."""
    trainer = Trainer(make_config(**TINY))
    trainer.train_step()
    trainer.optimizer.zero_grad(set_to_none=True)
    monkeypatch.setattr(torch.__future__, "_overwrite_module_params_on_conversion", True)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        trainer.net = trainer.net.to("cuda")  # new (fake) parameters, on "cuda"
        for state in trainer.optimizer.state.values():  # Adam's moments, on "cuda" too
            for key, value in state.items():
                if key != "step":
                    state[key] = fake.from_tensor(value).to("cuda")
        saved = trainer.state_dict()
    tensors = [*saved["net"].values()]
    tensors += [v for s in saved["optimizer"]["state"].values() for v in s.values()]
    assert any(t.device.type == "cuda" for t in trainer.net.parameters())
    assert {t.device.type for t in tensors} == {"cpu"}


def test_the_final_evaluation_searches_on_the_training_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bool] = []
    embed = evaluation.embed

    def recorded(*args, **kwargs):
        calls.append(kwargs.get("on_device", False))
        return embed(*args, **kwargs)

    monkeypatch.setattr(evaluation, "embed", recorded)
    metrics = Trainer(make_config(**TINY)).final_metrics()
    assert calls == [True, True]  # queries and references stay where the net ran
    assert 0 <= metrics["map_at_r"] <= 1
