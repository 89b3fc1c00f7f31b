"""The benchmark runs end to end (tiny and quick) and reports what it promises."""

from __future__ import annotations

import json

from dml_core.cli import main


def test_quick_bench_prints_one_json_object_with_the_promised_keys(capsys, tmp_path) -> None:
    out = tmp_path / "assets" / "bench.json"
    args = ["bench", "--quick", "--json", "--dataset", "digits", "--samples", "512"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ratio"] > 0
    assert json.loads(out.read_text()) == result
    for name in ("pml", "dml_core"):
        variant = result["variants"][name]
        assert variant["samples"] == 512
        for key in ("samples_per_s", "seconds_per_60k", "precision_at_1", "map_at_r"):
            assert variant[key] >= 0
    for kind in ("real_batch", "random_embeddings"):
        row = result["mining_loss_ms"][kind]
        assert {"pml", "dml_core_fused", "dml_core_band_miner"} <= row.keys()
    assert result["snapshot_s"] > 0
    assert "none" in result["ablation_ms_per_step"]
    assert {"cpu_count", "torch_threads", "device", "device_name"} <= result["machine"].keys()
    assert result["date"]
    assert result["command"].startswith("python -m dml_core")
