"""``python -m dml_core bench metrics``: times the metrics of a run's saved embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core import metrics
from dml_core.cli import main
from dml_core.config import make_config
from dml_core.runs import RunEmbeddings, RunStore


def _run_with_embeddings(root: Path) -> tuple[RunStore, str, RunEmbeddings]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8))
    ql, rl = rng.integers(0, 5, 300), rng.integers(0, 5, 1200)
    emb = RunEmbeddings(
        10,
        (centres[ql] + rng.normal(size=(300, 8))).astype(np.float32),
        ql.astype(np.int64),
        (centres[rl] + rng.normal(size=(1200, 8))).astype(np.float32),
        rl.astype(np.int64),
    )
    store = RunStore(root)
    run_id = store.create(make_config(dataset="digits", steps=10, device="cpu"))
    store.save_embeddings(run_id, emb)
    return store, run_id, emb


def test_bench_metrics_times_the_saved_embeddings_and_reports_their_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Catches: timing a slice of the queries (or other embeddings) instead of the saved ones,
    metrics that differ from ``retrieval_metrics`` on them, a missing key."""
    _store, run_id, emb = _run_with_embeddings(tmp_path)
    argv = ["bench", "metrics", "--run", run_id, "--runs", str(tmp_path), "--repeats", "2"]
    threads = torch.get_num_threads()
    assert main([*argv, "--json", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # given back: later tests sum alike
    out = json.loads(capsys.readouterr().out)
    assert (out["queries"], out["references"], out["dim"], out["threads"]) == (300, 1200, 8, 1)
    assert len(out["wall_s_all"]) == 2
    assert out["wall_s"] == min(out["wall_s_all"])
    assert out["cpu_s"] >= 0
    assert out["first_call_s"] >= 0
    expected = metrics.retrieval_metrics(
        torch.from_numpy(emb.query_emb),
        torch.from_numpy(emb.query_labels),
        torch.from_numpy(emb.ref_emb),
        torch.from_numpy(emb.ref_labels),
        with_nmi=False,
    )
    assert out["metrics"] == {k: float(v) for k, v in expected.items()}


def test_bench_metrics_of_a_run_without_embeddings_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(make_config(dataset="digits", steps=10, device="cpu"))
    assert main(["bench", "metrics", "--run", run_id, "--runs", str(tmp_path)]) == 2
    assert "has no saved embeddings" in capsys.readouterr().err
