"""Tests of budgets: cost models, the one-sentence check, out-of-memory handling, measuring."""

import gc
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core import budgets
from dml_core.analysis.batch_view import mine_all
from dml_core.analysis.sphere import sample_sphere_distances, sampling_comparison
from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.metrics import retrieval_metrics
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from dml_core.services.jobs import TrainingJob

SIZES = {
    "sampling_comparison": {"P": 8, "K": 8, "dim": 32},
    "batch": {"P": 6, "K": 8, "dim": 32},
    "probe_size": {"probe_size": 1000, "dim": 32},
    "sweep": {"runs": 4, "steps": 100, "P": 6, "K": 8},
    "sphere_points": {"points": 400, "dim": 32},
}


def test_every_declared_model_has_sizes_here() -> None:
    assert set(budgets.COST_MODELS) == set(SIZES)
    for name, model in budgets.COST_MODELS.items():
        assert set(model.sizes) <= set(SIZES[name])
        assert set(model.lower) <= set(model.sizes)


@pytest.mark.parametrize("name", list(SIZES))
def test_costs_grow_with_every_size(name: str) -> None:
    """``check`` bisects on a size for its hint: costs must not shrink as a size grows."""
    base = budgets.estimate(name, **SIZES[name])
    for size in SIZES[name]:
        bigger = budgets.estimate(name, **{**SIZES[name], size: 3 * SIZES[name][size]})
        assert bigger.bytes >= base.bytes
        assert bigger.operations >= base.operations
        assert bigger.bytes + bigger.operations > base.bytes + base.operations or name == "sweep"


def test_a_fitting_size_returns_its_estimate() -> None:
    cost = budgets.check("batch", P=6, K=8, dim=32)
    assert cost == budgets.estimate("batch", P=6, K=8, dim=32)
    assert cost.bytes < budgets.MEMORY_LIMIT


def test_the_message_is_one_sentence_with_sizes_need_limit_and_what_to_lower() -> None:
    with pytest.raises(budgets.BudgetError) as info:
        budgets.check("batch", P=10, K=64, dim=32)
    message = str(info.value)
    assert message.startswith("P = 10, K = 64, D = 32 would need about 3.5 GB for mining")
    assert "the limit is 1 GB: lower P or K (at K = 64, P <= 5)." in message
    assert ". " not in message
    assert isinstance(info.value, ConfigError)  # pages catch ConfigError already
    # the hint is exact: P = 5 fits, P = 6 does not
    budgets.check("batch", P=5, K=64, dim=32)
    with pytest.raises(budgets.BudgetError):
        budgets.check("batch", P=6, K=64, dim=32)


def test_the_hint_moves_to_a_size_that_can_fit() -> None:
    with pytest.raises(budgets.BudgetError, match=r"\(at P = 2, K <= \d+\)\.$"):
        budgets.check("sampling_comparison", P=2, K=4000, dim=32)


def test_operations_limit_and_custom_limits() -> None:
    with pytest.raises(budgets.BudgetError, match=r"take about 5e\+09 operations for the sweep"):
        budgets.check("sweep", runs=1000, steps=5000, P=32, K=32)
    budgets.check("sweep", runs=1000, steps=5000, P=32, K=32, operations=1e10)
    with pytest.raises(budgets.BudgetError, match="the limit is 10 MB"):
        budgets.check("probe_size", memory=1e7, probe_size=5000, dim=32)  # about 12 MB


def test_unknown_and_duplicate_models_are_refused() -> None:
    with pytest.raises(KeyError, match="declared: sampling_comparison"):
        budgets.estimate("nope", P=2)
    with pytest.raises(ValueError, match="already declared"):
        budgets.cost_model("batch", "x", ("P",), ("P",), 1.0)(lambda P: budgets.Cost(0, 0))


def test_measure_counts_tensors_exactly() -> None:
    def allocate() -> int:
        a = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB
        b = torch.empty(1_000_000, dtype=torch.float64)  # 8 MB, both alive: 12 MB
        del a
        c = torch.empty(500_000, dtype=torch.float64)  # 4 MB after a is gone: 12 MB
        view = b[:10]  # no new storage
        return len(c) + len(view)

    result, used = budgets.measure(allocate)
    assert result == 500_010
    assert used.torch_bytes == 12_000_000


def test_measure_counts_numpy_through_tracemalloc() -> None:
    _, used = budgets.measure(lambda: float(np.ones(1_000_000).sum()))  # 8 MB
    assert 8_000_000 <= used.python_bytes < 8_500_000
    assert used.bytes == used.torch_bytes + used.python_bytes


def _hold_then_fail(kind: str, held: list) -> None:
    big = torch.ones(2_000_000)  # 8 MB the failed call holds in its frame
    held.append(weakref.ref(big))
    if kind == "torch":
        torch.empty(2**60, dtype=torch.uint8)  # the allocator refuses: RuntimeError
    elif kind == "numpy":
        np.empty(2**60, dtype=np.uint8)  # MemoryError
    else:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize("kind", ["torch", "numpy", "cuda"])
def test_out_of_memory_becomes_one_sentence_and_releases_the_memory(kind: str) -> None:
    held: list = []
    with pytest.raises(budgets.BudgetError) as info:
        budgets.guarded("the sampling comparison", _hold_then_fail, kind, held)
    assert str(info.value) == (
        "Ran out of memory computing the sampling comparison: lower the sizes and try again."
    )
    assert info.value.__context__ is None  # no chain that keeps the failed frames alive
    assert held[0]() is None  # the failed call's tensors are already freed


def test_other_errors_pass_through_unchanged() -> None:
    def broken() -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        budgets.guarded("x", broken)


def test_a_training_job_survives_a_failed_page_computation(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(steps=40, probe_size=50, embedding_dim=8, final_eval=False, device="cpu")
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    failures = []

    def page() -> None:
        try:
            budgets.guarded("the page", _hold_then_fail, "torch", [])
        except budgets.BudgetError as err:
            failures.append(str(err))

    thread = threading.Thread(target=page)
    thread.start()
    thread.join()
    job.join()
    gc.collect()
    assert failures == ["Ran out of memory computing the page: lower the sizes and try again."]
    assert job.progress().state == "finished", job.progress().message


def test_models_bound_the_measured_peaks() -> None:
    """Each model is an upper bound of what its computation holds (``measure``), within 3x."""
    ALL = {name: {} for name in MINERS}
    gen = torch.Generator().manual_seed(0)
    for P, K in [(4, 6), (10, 16)]:
        emb = torch.nn.functional.normalize(torch.randn(P * K, 32, generator=gen)).numpy()
        _, used = budgets.measure(mine_all, emb, np.repeat(np.arange(P), K), ALL, 0.2)
        model = budgets.estimate("batch", P=P, K=K, dim=32).bytes
        assert used.torch_bytes <= model <= 3 * used.torch_bytes, (P, K)
    for P, K in [(4, 6), (16, 16)]:
        _, used = budgets.measure(sampling_comparison, 32, P, K, 0)
        model = budgets.estimate("sampling_comparison", P=P, K=K, dim=32).bytes
        assert used.torch_bytes <= model <= 3 * used.torch_bytes, (P, K)
    _, used = budgets.measure(sample_sphere_distances, 32, 1500, 0)
    model = budgets.estimate("sphere_points", points=1500, dim=32).bytes
    assert used.torch_bytes <= model <= 3 * used.torch_bytes
    emb, labels = torch.randn(3000, 32, generator=gen), torch.randint(0, 10, (3000,), generator=gen)
    _, used = budgets.measure(
        retrieval_metrics, emb, labels, emb, labels, same_set=True, with_nmi=False
    )
    model = budgets.estimate("probe_size", probe_size=3000, dim=32).bytes
    assert used.torch_bytes <= model <= 3 * used.torch_bytes
