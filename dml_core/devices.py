"""Devices: host copies, clocks, host syncs, and the CUDA failures that need their own words.

The failures are running out of memory (also as cuBLAS / cuDNN allocation errors) and a
device-side assert, after which the process's CUDA context is lost.

A host sync is any point where Python waits for the accelerator's queue to drain: reading a
value (``.item()``, ``int(t)``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``)
or an operation whose output shape depends on the data (``nonzero``, boolean indexing,
``unique``, ``masked_select``). On a GPU each one stalls the queue; for nets as small as this
project's that costs most of the speed-up. :class:`HostSyncCounter` counts them on any device,
the CPU included, so the budget is tested without a GPU.
"""

from __future__ import annotations

import gc
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

# ATen operations that wait for the device: a scalar read, or an output of data-dependent size
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.nonzero",
        "aten.masked_select",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.repeat_interleave",
    }
)
# Python-level reads of a tensor's values; ``.tolist()`` and ``.numpy()`` reach no ATen op on
# the CPU (they read the memory directly), so they are counted here.
HOST_READS = frozenset({"tolist", "numpy", "cpu", "__array__"})


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(
        self,
        func: Any,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = str(func.overloadpacket)
        if name in SYNC_OPS:
            self.counts[name] += 1
        elif name == "aten.index" and any(
            isinstance(i, Tensor) and i.dtype == torch.bool for i in args[1]
        ):
            self.counts["boolean indexing"] += 1
        return func(*args, **(kwargs or {}))


class _ReadCounter(TorchFunctionMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (
            name == "to" and any(str(a) == "cpu" for a in (*args[1:], *(kwargs or {}).values()))
        ):
            self.counts[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter:
    """Counts the host syncs of the code run inside ``with HostSyncCounter() as c:``.

    ``c.counts`` names each kind (``aten._local_scalar_dense`` is what ``.item()``, ``int()``,
    ``float()`` and ``bool()`` call); ``c.total`` adds them up. Device synchronisations are
    counted too (``torch.cuda.synchronize``, which does nothing on a CPU run).
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._modes = (_ReadCounter(self.counts), _DispatchCounter(self.counts))
        self._synchronize: Callable[..., None] | None = None

    @property
    def total(self) -> int:
        """All host syncs counted so far."""
        return sum(self.counts.values())

    def __enter__(self) -> HostSyncCounter:
        self._synchronize = torch.cuda.synchronize

        def counted(*args: Any, **kwargs: Any) -> None:
            self.counts["torch.cuda.synchronize"] += 1
            assert self._synchronize is not None
            self._synchronize(*args, **kwargs)

        torch.cuda.synchronize = counted
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        if self._synchronize is not None:
            torch.cuda.synchronize = self._synchronize


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall clock measures it (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_copy(tree: Any) -> Any:
    """A copy of ``tree`` (nested dicts / lists of tensors and plain values) on the CPU.

    Checkpoints are copied straight to host memory: deep-copying weights and Adam state on the
    GPU would double their memory there at every snapshot, and they go to disk anyway.
    """

    def copy(value: Any) -> Any:
        if not isinstance(value, Tensor):
            return value
        value = value.detach()
        return value.clone() if value.device.type == "cpu" else value.to("cpu")

    return tree_map(copy, tree)


# cuBLAS, cuDNN, cuFFT, cuSOLVER and cuSPARSE report a failed allocation as a plain
# RuntimeError ("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"; cuDNN 9 says
# "..._ALLOCATION_FAILED"); the caching allocator raises torch.OutOfMemoryError; the CPU
# allocator says "DefaultCPUAllocator: can't allocate memory".
ALLOCATION_FAILED = re.compile(r"ALLOC_FAILED|ALLOCATION_FAILED|CUDA error: out of memory")
DEVICE_ASSERT = re.compile(r"device-side assert triggered|CUDA error: an illegal memory access")


def out_of_memory(err: BaseException) -> str | None:
    """Which memory ran out, if ``err`` says an allocation failed: "GPU memory", "memory"."""
    if isinstance(err, MemoryError) or "can't allocate memory" in str(err):
        return "memory"
    if isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ALLOCATION_FAILED.search(str(err))
    ):
        return "GPU memory"
    return None


def out_of_memory_advice(cfg: Any, where: str) -> str:
    """What to change when a run ran out of ``where``: the settings that set its memory use.

    Probe and evaluation sets are embedded in chunks of fixed size, so shrinking them frees
    little; the batch (its P x K distance matrix, activations and mined tuples) and the net do.
    """
    smaller = f"a smaller embedding dimension than {cfg.embedding_dim}"
    if cfg.net == "convnet":
        smaller = f"the MLP instead of the ConvNet, or {smaller}"
    return (
        f"Out of {where}: try a smaller batch (fewer classes P or samples K per class; now "
        f"P x K = {cfg.classes_per_batch} x {cfg.samples_per_class}) or a smaller net "
        f"({smaller})."
    )


def release_memory() -> None:
    """Free what the dropped tensors held: collect cycles, then return cached GPU blocks.

    Call it once nothing refers to the failed run any more (after its ``except`` block: the
    traceback holds every frame's tensors), or the cache has nothing to give back.
    """
    gc.collect()
    if torch.cuda.is_initialized():  # else there is no CUDA cache to give back
        torch.cuda.empty_cache()


DEVICE_ASSERT_MESSAGE = (
    "A CUDA device-side assert fired on the GPU (an index out of range in a kernel). After one, "
    "CUDA refuses all further work in this process: restart the server (stop it and start "
    "`streamlit run app.py` again) to train on the GPU."
)


class DeviceAssertError(RuntimeError):
    """A new GPU job in a process whose CUDA context a device-side assert has broken."""

    def __init__(self) -> None:
        super().__init__(DEVICE_ASSERT_MESSAGE)


def is_device_assert(err: BaseException) -> bool:
    """Whether ``err`` is a CUDA device-side assert (or illegal access): the context is lost."""
    return isinstance(err, DeviceAssertError) or (
        isinstance(err, RuntimeError) and bool(DEVICE_ASSERT.search(str(err)))
    )


class CudaHealth:
    """Whether this process's CUDA context still works (a device-side assert breaks it).

    CUDA contexts are per process, so this is the one process-wide fact here: once a kernel
    has asserted, every later CUDA call in the process fails with the same error, and each
    new GPU job must say "restart the server" instead of failing in some unrelated place.
    """

    broken: bool = False

    @classmethod
    def mark_broken(cls) -> None:
        """Record that a device-side assert happened in this process."""
        cls.broken = True

    @classmethod
    def check(cls, device: torch.device) -> None:
        """Raise with the restart advice if ``device`` is CUDA and the context is broken."""
        if cls.broken and device.type == "cuda":
            raise DeviceAssertError
