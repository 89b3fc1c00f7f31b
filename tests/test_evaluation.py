"""The final evaluation's embedding pass (dml_core.evaluation)."""

from __future__ import annotations

import pytest
import torch

from dml_core import evaluation
from dml_core.data import load_dataset
from dml_core.fast_paths import pool_before_relu
from dml_core.nets import build_net


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _net(data, name: str = "convnet"):
    net = build_net(name, data.image_shape, 8, seed=0)
    net = net.to(memory_format=torch.channels_last)
    pool_before_relu(net.trunk)  # the Trainer's fast paths
    return net


def test_embed_chunks_change_nothing_and_return_an_ordinary_tensor(digits, monkeypatch) -> None:
    """Catches rows lost or repeated at chunk edges, and handing back inference tensors.

    (Tried: concatenating inside ``torch.inference_mode``: the in-place write below raises;
    a chunk loop that skips the last partial chunk: the shapes differ.)
    """
    net = _net(digits)
    x = digits.query.x[:301]
    whole = evaluation.embed(net, x, torch.device("cpu"))
    monkeypatch.setattr(evaluation, "CPU_CHUNK_PER_THREAD", 7)
    assert evaluation.embed_chunk(torch.device("cpu")) == 7 * torch.get_num_threads()
    # bf16 activations take half the bytes: twice the images per chunk
    assert (
        evaluation.embed_chunk(torch.device("cpu"), torch.bfloat16) == 14 * torch.get_num_threads()
    )
    chunked = evaluation.embed(net, x, torch.device("cpu"))
    assert chunked.shape == (301, 8)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    assert not chunked.is_inference()
    chunked[0] = 0.0  # callers may write into it
    assert net.training  # the mode it came in with


def test_bf16_evaluation_keeps_map_at_r(digits) -> None:
    """bf16 embeddings rank as float32 ones do, within 0.002 of MAP@R, but are not the same.

    Catches ``evaluate`` ignoring ``low_precision`` (the embeddings would be identical).
    """
    net = _net(digits)
    cpu = torch.device("cpu")
    exact = evaluation.evaluate(net, digits, cpu, with_nmi=False)
    rounded = evaluation.evaluate(net, digits, cpu, low_precision=torch.bfloat16, with_nmi=False)
    assert set(exact.metrics) == {"precision_at_1", "r_precision", "map_at_r"}
    assert not torch.equal(exact.query_emb, rounded.query_emb)
    assert rounded.metrics["map_at_r"] == pytest.approx(exact.metrics["map_at_r"], abs=2e-3)
    assert exact.query_emb.shape == (len(digits.query), 8)
    assert exact.reference_emb.shape == (len(digits.reference), 8)


def test_evaluate_reports_nmi_by_default(digits) -> None:
    """Catches NMI dropped from the final metrics (pages and Compare show it)."""
    found = evaluation.evaluate(_net(digits, "mlp"), digits, torch.device("cpu"))
    assert set(found.metrics) == {"precision_at_1", "r_precision", "map_at_r", "nmi"}
    assert 0.0 <= found.metrics["nmi"] <= 1.0
