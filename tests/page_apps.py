"""One way for AppTests to open a page over a runs directory of its own, and to find a
number widget by key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def page_on_runs(
    page_file: str, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AppTest]:
    """``pages/<page_file>`` alone, its services() built over ``runs_dir``; run once, then
    yielded; its jobs are stopped afterwards (use with ``yield from`` in a fixture)."""
    import pages.ui

    monkeypatch.setenv("DML_RUNS_DIR", str(runs_dir))
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(runs_dir))
    pages.ui._jobs.clear()
    at = AppTest.from_file(str(ROOT / "pages" / page_file), default_timeout=60)
    at.run()
    assert not at.exception
    yield at
    _, manager, _ = pages.ui.services()
    manager.stop_all()
    pages.ui._jobs.clear()


def number_widget(at: AppTest, key: str):
    """The one slider or number input with this key (registry parameters are either)."""
    (widget,) = [w for kind in ("slider", "number_input") for w in at.get(kind) if w.key == key]
    return widget


def live_chart_key(proto: Any) -> str | None:
    """The key of a ``pages.live_chart`` element (None for any other element)."""
    if getattr(proto, "component_name", None) != "dml_live_chart":
        return None
    return proto.id.split("-", 2)[-1]  # "$$ID-<hash>-<key>"


def live_charts(at: AppTest) -> dict[str, dict]:
    """The figures the page drew with ``pages.live_chart``, by key (their ``data`` parsed)."""
    found = {}
    for element in at.get("bidi_component"):
        if key := live_chart_key(element.proto):
            data = json.loads(element.proto.json)
            found[key] = {**data, "spec": json.loads(data["spec"])}
    return found


def live_chart_places(at: AppTest) -> dict[str, tuple[int, ...]]:
    """Where each live chart sits in the page's element tree (its index path from the main
    area), by key: the browser keeps a chart only while it stays in its place."""
    places: dict[str, tuple[int, ...]] = {}

    def walk(node: Any, path: tuple[int, ...]) -> None:
        for index, child in getattr(node, "children", {}).items():
            if key := live_chart_key(getattr(child, "proto", None)):
                places[key] = (*path, index)
            walk(child, (*path, index))

    walk(at.main, ())
    return places


def figure_specs(at: AppTest) -> list[dict]:
    """Every plotly figure on the page, drawn by ``st.plotly_chart`` or as a live chart."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return specs + [chart["spec"] for chart in live_charts(at).values()]
