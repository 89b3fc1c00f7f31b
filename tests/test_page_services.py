"""Every page's services(): a bad Ray address is one message on the page, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.bench.app_speed import free_port
from tests.page_apps import ROOT

pytest.importorskip("ray")


def test_a_ray_address_where_nothing_listens_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches services() letting the job manager's ConfigError through (a traceback on every
    page while DML_RAY_ADDRESS names a dead cluster)."""
    import pages.ui

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("DML_RAY_ADDRESS", address)
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(tmp_path))
    pages.ui._jobs.clear()
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "compare.py"), default_timeout=60)
        at.run()
        assert not at.exception
        assert len(at.error) == 1
        assert address in at.error[0].value
    finally:
        pages.ui._jobs.clear()
