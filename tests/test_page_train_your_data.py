"""AppTest of the Train sidebar's "Your data" (issue 17): a table trains under its own settings.

Each test names the wrong implementation it catches; each was tried once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import pages.ui
from tests.user_data_files import gaussian_table, write_npz

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """Three classes of 12 rows: the fitted batch is P = 3, K = 10 (80% of 12 train)."""
    x, y = gaussian_table(per_class=12)
    keep = np.isin(y, ["alpha", "beta", "gamma"])
    return write_npz(tmp_path / "t.npz", x[keep], y[keep])


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("DML_RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(runs_dir))
    pages.ui._jobs.clear()
    yield runs_dir
    _, manager, _ = pages.ui.services()
    manager.stop_all()
    pages.ui._jobs.clear()


def train_page(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception
    return at


def saved_config(runs_dir: Path) -> dict:
    (run,) = [p for p in runs_dir.iterdir() if (p / "config.json").exists()]
    return json.loads((run / "config.json").read_text())


def test_a_table_path_trains_with_the_batch_and_net_that_fit_it(runs: Path, table: Path) -> None:
    """Catches: the page checking a path with the built-in loader (Train stays disabled), or
    P x K left at 6 x 16 that 3 classes of 10 cannot fill."""
    at = train_page()
    at.toggle(key="cfg.your_data").set_value(True).run()
    assert not at.exception
    assert at.button(key="btn.train").disabled  # no path yet
    at.text_input(key="your_data.path").set_value(str(table)).run()
    assert not at.exception
    assert not at.button(key="btn.train").disabled
    at.number_input(key="cfg.steps").set_value(2).run()
    at.button(key="btn.train").click().run()
    assert not at.exception
    cfg = saved_config(runs)
    assert cfg["dataset"] == str(table)
    assert (cfg["classes_per_batch"], cfg["samples_per_class"], cfg["net"]) == (3, 10, "mlp")


def test_a_link_to_a_table_opens_under_your_data_with_its_own_batch(
    runs: Path, table: Path
) -> None:
    """Catches: a link's path put into the built-in dataset picker (a Streamlit error), or the
    link's own K replaced by the K that the data could fill (a run shown under other settings)."""
    link = {"dataset": str(table), "net": "mlp", "classes_per_batch": "3", "samples_per_class": "4"}
    at = train_page(link)
    assert at.toggle(key="cfg.your_data").value
    assert at.text_input(key="your_data.path").value == str(table)
    assert at.number_input(key="cfg.samples_per_class").value == 4  # the link's, not 10
    assert not at.button(key="btn.train").disabled
