"""app.py's pages: each url path is its file name.

On a fresh server the first request resolves its page from ``pages/`` before app.py has run
``st.navigation``; a page whose url path differs from its file name (``/miners`` for
``miner_view.py``) then opened behind Streamlit's "Page not found" dialog, the first thing a
student saw of a teacher's link (checked in Chromium on a fresh server).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_page_is_reached_at_its_file_name() -> None:
    """Catches: an ``st.Page(..., url_path="miners")`` for pages/miner_view.py."""
    tree = ast.parse((ROOT / "app.py").read_text())
    pages = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page"
    ]
    assert len(pages) == 9
    for call in pages:
        path = Path(call.args[0].value)
        assert (ROOT / path).is_file()
        url = {k.arg: k.value.value for k in call.keywords if k.arg == "url_path"}
        assert url.get("url_path", path.stem) == path.stem, path
