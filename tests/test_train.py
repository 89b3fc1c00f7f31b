import math

import numpy as np
import pytest
import torch

from dml_core.config import make_config
from dml_core.train import Trainer, TrainingDivergedError, mean_stats, resolve_device

FAST = {"steps": 40, "snapshot_every": 20, "probe_size": 300, "embedding_dim": 16}


def test_training_improves_retrieval_over_the_untrained_net() -> None:
    trainer = Trainer(make_config(**{**FAST, "steps": 120, "snapshot_every": 60}))
    snaps = list(trainer.run())
    assert [s.step for s in snaps] == [0, 60, 120]
    first, last = snaps[0], snaps[-1]
    assert math.isnan(first.loss)
    assert last.metrics["map_at_r"] > first.metrics["map_at_r"] + 0.1
    assert last.metrics["precision_at_1"] >= first.metrics["precision_at_1"]
    final = trainer.final_metrics()
    assert final["precision_at_1"] > 0.85
    assert set(last.kind_shares) == {"easy", "semi-hard", "hard"}
    assert last.probe_emb.shape == (len(last.probe_labels), 16)
    assert np.isfinite(last.pos_dist).all()
    assert len(last.pos_dist) > 0
    assert len(last.neg_dist) > 0


def test_cpu_training_is_deterministic_for_a_seed() -> None:
    runs = [list(Trainer(make_config(**FAST)).run())[-1] for _ in range(2)]
    np.testing.assert_array_equal(runs[0].probe_emb, runs[1].probe_emb)
    assert runs[0].loss == runs[1].loss
    other = list(Trainer(make_config(**FAST, seed=1)).run())[-1]
    assert not np.array_equal(other.probe_emb, runs[0].probe_emb)


def test_probe_set_is_class_balanced_and_fixed() -> None:
    trainer = Trainer(make_config(**FAST))
    counts = np.bincount(trainer.probe_y.numpy())
    assert counts.max() - counts.min() <= 1
    assert torch.equal(trainer.probe_y, Trainer(make_config(**FAST)).probe_y)


def test_divergence_stops_with_a_clear_message_and_keeps_last_snapshot() -> None:
    trainer = Trainer(make_config(**FAST, loss="contrastive", miner="all", lr=1.0))
    snaps = []
    with torch.no_grad():
        trainer.net.trunk[-1].weight.mul_(float("nan"))  # poison: like a blown-up step
    run = trainer.run()
    snaps.append(next(run))
    with pytest.raises(TrainingDivergedError, match="diverged at step 1: the embeddings"):
        next(run)
    assert [s.step for s in snaps] == [0]


def test_stop_control_takes_a_last_snapshot() -> None:
    trainer = Trainer(make_config(**FAST))
    calls = iter([True] * 7 + [False])
    snaps = list(trainer.run(control=lambda: next(calls)))
    assert [s.step for s in snaps] == [0, 7]


def test_state_dict_round_trip_resumes_identically() -> None:
    cfg = make_config(**FAST)
    a = Trainer(cfg)
    list(a.run(steps=20))
    state = a.state_dict()
    list(a.run(steps=40))
    b = Trainer(cfg)
    b.load_state_dict(state)
    list(b.run(steps=40))
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_open_set_trains_on_six_classes_and_evaluates_on_the_rest() -> None:
    trainer = Trainer(make_config(**FAST, split="open-set"))
    assert set(trainer.train_y.tolist()) == {0, 1, 2, 3, 4, 5}
    assert set(trainer.probe_y.tolist()) == {6, 7, 8, 9}
    list(trainer.run())
    assert trainer.final_metrics()["precision_at_1"] > 0.5


def test_device_choice_is_explained() -> None:
    device, note = resolve_device("cpu")
    assert device.type == "cpu"
    assert "CPU" in note
    assert "(1 thread;" in resolve_device("cpu", 1)[1]
    assert "(2 threads;" in resolve_device("cpu", 2)[1]
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in resolve_device("auto")[1]
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_training_runs() -> None:
    trainer = Trainer(make_config(**FAST, device="cuda"))
    snaps = list(trainer.run())
    assert trainer.train_x.is_cuda
    assert np.isfinite(snaps[-1].loss)


def test_snapshot_statistics_pool_the_mined_tuples_of_the_interval() -> None:
    """Catches: averaging per-step shares, which counts a step with nothing mined as 0 active."""
    window = [
        {"loss": 0.2, "tuples": 4, "active": 4, "kind_shares": {"easy": 0.0, "semi-hard": 1.0}},
        {"loss": 0.0, "tuples": 0, "active": 0},
        {"loss": 0.4, "tuples": 12, "active": 6, "kind_shares": {"easy": 0.5, "semi-hard": 0.5}},
    ]
    stats = mean_stats(window)
    assert stats["loss"] == pytest.approx(0.2)
    assert stats["active_fraction"] == pytest.approx(10 / 16)  # not (1 + 0 + 0.5) / 3
    assert stats["kind_shares"] == pytest.approx({"easy": 6 / 16, "semi-hard": 10 / 16})
    assert stats["mining"] == pytest.approx({"tuples_per_batch": 16 / 3, "empty_batches": 1 / 3})
    nothing = mean_stats([{"loss": 0.0, "tuples": 0, "active": 0}])
    assert np.isnan(nothing["active_fraction"])
    assert nothing["mining"]["empty_batches"] == 1.0
    assert mean_stats([]) == {}


def test_relative_margin_is_drawn_at_median_positive_plus_margin() -> None:
    snap = list(Trainer(make_config(**FAST, loss_params={"margin": 0.3})).run())[-1]
    assert snap.lines == pytest.approx(
        {"median d+ + margin": float(np.median(snap.pos_dist)) + 0.3}
    )
    contrastive = Trainer(make_config(**FAST, loss="contrastive", miner="all"))
    assert list(contrastive.run(steps=1))[-1].lines == {"m_neg": 1.0}


def test_collapse_fires_when_the_embedding_shrinks() -> None:
    trainer = Trainer(make_config(**FAST))
    first = next(trainer.run())
    assert first.collapse["collapsing"] == 0.0
    with torch.no_grad():  # squeeze every embedding towards one point
        last = trainer.net.trunk[-1]
        last.weight.mul_(0.001)
        last.bias.copy_(torch.ones_like(last.bias))
    squeezed = trainer.snapshot({})
    assert squeezed.collapse["mean_distance"] < 0.25 * first.collapse["mean_distance"]
    assert squeezed.collapse["collapsing"] == 1.0
