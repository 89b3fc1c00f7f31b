"""Tests for dml_core.bench.user_data_speed: its PNG writer and a tiny run (no timing asserted)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from dml_core.bench.user_data_speed import png_bytes, report, run_user_data_bench


def test_png_writer_round_trips() -> None:
    """Pillow reads back exactly the pixels written (catches a missing per-row filter byte,
    a wrong IHDR or a bad CRC, which Pillow rejects)."""
    image = np.random.default_rng(0).integers(0, 256, (28, 20), dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(image))) as im:
        assert im.mode == "L"
        assert np.array_equal(np.asarray(im), image)


def test_tiny_bench_run(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Three opens of a generated folder: decoded twice, then from the cache; env restored."""
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "mine"))
    result = run_user_data_bench(n_images=40, workers=2)
    assert result["serial"]["note"] == result["parallel"]["note"] == "decoded and cached"
    assert result["cached"]["note"] == "from the cache"
    assert os.environ["DML_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "mine").exists()
    assert "40 PNGs of 28x28" in report(result)


def test_bench_user_data_is_a_command_of_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """``python -m dml_core bench user-data --images N --json`` runs this benchmark.

    Catches the command not wired (``bench`` then rejects ``user-data`` with exit status 2) or
    its flags dropped on the way.
    """
    from dml_core import cli

    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["bench", "user-data", "--images", "24", "--workers", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cached"]["note"] == "from the cache"
    assert result["images"] == 24
