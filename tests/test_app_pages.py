"""app.py's pages: each url path is its file name.

On a fresh server the first request resolves its page from ``pages/`` before app.py has run
``st.navigation``; a page whose url path differs from its file name (``/miners`` for
``miner_view.py``) then opened behind Streamlit's "Page not found" dialog, the first thing a
student saw of a teacher's link (checked in Chromium on a fresh server).
"""

from __future__ import annotations

import ast
from pathlib import Path

from streamlit.testing.v1 import AppTest

from pages import catalogue

ROOT = Path(__file__).resolve().parents[1]


def test_every_page_is_reached_at_its_file_name() -> None:
    """Catches: an ``st.Page(..., url_path="miners")`` for pages/miner_view.py."""
    tree = ast.parse((ROOT / "app.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page"
    ]
    assert calls, "app.py builds no st.Page"
    for call in calls:
        assert "url_path" not in {keyword.arg for keyword in call.keywords}
    assert len(catalogue.PAGES) == 9
    for page in catalogue.PAGES:
        assert (ROOT / page.path).is_file(), page.path


def test_home_links_every_other_page_of_the_navigation() -> None:
    """Home's list of pages is the navigation's, less Home itself, in the same order.

    Catches: a page in the sidebar that Home leaves out (Sweep was missing from Home's own
    copy of the list), or a stale title.
    """
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    listed = [link.proto.label for link in at.get("page_link")]
    assert listed == ["Go to Train", *(page.title for page in catalogue.PAGES[1:])]
