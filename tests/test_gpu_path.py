"""The CUDA path without a GPU: no tensor is made on the default device by accident, the net and
the fused kernel run on (fake) CUDA tensors, and, on a machine with a GPU, the real thing.

- Under ``with torch.device("meta")`` every tensor created without ``device=`` is a meta tensor,
  and mixing it with the batch's CPU tensors fails: one training step per loss and per miner
  finds any such tensor, the kind that lands on the CPU while the batch is on the GPU.
- Under ``FakeTensorMode`` tensors claim to be on "cuda" and carry no data: a CPU tensor mixed
  into the net's forward (channels_last, bf16 autocast) or the fused semi-hard kernel fails.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dml_core.config import make_config
from dml_core.nets import build_net
from dml_core.registry import LOSSES, MINERS
from dml_core.train import FAST_PATHS, FusedSemiHardTriplet, Trainer, pool_before_relu

SMALL = {"steps": 2, "probe_size": 50, "embedding_dim": 8, "device": "cpu"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def step_on_meta_default(trainer: Trainer) -> None:
    """One step on the CPU with "meta" as the default device (after a first, normal one)."""
    trainer.train_step()  # Adam makes its state here, by design on the default device
    with torch.device("meta"):
        trainer.train_step()
    assert trainer.step == 2


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_makes_its_tensors_on_the_batch_device(loss: str) -> None:
    step_on_meta_default(Trainer(make_config(**SMALL, loss=loss, miner="all"), fast=()))


@pytest.mark.parametrize("miner", sorted(MINERS))
def test_every_miner_makes_its_tensors_on_the_batch_device(miner: str) -> None:
    step_on_meta_default(Trainer(make_config(**SMALL, miner=miner), fast=()))


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_the_fast_path_makes_its_tensors_on_the_batch_device(net: str) -> None:
    trainer = Trainer(make_config(**SMALL, net=net), fast=FAST_PATHS)
    assert trainer.fused is not None
    step_on_meta_default(trainer)


def test_the_net_runs_on_cuda_tensors_channels_last_and_autocast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forward only: without a CUDA driver the autograd engine cannot start a CUDA backward."""
    net = build_net("convnet", (1, 28, 28), 16, mean=33.0, std=78.0, seed=0)
    pool_before_relu(net.trunk)
    body: list[torch.dtype] = []
    net.trunk[0].register_forward_hook(lambda m, i, o: body.append(o.dtype))
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        # Module.to() cannot swap fake parameters in: pass (fake) CUDA ones to a functional call
        state = {
            name: fake.from_tensor(value).to("cuda").to(memory_format=torch.channels_last)
            if value.dim() == 4
            else fake.from_tensor(value).to("cuda")
            for name, value in net.state_dict().items()
        }
        images = fake.from_tensor(torch.zeros(8, 1, 28, 28, dtype=torch.uint8)).to("cuda")
        # autocast turns itself off where torch.cuda says there is no (bf16) GPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        for low_precision in (None, torch.bfloat16):
            kwargs = {"low_precision": low_precision}
            emb = torch.func.functional_call(net, state, (images,), kwargs)
            assert emb.device.type == "cuda"
            assert emb.shape == (8, 16)
            assert emb.dtype == torch.float32
    assert body == [torch.float32, torch.bfloat16]  # autocast really ran the body in bf16


def test_the_fused_semi_hard_kernel_runs_on_cuda_tensors() -> None:
    with FakeTensorMode():
        emb = torch.empty(32, 8, device="cuda", requires_grad=True)
        labels = torch.arange(4, device="cuda").repeat_interleave(8)
        loss, mined, active = FusedSemiHardTriplet(0.2, 0.1)(emb, labels)
        assert {t.device.type for t in (loss, mined, active)} == {"cuda"}
        assert loss.requires_grad


@CUDA
def test_cuda_fused_steps_sync_at_most_twice() -> None:
    """The real count: CUDA's own sync debug mode warns at every synchronising call."""
    trainer = Trainer(make_config(**{**SMALL, "device": "cuda", "steps": 20}))
    trainer.train_step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(5):
                trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2 * 5, syncs


@CUDA
def test_cuda_training_resumes_on_the_cpu() -> None:
    cfg = make_config(**{**SMALL, "device": "cuda", "steps": 10})
    gpu = Trainer(cfg)
    list(gpu.run(steps=5))
    state = gpu.state_dict()
    assert {t.device.type for t in state["net"].values()} == {"cpu"}
    assert state["sampler_device"] == "cuda"
    cpu = Trainer(cfg.model_copy(update={"device": "cpu"}))
    cpu.load_state_dict(state)
    assert "reseeded" in cpu.resume_note
    list(cpu.run(steps=10))
    assert cpu.step == 10
    back = Trainer(cfg)
    back.load_state_dict(cpu.state_dict())
    assert "reseeded" in back.resume_note
    assert next(back.net.parameters()).is_cuda
    list(back.run())
    assert back.final_metrics()["precision_at_1"] > 0
