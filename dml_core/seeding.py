"""Seeded construction without the process-global random generator.

``torch.manual_seed(seed)`` followed by building a net reseeds the one generator every thread
of the process shares: two runs started at once by the app interleave their draws, and the
same seed no longer gives the same initial weights (reproduced with three threads). Inside
:func:`seeded`, every random operation called *by this thread* without a ``generator`` gets a
private ``torch.Generator`` seeded with ``seed`` instead. Layers keep their own initialisation
code (``nn.Linear.reset_parameters`` calls ``nn.init.kaiming_uniform_(..., generator=None)``),
and a fresh CPU generator seeded with ``seed`` yields the very stream ``torch.manual_seed(seed)``
gives the global one, so the weights are bit-identical to the old global-seed construction.

The hook is a ``TorchFunctionMode``, whose stack is thread-local: other threads, and this
thread after the block, draw from the global generator as before, which is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Random operations that take ``generator=`` but are often called without it. Functions of
# ``nn.init`` (and any other that forwards ``generator=None`` explicitly) are caught by the
# keyword itself, so they need no entry here.
RANDOM_OPS: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.rand_like,
        torch.randn_like,
        torch.randint_like,
        torch.normal,
        torch.bernoulli,
        torch.multinomial,
        torch.poisson,
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        torch.Tensor.random_,
        torch.Tensor.bernoulli_,
        torch.Tensor.exponential_,
        torch.Tensor.geometric_,
        torch.Tensor.log_normal_,
        torch.Tensor.cauchy_,
    }
)


class PrivateGenerator(TorchFunctionMode):
    """Routes this thread's unseeded random operations to one private generator.

    Args:
        generator: the generator to draw from (CPU: layers are built on the CPU first).
    """

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Call ``func``, supplying ``generator=`` where it is random and has none."""
        kwargs = dict(kwargs or {})
        if ("generator" in kwargs and kwargs["generator"] is None) or (
            func in RANDOM_OPS and "generator" not in kwargs
        ):
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Within the block, this thread's unseeded random draws come from ``Generator(seed)``.

    Yields:
        The private generator (CPU), for draws that name it explicitly.
    """
    generator = torch.Generator().manual_seed(seed)
    with PrivateGenerator(generator):
        yield generator
