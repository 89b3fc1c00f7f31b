"""Embedding images with a trained net, in chunks and without autograd.

Snapshots embed the probe set with it; the final evaluation embeds the query and reference
splits and measures retrieval (``evaluate``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dml_core import metrics
from dml_core.data import Dataset
from dml_core.nets import Embedder

__all__ = ["EMBED_CHUNK", "Evaluation", "embed", "embed_chunk", "evaluate"]

EMBED_CHUNK = 2048  # images per forward pass on a GPU
CPU_CHUNK_PER_THREAD = 64  # on a CPU: float32 images per torch thread, so that each thread's
# activations stay small: in its cache, and under the sizes malloc maps afresh for every chunk.
# Twice as many in bf16, whose activations take half the bytes. Measured, the 28x28 ConvNet:
# - 2 cores, AVX2, float32, in a thread after 10 training steps, as a run's final evaluation:
#   232-293 us per image with 64 per thread, 282-423 us with 128 (36-61 page faults per image);
# - 2 cores with AVX512-BF16, one thread: bf16 152 us per image in chunks of 128, 355 us in
#   chunks of 2048 (float32: 279 vs 579 us).


def embed_chunk(device: torch.device, low_precision: torch.dtype | None = None) -> int:
    """Images per forward pass of ``embed`` on ``device`` (``low_precision``: as in ``embed``)."""
    if device.type == "cpu":
        per_thread = CPU_CHUNK_PER_THREAD * (1 if low_precision is None else 2)
        return per_thread * torch.get_num_threads()
    return EMBED_CHUNK


def embed(
    net: Embedder,
    images: Tensor,
    device: torch.device,
    low_precision: torch.dtype | None = None,
    *,
    on_device: bool = False,
) -> Tensor:
    """Embed images (N, 1, H, W) in chunks, in eval mode; returns (N, D) float32 on the CPU.

    ``low_precision`` as in ``Embedder.forward``: the body in bf16, the embedding layer in
    float32, as the net trains where the Trainer uses bf16. The forward passes run under
    ``torch.inference_mode`` (no autograd records); the result is an ordinary tensor.
    ``on_device`` keeps the result on ``device`` (for a search there).
    """
    was_training = net.training
    net.eval()
    home = device if on_device else torch.device("cpu")
    chunk = embed_chunk(device, low_precision)
    try:
        with torch.inference_mode():
            out = [
                net(images[i : i + chunk].to(device), low_precision=low_precision).float()
                for i in range(0, len(images), chunk)
            ]
    finally:
        net.train(was_training)
    # Concatenated outside inference mode: callers get a tensor they may modify in place.
    return torch.cat(out).to(home) if out else torch.empty(0, device=home)


class Evaluation(NamedTuple):
    """The final evaluation of a run: its retrieval metrics and the embeddings they came from.

    Attributes:
        metrics: ``metrics.retrieval_metrics`` of every query against every reference.
        query_emb: (Nq, D) float32 embeddings of the query (test) split, on the CPU.
        reference_emb: (Nr, D) float32 embeddings of the reference (train) split, on the CPU.
    """

    metrics: dict[str, float]
    query_emb: Tensor
    reference_emb: Tensor


def evaluate(
    net: Embedder,
    data: Dataset,
    device: torch.device,
    *,
    low_precision: torch.dtype | None = None,
    with_nmi: bool = True,
) -> Evaluation:
    """Full retrieval: every query (test) image against every reference (train) image.

    The search (10k x 60k distances for MNIST) runs on ``device``. ``low_precision`` embeds
    as the net trains (``Trainer.low_precision``: bf16 for the 28x28 ConvNet on hardware with
    native bf16; FashionMNIST's MAP@R then moves by about 3e-5, see ``Trainer.final_evaluation``).
    """
    query = embed(net, data.query.x, device, low_precision, on_device=True)
    ref = embed(net, data.reference.x, device, low_precision, on_device=True)
    result = metrics.retrieval_metrics(
        query, data.query.y, ref, data.reference.y, with_nmi=with_nmi
    )
    return Evaluation(result, query.cpu(), ref.cpu())
