r"""Cross-batch memory: a pair loss over the current batch against a queue of past embeddings.

Reference:
    Wang, Zhang, Huang, Scott. Cross-Batch Memory for Embedding Learning. CVPR 2020.

Embeddings drift slowly once training has warmed up, so the embeddings of recent batches are
still good stand-ins for the current ones. Keeping them in a FIFO queue gives every anchor of
the batch thousands of pairs instead of B - 1, with no extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from dml_core.errors import ConfigError
from dml_core.losses.base import Boundary, Loss, LossOutput
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Pairs, Tuples, to_pairs


class CrossBatchMemoryParams(Params):
    """Parameters of the cross-batch memory wrapper."""

    loss: Literal["contrastive", "triplet", "multi_similarity"] = Field(
        "contrastive", description="the pair loss computed against the memory (its defaults)"
    )
    memory_size: int = Field(
        1024,
        ge=1,
        le=100_000,
        description="M: how many past embeddings are kept (at least the batch size)",
    )


@LOSSES.register(
    name="cross_batch_memory",
    params=CrossBatchMemoryParams,
    paper="Wang, Zhang, Huang, Scott. Cross-Batch Memory for Embedding Learning. CVPR 2020",
    equation=r"L = \sum_{i \in \mathrm{batch}} \sum_{j \in \mathrm{batch} \cup M,\ j \neq i} "
    r"\ell(x_i, \tilde{x}_j)",
    kind="pairs",
)
class CrossBatchMemory(Loss):
    r"""Cross-batch memory: the chosen loss over batch anchors against a queue of past batches.

    Wang et al. 2020, Sec. 3-4, Eq. (7), as pytorch-metric-learning's ``CrossBatchMemory``:
    the batch is written into a FIFO queue of the last M (detached) embeddings and labels,
    then the inner loss is computed over every pair (anchor in the batch, other in the queue),
    leaving out each sample paired with its own copy. The queue side carries no gradient, so
    the loss pulls and pushes only the batch's embeddings. A larger M sees more of the data
    per step (more hard negatives) but older, staler embeddings. The paper's warm-up (no memory
    for the first iterations) is left to the caller.

    Tuples from a miner (over the batch) replace the batch-vs-batch pairs; pairs against the
    older queue entries are always all kept. ``LossOutput.tuples`` index into the
    concatenation [batch; queue], so indices >= B refer to queue entries.
    """

    def __init__(
        self,
        loss: Literal["contrastive", "triplet", "multi_similarity"] = "contrastive",
        memory_size: int = 1024,
        *,
        embedding_dim: int,
    ) -> None:
        super().__init__()
        self.inner: Loss = LOSSES[loss].create()
        self.memory_size = memory_size
        self.register_buffer("memory_emb", torch.zeros(memory_size, embedding_dim))  # (M, D)
        self.register_buffer("memory_labels", torch.zeros(memory_size, dtype=torch.long))  # (M,)
        self.reset()

    def reset(self) -> None:
        """Empty the queue."""
        self.queue_idx = 0
        self.filled = False

    def enqueue(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Write a batch (detached) over the oldest entries; returns its slots, shape (B,)."""
        self.memory_emb = self.memory_emb.to(emb.device, emb.dtype)
        self.memory_labels = self.memory_labels.to(labels.device)
        start = self.queue_idx
        slots = torch.arange(start, start + len(emb), device=emb.device) % self.memory_size
        self.memory_emb[slots] = emb.detach()
        self.memory_labels[slots] = labels
        self.queue_idx = (start + len(emb)) % self.memory_size
        self.filled = self.filled or self.queue_idx <= start
        return slots

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Enqueue the batch, then the inner loss over (batch anchor, queue entry) pairs."""
        B = len(emb)
        if self.memory_size < B:
            raise ConfigError(
                f"The 'memory_size' parameter of cross_batch_memory must be at least the "
                f"batch size ({B}). Got {self.memory_size}."
            )
        slots = self.enqueue(emb, labels)  # (B,)
        size = self.memory_size if self.filled else self.queue_idx
        ref_emb, ref_labels = self.memory_emb[:size], self.memory_labels[:size]  # (M', D), (M',)
        pos_mask = labels[:, None] == ref_labels[None, :]  # (B, M')
        neg_mask = ~pos_mask
        if tuples is None:
            pos_mask[torch.arange(B, device=emb.device), slots] = False  # no self-pairs
        else:
            pos_mask[:, slots] = False
            neg_mask[:, slots] = False
            mined = to_pairs(tuples)
            pos_mask[mined.anchor_pos, slots[mined.pos]] = True
            neg_mask[mined.anchor_neg, slots[mined.neg]] = True
        a1, p = pos_mask.nonzero(as_tuple=True)
        a2, n = neg_mask.nonzero(as_tuple=True)
        pairs = Pairs(a1, p + B, a2, n + B)  # indices into [batch; queue]
        joint_emb = torch.cat([emb, ref_emb])  # (B + M', D)
        joint_labels = torch.cat([labels, ref_labels])  # (B + M',)
        return self.inner(joint_emb, joint_labels, pairs)

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """The inner loss's curve: the memory changes which pairs are seen, not their cost."""
        return self.inner.curve(d_ap, d_an)

    def distance_lines(self) -> dict[str, float]:
        """The inner loss's margins."""
        return self.inner.distance_lines()

    def triplet_boundary(self) -> Callable[[Tensor], Tensor] | None:
        """The inner loss's triplet boundary (the memory changes which pairs are seen)."""
        return self.inner.triplet_boundary()

    def histogram_lines(self, pos_dist: Tensor | np.ndarray) -> dict[str, float]:
        """The inner loss's histogram lines (its relative margin included)."""
        return self.inner.histogram_lines(pos_dist)

    def extras(self) -> dict[str, float]:
        """The inner loss's learnable scalars."""
        return self.inner.extras()

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """The inner loss's boundaries: the memory changes which pairs are seen, not their cost."""
        return self.inner.decision_boundaries(num)
