"""House rules checked on the AST: the core never imports streamlit; the UI holds no maths."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UI_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
CORE_FILES = sorted((ROOT / "dml_core").rglob("*.py"))
UI_FORBIDDEN = {"torch", "numpy", "scipy", "sklearn", "umap", "pytorch_metric_learning"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_streamlit(path: Path) -> None:
    assert "streamlit" not in imported_modules(path)


@pytest.mark.parametrize("path", [p for p in UI_FILES if p.exists()], ids=lambda p: p.name)
def test_ui_imports_no_maths_libraries(path: Path) -> None:
    assert not imported_modules(path) & UI_FORBIDDEN


def test_the_fixed_layout_exists() -> None:
    for name in (
        "app.py",
        "pages",
        "dml_core",
        "assets",
        "tests",
        "requirements.txt",
        "README.md",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name


def test_training_does_not_import_scikit_learn() -> None:
    """Catches scikit-learn imported at the top of a module on the training path (metrics):
    about a second in every process that trains (the CLI, each job's child, each Ray worker),
    for NMI's k-means that only the final evaluation runs."""
    code = "import sys, dml_core.cli, dml_core.train; print('sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
