"""AppTest of the Miner view page: figures for every miner, clear messages for bad settings."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.config import make_config
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from tests.saved_runs import train_and_save

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"), raising=False)
    at = AppTest.from_file(str(ROOT / "pages" / "miner_view.py"), default_timeout=30)
    at.run()
    assert not at.exception
    return at


def specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def chart(at: AppTest, key: str) -> dict:
    """The figure spec of the chart with widget key ``key``."""
    (found,) = [el for el in at.get("plotly_chart") if el.proto.id.endswith(f"-{key}")]
    return json.loads(found.proto.spec)


def values(array: list | dict) -> np.ndarray:
    """A plotly array from the figure spec: a list, or typed base64 ``{dtype, bdata}``."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).astype(float)
    return np.asarray(array, dtype=float)


def test_default_page_shows_the_batch_the_polar_view_and_the_table(page: AppTest) -> None:
    assert page.title[0].value == "Miner view"
    assert not page.error
    assert len(specs(page)) == 3  # PCA, the image strip, polar
    polar = chart(page, "mv.chart.polar")
    polar_axes = [k for k in polar["layout"] if k.startswith("polar")]
    assert len(polar_axes) == len(MINERS)
    table = page.dataframe[0].value
    assert list(table.miner) == list(MINERS)


@pytest.mark.parametrize("miner", list(MINERS))
def test_renders_for_every_registered_miner(page: AppTest, miner: str) -> None:
    page.pills(key="mv.miners").set_value([miner]).run()
    assert not page.exception
    assert not page.error
    assert page.selectbox(key="mv.focus").value == miner
    assert list(page.dataframe[0].value.miner) == [miner]
    assert len(specs(page)) == 3
    assert f"the {miner} miner" in chart(page, "mv.chart.strip")["layout"]["title"]["text"]


def test_changing_the_anchor_redraws(page: AppTest) -> None:
    page.number_input(key="mv.anchor").set_value(7).run()
    assert not page.exception
    assert "anchor #7" in chart(page, "mv.chart.polar")["layout"]["title"]["text"]
    strip = chart(page, "mv.chart.strip")
    assert "anchor #7" in strip["layout"]["title"]["text"]
    assert strip["layout"]["meta"]["tiles"][0]["index"] == 7


@pytest.mark.parametrize(
    ("widget", "value", "field"),
    [("mv.K", 1, "'K'"), ("mv.P", 12, "'P'"), ("mv.P", 1, "'P'")],
)
def test_bad_batch_sizes_give_a_message_naming_the_field(
    page: AppTest, widget: str, value: int, field: str
) -> None:
    page.number_input(key=widget).set_value(value).run()
    assert not page.exception
    assert any(field in e.value for e in page.error)
    assert not page.get("plotly_chart")


def test_no_miner_chosen_is_explained(page: AppTest) -> None:
    page.pills(key="mv.miners").set_value([]).run()
    assert not page.exception
    assert any("'miners'" in e.value for e in page.error)


def test_anchor_is_clamped_when_the_batch_shrinks(page: AppTest) -> None:
    page.number_input(key="mv.anchor").set_value(40).run()
    page.number_input(key="mv.K").set_value(2).run()
    assert not page.exception
    assert page.number_input(key="mv.anchor").value == 11


def test_no_warning_on_the_default_page(page: AppTest) -> None:
    assert not page.warning
    assert page.slider(key="mv.margin").value == pytest.approx(0.2)


def test_rings_follow_the_chosen_positive_and_every_mark_agrees(page: AppTest) -> None:
    # options read "#12, d = 0.591", farthest first
    choices = [int(o[1:].split(",")[0]) for o in page.selectbox(key="mv.positive").options]
    far_first = [float(o.split("d = ")[1]) for o in page.selectbox(key="mv.positive").options]
    assert far_first == sorted(far_first, reverse=True)
    assert page.selectbox(key="mv.positive").value == choices[0]  # the default: the farthest
    chosen = choices[-1]  # the nearest positive
    page.selectbox(key="mv.positive").set_value(chosen).run()
    assert not page.exception
    polar = chart(page, "mv.chart.polar")
    assert f"rings for positive #{chosen}" in polar["layout"]["title"]["text"]
    margin = page.slider(key="mv.margin").value
    traces = [t for t in polar["data"] if t.get("meta")]
    for miner in MINERS:
        mine = [t for t in traces if t["meta"]["miner"] == miner]
        rings = {
            t["meta"]["ring"]: t["meta"]["radius"] for t in mine if t["meta"]["role"] == "ring"
        }
        assert rings["+ α"] == pytest.approx(rings["d(a,p)"] + margin)
        for t in mine:
            if t["meta"]["role"] != "negative":
                continue
            assert t["meta"]["positive"] == chosen
            for d in values(t["r"]):
                inside, outside = d <= rings["d(a,p)"], d >= rings["+ α"]
                expected = 2 if inside else 0 if outside else 1  # hard / easy / semi-hard
                assert t["meta"]["kind"] == expected, (miner, d)


def test_the_margin_follows_the_chosen_saved_run(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    store = RunStore(runs)
    cfg = make_config(
        steps=2,
        probe_size=50,
        embedding_dim=8,
        final_eval=False,
        device="cpu",
        miner="semi_hard",
        miner_params={"margin": 0.35},
    )
    run_id = train_and_save(store, cfg)
    monkeypatch.setenv("DML_RUNS_DIR", str(runs))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(runs), raising=False)
    at = AppTest.from_file(str(ROOT / "pages" / "miner_view.py"), default_timeout=30)
    at.run()
    assert at.slider(key="mv.margin").value == pytest.approx(0.2)
    at.selectbox(key="mv.source").set_value(run_id).run()
    assert not at.exception
    assert not at.warning
    assert at.slider(key="mv.margin").value == pytest.approx(0.35)
    at.slider(key="mv.margin").set_value(0.5).run()  # the user's choice then stays
    assert at.slider(key="mv.margin").value == pytest.approx(0.5)
    at.selectbox(key="mv.source").set_value("untrained net").run()
    assert at.slider(key="mv.margin").value == pytest.approx(0.2)


def test_a_batch_beyond_the_mining_budget_is_one_sentence(page: AppTest) -> None:
    page.number_input(key="mv.P").set_value(10).run()
    page.number_input(key="mv.K").set_value(64).run()
    assert not page.exception
    assert len(page.error) == 1
    assert "lower P or K" in page.error[0].value
    assert ". " not in page.error[0].value


def test_the_image_strip_agrees_with_the_polar_view(page: AppTest) -> None:
    """The strip shows the focus miner's negatives for the chosen positive, nearest first, each
    with the distance and kind the polar panel of that miner draws (one classification).
    Catches: the strip following another miner or positive than the polar rings, or tiles
    out of distance order."""
    page.selectbox(key="mv.focus").set_value("all").run()  # kinds depend on the positive
    choices = [int(o[1:].split(",")[0]) for o in page.selectbox(key="mv.positive").options]
    page.selectbox(key="mv.positive").set_value(choices[1]).run()  # not the default farthest
    assert not page.exception
    polar = chart(page, "mv.chart.polar")
    drawn = {}  # negative index -> (distance, kind) in the panel of the all miner
    for t in polar["data"]:
        meta = t.get("meta") or {}
        if meta.get("miner") == "all" and meta.get("role") == "negative":
            for idx, r in zip(values(t["customdata"]), values(t["r"]), strict=True):
                drawn[int(idx)] = (r, meta["kind"])
    assert len({kind for _, kind in drawn.values()}) > 1  # several kinds to agree on
    tiles = chart(page, "mv.chart.strip")["layout"]["meta"]["tiles"]
    negatives = [t for t in tiles if t["role"] == "negative"]
    nearest = sorted(drawn, key=lambda i: drawn[i][0])[: len(negatives)]  # the strip is capped
    assert len(negatives) == min(len(drawn), 30)
    assert {t["index"] for t in negatives} == set(nearest)
    assert [t["distance"] for t in negatives] == sorted(t["distance"] for t in negatives)
    for t in negatives:
        assert t["distance"] == pytest.approx(drawn[t["index"]][0], rel=1e-6)
        assert t["kind"] == drawn[t["index"]][1]
