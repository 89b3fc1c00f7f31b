"""A run moves between machines and threads: checkpoints saved on a GPU load on a CPU, a
sampler state from another device type resumes (reseeded, and saying so), and one seed gives
one set of initial weights however many runs start at once."""

from __future__ import annotations

import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from dml_core.config import make_config
from dml_core.nets import build_net
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import train_and_save
from dml_core.train import Trainer

TINY = {
    "steps": 12,
    "snapshot_every": 6,
    "probe_size": 60,
    "embedding_dim": 8,
    "classes_per_batch": 4,
    "samples_per_class": 4,
    "final_eval": False,
    "device": "cpu",
}


def save_as_on_a_gpu(store: RunStore, run_id: str, state: dict, mp: pytest.MonkeyPatch) -> None:
    """Write ``state`` as ``torch.save`` does on a GPU: every storage tagged "cuda:0"."""
    with mp.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        store.save_checkpoint(run_id, state)


def cuda_sampler_state(seed: int = 0, offset: int = 96) -> torch.Tensor:
    """A CUDA (Philox) generator's state: 16 bytes, the seed and the offset."""
    return torch.tensor(list(struct.pack("<QQ", seed, offset)), dtype=torch.uint8)


def stopped_run(tmp_path: Path) -> tuple[RunStore, str, dict]:
    """A run trained to step 6 and stopped there, with its checkpoint."""
    store = RunStore(tmp_path)
    cfg = make_config(**TINY)
    run_id = store.create(cfg, "moved")
    state = train_and_save(cfg, store, run_id, control=lambda step: step < 6)
    assert state is RunState.STOPPED
    return store, run_id, store.load_checkpoint(run_id)


def test_a_checkpoint_saved_on_a_gpu_loads_and_resumes_on_a_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run_id, state = stopped_run(tmp_path)
    save_as_on_a_gpu(store, run_id, state, monkeypatch)
    if not torch.cuda.is_available():  # the file really says cuda: a plain load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(store.path(run_id) / "checkpoint.pt", weights_only=True)
    loaded = store.load_checkpoint(run_id)
    tensors = [*loaded["net"].values(), loaded["sampler_rng"]]
    assert all(t.device.type == "cpu" for t in tensors)
    torch.testing.assert_close(loaded["net"], state["net"], rtol=0, atol=0)
    store.set_status(run_id, state=RunState.STOPPED)
    assert train_and_save(store.config(run_id), store, run_id, resume=True) is RunState.FINISHED
    assert store.load_checkpoint(run_id)["step"] == TINY["steps"]


def test_a_cuda_sampler_state_resumes_on_a_cpu_reseeded_and_saying_so(tmp_path: Path) -> None:
    store, run_id, state = stopped_run(tmp_path)
    state = {**state, "sampler_rng": cuda_sampler_state(), "sampler_device": "cuda"}
    store.save_checkpoint(run_id, state)
    batches = []
    for _ in range(2):  # reseeding is deterministic: (seed, step) alone sets the batches
        trainer = Trainer(store.config(run_id))
        trainer.load_state_dict(store.load_checkpoint(run_id))
        assert "reseeded" in trainer.resume_note
        assert "CUDA" in trainer.resume_note
        batches.append(trainer.sampler.sample())
    assert torch.equal(*batches)

    assert train_and_save(store.config(run_id), store, run_id, resume=True) is RunState.FINISHED
    assert "reseeded" in store.status(run_id)["message"]


def test_an_old_checkpoint_without_the_device_type_is_read_by_its_size() -> None:
    cfg = make_config(**TINY)
    trainer = Trainer(cfg)
    state = trainer.state_dict()
    del state["sampler_device"]
    resumed = Trainer(cfg)
    resumed.load_state_dict(state)
    assert resumed.resume_note == ""
    assert torch.equal(resumed.sampler.sample(), trainer.sampler.sample())
    state["sampler_rng"] = cuda_sampler_state()
    resumed.load_state_dict(state)
    assert "reseeded" in resumed.resume_note


@pytest.mark.parametrize("loss", ["triplet", "proxy_anchor"])
def test_one_seed_gives_one_set_of_initial_weights_when_three_runs_start_at_once(
    loss: str,
) -> None:
    cfg = make_config(**{**TINY, "net": "convnet"}, loss=loss, miner="all")
    reference = Trainer(cfg)
    start = threading.Barrier(3)

    def started(_: int) -> Trainer:
        start.wait()
        return Trainer(cfg)

    for _ in range(3):
        with ThreadPoolExecutor(3) as pool:
            trainers = list(pool.map(started, range(3)))
        for trainer in trainers:
            for module in ("net", "loss"):
                torch.testing.assert_close(
                    getattr(trainer, module).state_dict(),
                    getattr(reference, module).state_dict(),
                    rtol=0,
                    atol=0,
                )


def test_initial_weights_ignore_other_threads_drawing_random_numbers() -> None:
    cfg = make_config(**TINY)
    reference = Trainer(cfg).net.state_dict()
    stop = threading.Event()

    def draw() -> None:  # another job, or a page, using the global generator meanwhile
        while not stop.is_set():
            torch.rand(64)

    other = threading.Thread(target=draw)
    other.start()
    try:
        built = [Trainer(cfg).net.state_dict() for _ in range(5)]
    finally:
        stop.set()
        other.join()
    for state in built:
        torch.testing.assert_close(state, reference, rtol=0, atol=0)


def test_a_trainer_leaves_the_global_generator_alone() -> None:
    before = torch.random.get_rng_state()
    Trainer(make_config(**TINY, seed=5))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_seeded_nets_are_the_ones_the_global_seed_built() -> None:
    """The private generator changes who draws, not what: old runs keep their weights."""
    torch.manual_seed(3)
    old = build_net("convnet", (1, 8, 8), 16)
    new = build_net("convnet", (1, 8, 8), 16, seed=3)
    torch.testing.assert_close(new.state_dict(), old.state_dict(), rtol=0, atol=0)
    trainer = Trainer(make_config(**{**TINY, "net": "mlp"}, seed=3), fast=())
    torch.manual_seed(3)
    mlp = build_net("mlp", (1, 8, 8), 8)
    for key, value in mlp.state_dict().items():
        if key not in ("mean", "std"):  # the trainer sets the data's pixel statistics
            torch.testing.assert_close(trainer.net.state_dict()[key], value, rtol=0, atol=0)
