"""AppTest of the Retrieval page: a clear message without runs, neighbours of a picked query."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis import retrieval
from dml_core.config import make_config
from dml_core.evaluation import embed
from dml_core.runs import RunStore
from tests.saved_runs import make_tiny_run, train_and_save

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


FINISHED_ID = "finished-run"


def no_embedding(*_: object, **__: object) -> None:
    raise AssertionError("the page embedded the images again")


def compute_buttons(at: AppTest) -> list:
    return [b for b in at.button if b.key == "retrieval.compute"]


@pytest.fixture(scope="module")
def finished_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that finished with its final evaluation (so it saved its embeddings)."""
    root = tmp_path_factory.mktemp("retrieval-finished")
    cfg = make_config(
        dataset="digits", embedding_dim=8, classes_per_batch=4, samples_per_class=8,
        steps=20, snapshot_every=10, probe_size=100, final_eval=True, device="cpu",
    )  # fmt: skip
    train_and_save(RunStore(root), cfg, FINISHED_ID)
    return root


def test_a_finished_run_opens_its_neighbours_without_embedding(
    finished_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run's neighbours come from the embeddings its final evaluation saved.

    Indexes are treated as FashionMNIST's (never embedded unasked). Catches: the page
    embedding the images a second time (``embed`` raises), or asking to "Compute full
    index" for a run that has its embeddings.
    """
    monkeypatch.setattr(retrieval, "embed", no_embedding)
    monkeypatch.setattr(retrieval, "AUTO_INDEX_MAX", 0)
    at = page(finished_dir, monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert compute_buttons(at) == []
    assert strip_images(at)[:5] == [9] * 5  # the query strip and the 4 worst queries
    at.number_input(key="retrieval.query").set_value(17).run()
    assert not at.exception, at.exception
    assert any("Query 17" in json.dumps(s["layout"]) for s in chart_specs(at).values())


def test_a_run_without_saved_embeddings_asks_before_embedding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a stopped or old run (no embeddings saved) embedded without asking, or the
    "Compute full index" button doing nothing."""
    make_tiny_run(tmp_path, "no-embeddings", steps=10)
    monkeypatch.setattr(retrieval, "embed", no_embedding)
    monkeypatch.setattr(retrieval, "AUTO_INDEX_MAX", 0)
    at = page(tmp_path, monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert len(compute_buttons(at)) == 1
    assert strip_images(at) == []
    monkeypatch.setattr(retrieval, "embed", embed)
    compute_buttons(at)[0].click().run()
    assert not at.exception, at.exception
    assert strip_images(at)[:5] == [9] * 5
    assert RunStore(tmp_path).embeddings_step("no-embeddings") == 10
