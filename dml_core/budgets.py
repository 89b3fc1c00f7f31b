"""Budgets: what each computation a user can scale costs, checked before it starts.

A student who sets P = 32, K = 32 must get an answer or one sentence, never a server that
grows to 22 GB until Linux kills it together with every running training job. Each
computation whose size a user controls declares a cost model here: bytes at its peak and
operations, as functions of the sizes (P, K, dim, probe size, steps, runs, ...), written from
the code by counting its big tensors and calibrated with ``measure``. ``check`` compares the
estimate with the limits and raises ``BudgetError`` (a ``ConfigError``) with one sentence::

    from dml_core import budgets

    budgets.check("batch", P=32, K=64, dim=128)
    # BudgetError: P = 32, K = 64, D = 128 would need about 39 GB for mining all triplets of
    # one batch; the limit is 1 GB: lower P or K (at K = 64, P <= 5).

    budgets.estimate("probe_size", probe_size=5000, dim=64)  # Cost(bytes=..., operations=...)
    budgets.guarded("the retrieval table", compute, *args)   # out of memory -> one sentence

``COST_MODELS`` lists the declared models (``cost_model`` registers one); each names its sizes,
what the computation is in words, and which sizes the user should lower. Limits default to
``MEMORY_LIMIT`` (1 GB) and the model's own operations limit; both can be passed to ``check``.
"""

from __future__ import annotations

import gc
import math
import tracemalloc
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dml_core.errors import ConfigError

GB = 1e9
MEMORY_LIMIT = 1 * GB  # the most one page computation may hold at its peak
GROUP_TRIPLETS = 2_000_000  # the most triplets ``analysis.sphere`` holds at once (memory)
MINED_TRIPLETS = 1_000_000  # the most it mines in all before sampling anchor classes (time)
LABELS = {"dim": "D", "probe_size": "probe size"}  # how a message names a size
T = TypeVar("T")


class BudgetError(ConfigError):
    """A computation that would exceed (or did exceed) its memory or operations budget."""


class Cost(NamedTuple):
    """Estimated peak bytes and operations (multiply-adds or elements touched) of one call."""

    bytes: float
    operations: float


@dataclass(frozen=True)
class CostModel:
    """A declared cost: ``cost(**sizes) -> Cost`` plus the words ``check`` needs.

    Attributes:
        name: the key in ``COST_MODELS``.
        what: the computation in words ("the sampling comparison").
        sizes: the keyword sizes ``cost`` reads, in the order the message names them.
        lower: the sizes a user should lower, most effective first; ``check`` finds the largest
            value of the first one that fits with the others fixed.
        cost: the model itself.
        operations_limit: the most operations one call may take (about 1e9 per second on
            one CPU core for the vectorised torch code these models count).
        labels: how the message names a size, where not as in ``LABELS`` (e.g. dim -> n).
    """

    name: str
    what: str
    sizes: tuple[str, ...]
    lower: tuple[str, ...]
    cost: Callable[..., Cost]
    operations_limit: float
    labels: dict[str, str]

    def label(self, size: str) -> str:
        """The name of ``size`` in messages."""
        return self.labels.get(size, LABELS.get(size, size))


COST_MODELS: dict[str, CostModel] = {}


def cost_model(
    name: str,
    what: str,
    sizes: tuple[str, ...],
    lower: tuple[str, ...],
    operations_limit: float,
    labels: dict[str, str] | None = None,
) -> Callable[[Callable[..., Cost]], Callable[..., Cost]]:
    """Register ``cost`` under ``name`` in ``COST_MODELS`` (a duplicate name raises)."""

    def register(cost: Callable[..., Cost]) -> Callable[..., Cost]:
        if name in COST_MODELS:
            raise ValueError(f"cost model {name!r} is already declared")
        model = CostModel(name, what, sizes, lower, cost, operations_limit, labels or {})
        COST_MODELS[name] = model
        return cost

    return register


def all_triplets(P: int, K: int) -> int:
    """Valid triplets of a P x K batch: B (K - 1) (B - K), B = P K (Hermans et al. 2017)."""
    B = P * K
    return B * (K - 1) * (B - K)


# ---------------------------------------------------------------------------- cost models
# Bytes per element are counted from the code and rounded up; ``measure`` checks them in
# tests/test_budgets.py and tests/test_sphere.py (the model must stay above the measurement).

SPHERE_BYTES_PER_PAIR = 48  # (B, B): distances f32, Gram f64, masks, sorted f32 + order i64
SPHERE_BYTES_PER_TRIPLET = 120  # the mining temporaries (i64), gathers, kinds, variance (f64)
MINING_BYTES_PER_TRIPLET = 150  # indices, gathered distances and kinds, kept per miner
MINING_BYTES_PER_PAIR = 64  # (B, B) distances, masks and sorted negatives


@cost_model(
    "sampling_comparison",
    "the sampling comparison",
    sizes=("P", "K", "dim"),
    lower=("P", "K"),
    operations_limit=4e9,
    labels={"dim": "n"},
)
def _sampling_comparison(
    P: int,
    K: int,
    dim: int,
    group_triplets: int = GROUP_TRIPLETS,
    max_triplets: int = MINED_TRIPLETS,
) -> Cost:
    """``analysis.sphere.sampling_comparison``: five miners, mined in anchor-class groups.

    A class anchors K (K - 1) (B - K) triplets. Mined: all B (K - 1) (B - K) of them, or the
    classes that fit in ``max_triplets`` (at least one). Peak: the (B, B) matrices plus one
    group's triplets, at most max(group_triplets, one class's). Operations: each mined triplet
    is touched a few dozen times by the five miners (the random miner enumerates them all;
    hard and semi-hard keep up to all), and each group sorts (B, B) once per miner.
    """
    B = P * K
    one_class = K * (K - 1) * (B - K)
    mined = min(all_triplets(P, K), max(max_triplets, one_class))
    group = min(mined, max(group_triplets, one_class))
    groups = max(1, math.ceil(mined / max(group, 1)))
    peak = B * B * SPHERE_BYTES_PER_PAIR + group * SPHERE_BYTES_PER_TRIPLET + 3 * B * dim * 8
    sorts = 5 * groups * B * B * max(1.0, math.log2(B))
    return Cost(peak, 60 * mined + sorts + B * B * dim)


@cost_model(
    "batch",
    "mining all triplets of one batch",
    sizes=("P", "K", "dim"),
    lower=("P", "K"),
    operations_limit=4e9,
)
def _batch(P: int, K: int, dim: int = 0) -> Cost:
    """One P x K batch with every triplet materialised: the Miner view, and a training step.

    All-triplet mining (miners ``all``, ``random``, pair miners joined by ``to_triplets``) holds
    B (K - 1) (B - K) ~ B^3 / P triplets: indices (3 x int64), gathered distances and kind
    codes. Per miner kept in the Miner view; per step in training (plus the net, not counted).
    """
    B = P * K
    triplets = all_triplets(P, K)
    return Cost(
        triplets * MINING_BYTES_PER_TRIPLET + B * B * MINING_BYTES_PER_PAIR + B * dim * 4,
        40 * triplets + B * B * max(dim, 1),
    )


@cost_model(
    "probe_size",
    "evaluating the probe set",
    sizes=("probe_size", "dim"),
    lower=("probe_size",),
    operations_limit=2e10,
)
def _probe_size(probe_size: int, dim: int, chunk_size: int = 64) -> Cost:
    """``metrics.retrieval_metrics`` on N probe points (on the CPU: ``ranking``'s path).

    The probe embeddings live on the CPU, where queries are ranked ``chunk_size`` at a time by
    a sampled threshold and a sort of about R keys each: per chunk, (chunk, N) float32 distances
    and masks, about 30 bytes per entry (measured 2026-11-29: 2.1 MB at N = 1000, 7.1 MB at
    N = 3000, 12.6 MB at N = 6000, D = 32), plus the (N, D) embeddings and copies. Operations:
    N^2 D for the distances and N^2 log2 N for the sorts (a bound). UMAP (``projection``) is not
    counted.
    """
    N = probe_size
    log_n = max(1.0, math.log2(max(N, 2)))
    return Cost(min(N, chunk_size) * N * 30 + N * dim * 16, N * N * (dim + log_n))


@cost_model(
    "sweep",
    "the sweep",
    sizes=("runs", "steps", "P", "K"),
    lower=("runs", "steps"),
    operations_limit=5e8,
)
def _sweep(runs: int, steps: int, P: int, K: int) -> Cost:
    """A grid of runs: images pushed through a net, runs x steps x P x K.

    Counted in images, not multiply-adds (a net's cost per image varies): the default limit,
    5e8 images, is e.g. 100 runs of 5000 steps of 32 x 32 batches. Memory is each run's own
    (check ``batch`` per run); the sweep adds none here.
    """
    return Cost(0.0, float(runs) * steps * P * K)


@cost_model(
    "sphere_points",
    "the sphere's pairwise distances",
    sizes=("points", "dim"),
    lower=("points",),
    operations_limit=1e10,
    labels={"dim": "n"},
)
def _sphere_points(points: int, dim: int) -> Cost:
    """``sample_sphere_distances``: N points, all N (N - 1) / 2 distances.

    (N, N) float64 distances, two int64 index rows of the upper triangle (N^2 / 2 each) and
    the gathered float64 copy (N^2 / 2): 8 + 8 + 4 = 20 bytes per N^2, 28 with cdist's
    buffers (measured: 24); plus the (N, dim) float64 points.
    """
    return Cost(points * points * 28 + points * dim * 16, points * points * dim)


# ---------------------------------------------------------------------------- checks


def estimate(name: str, **sizes: float) -> Cost:
    """The declared cost of computation ``name`` at ``sizes`` (keywords of its model)."""
    if name not in COST_MODELS:
        raise KeyError(f"no cost model {name!r}; declared: {', '.join(COST_MODELS)}")
    return COST_MODELS[name].cost(**sizes)


def _amount(num_bytes: float) -> str:
    """Bytes as '21 GB', '1 GB', '350 MB'."""
    if num_bytes >= 10 * GB:
        return f"{num_bytes / GB:,.0f} GB"
    if num_bytes >= GB:
        return f"{num_bytes / GB:.2g} GB"
    return f"{max(num_bytes / 1e6, 1):.0f} MB"


def _fits(model: CostModel, sizes: dict[str, Any], memory: float, operations: float) -> bool:
    cost = model.cost(**sizes)
    return cost.bytes <= memory and cost.operations <= operations


def _largest(
    model: CostModel, size: str, sizes: dict[str, Any], memory: float, operations: float
) -> int:
    """The largest value of ``size`` that fits, the other sizes fixed (0: none)."""
    lo, hi = 0, int(sizes[size])
    while lo < hi:  # largest v in [0, hi) that fits, by bisection (costs grow with sizes)
        mid = (lo + hi + 1) // 2
        if _fits(model, {**sizes, size: mid}, memory, operations):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _hint(model: CostModel, sizes: dict[str, Any], memory: float, operations: float) -> str:
    """' (at K = 32, P <= 7)': the first size of ``model.lower`` that can fit at 2 or more."""
    for size in model.lower:
        best = _largest(model, size, sizes, memory, operations)
        if best >= 2:
            fixed = [f"{model.label(k)} = {sizes[k]}" for k in model.lower if k != size]
            at = f"at {', '.join(fixed)}, " if fixed else ""
            return f" ({at}{model.label(size)} <= {best})"
    return ""


def check(
    name: str,
    memory: float = MEMORY_LIMIT,
    operations: float | None = None,
    **sizes: Any,
) -> Cost:
    """Raise ``BudgetError`` (one sentence) if computation ``name`` at ``sizes`` would not fit.

    Args:
        name: a key of ``COST_MODELS`` ("sampling_comparison", "batch", "probe_size",
            "sweep", "sphere_points").
        memory: the byte limit (default ``MEMORY_LIMIT``, 1 GB).
        operations: the operations limit (default: the model's ``operations_limit``).
        **sizes: the model's sizes, e.g. ``P=32, K=32, dim=32``.

    Returns:
        The estimate, when it fits.
    """
    model = COST_MODELS[name]
    limit = model.operations_limit if operations is None else operations
    cost = model.cost(**sizes)
    if cost.bytes <= memory and cost.operations <= limit:
        return cost
    shown = ", ".join(f"{model.label(k)} = {sizes[k]}" for k in model.sizes if k in sizes)
    if cost.bytes > memory:
        need = f"need about {_amount(cost.bytes)} for {model.what}; the limit is {_amount(memory)}"
    else:
        need = (
            f"take about {cost.operations:.1g} operations for {model.what}; the limit is "
            f"{limit:.1g}"
        )
    lowered = " or ".join(model.label(k) for k in model.lower)
    hint = _hint(model, dict(sizes), memory, limit)
    raise BudgetError(f"{shown} would {need}: lower {lowered}{hint}.")


def _is_out_of_memory(err: BaseException) -> bool:
    """MemoryError, or torch's RuntimeError from a failed allocation (CPU or GPU)."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


def guarded(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; running out of memory raises ``BudgetError`` in one sentence.

    The failed call's frames (and the tensors they hold) are released before the error is
    raised: the new exception is raised outside the ``except`` block, so it does not chain to
    the original and keep its traceback alive. Other threads (training jobs) are untouched.
    """
    try:
        return fn(*args, **kwargs)
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
    gc.collect()
    raise BudgetError(f"Ran out of memory computing {what}: lower the sizes and try again.")


# ---------------------------------------------------------------------------- measuring


class Measurement(NamedTuple):
    """Peak bytes held by a call: torch tensors it allocated, and numpy / Python objects."""

    torch_bytes: int
    python_bytes: int

    @property
    def bytes(self) -> int:
        """Upper bound of the peak: both peaks added."""
        return self.torch_bytes + self.python_bytes


class _TensorMeter(TorchDispatchMode):
    """Counts the bytes of tensor storages created under it that are still alive, and the peak.

    Deterministic (no RSS, no timing): every op's outputs pass through ``__torch_dispatch__``;
    a storage is counted once, when first seen, and released when the last tensor seen on it
    is garbage.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= nbytes

    def __torch_dispatch__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        """Run ``func`` and count the storages of its outputs."""
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if key == 0:
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key, nbytes)
        return out


def measure(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, Measurement]:
    """Run ``fn`` and return its result with the peak memory it held (for calibrating models).

    Torch allocations are counted by a dispatch mode (``_TensorMeter``), numpy and Python ones
    by ``tracemalloc``; both are exact and repeatable. Slower than a plain call.
    """
    with _TensorMeter():  # the first dispatch mode imports torch machinery: not fn's memory
        torch.zeros(1).add_(1)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    meter = _TensorMeter()
    try:
        with meter:
            result = fn(*args, **kwargs)
        python_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    return result, Measurement(meter.peak, max(python_peak, 0))
