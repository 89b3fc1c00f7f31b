"""The README's Python API block runs as written (the public names it lists work)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_api_block_runs(capsys) -> None:
    text = README.read_text()
    block = re.search(r"<!-- api -->\n```python\n(.*?)```\n<!-- /api -->", text, re.S)
    assert block, "the README has no Python API block"
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "20" in out.splitlines()[0]
