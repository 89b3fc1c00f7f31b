"""AppTest of the Retrieval page: a clear message without runs, neighbours of a picked query."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.saved_runs import make_tiny_run

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "tiny-page-run"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrieval-runs")
    make_tiny_run(root, RUN_ID, steps=20)
    return root


def page(root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    # pages.ui reads DML_RUNS_DIR at import, which may have happened already in this process
    monkeypatch.setenv("DML_RUNS_DIR", str(root))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(root))
    at = AppTest.from_file(str(ROOT / "pages" / "retrieval.py"), default_timeout=60)
    at.session_state["retrieval.method"] = "PCA"  # no UMAP compile in unit tests
    return at


def chart_specs(at: AppTest) -> dict[str, dict]:
    return {el.proto.id: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def strip_images(at: AppTest) -> list[int]:
    """Number of image traces in each chart that has any."""
    counts = []
    for spec in chart_specs(at).values():
        n = sum(trace.get("type") == "image" for trace in spec["data"])
        if n:
            counts.append(n)
    return counts


def test_no_runs_gives_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(tmp_path / "empty", monkeypatch)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Retrieval"
    assert any("No saved run with weights" in i.value for i in at.info)


def test_picking_a_query_shows_its_neighbours(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = page(runs_dir, monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="retrieval.run").value == RUN_ID
    # query strip (1 + k images) and the default 4 worst queries
    assert strip_images(at)[:5] == [9] * 5
    at.number_input(key="retrieval.query").set_value(17).run()
    at.slider(key="retrieval.k").set_value(5).run()
    assert not at.exception, at.exception
    assert strip_images(at)[0] == 6
    strip = next(s for s in chart_specs(at).values() if "Query 17" in json.dumps(s["layout"]))
    assert len(strip["layout"]["shapes"]) == 6  # one frame per image
    assert any("TAR @ FAR" in m.label for m in at.metric)
    assert (runs_dir / RUN_ID / "embeddings.npz").exists()


def test_a_run_in_the_link_that_does_not_exist_says_so(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a wrong ?run= silently replaced by another run."""
    at = page(runs_dir, monkeypatch)
    at.query_params["run"] = "no-such-run"
    at.run()
    assert not at.exception
    assert any("'no-such-run' in the link does not exist" in w.value for w in at.warning)
    assert at.selectbox(key="retrieval.run").value == RUN_ID
