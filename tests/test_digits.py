"""The digits split: scikit-learn's arrays exactly, read back later without scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dml_core import digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(digits, "CACHE_DIR", tmp_path)
    return tmp_path


def assert_same(got: digits.Split, want: digits.Split) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_the_cached_split_is_scikit_learns(cache: Path) -> None:
    """Catches: a cache written from other arrays or read back in another order (train and
    test swapped, labels as images), or a split that is not the stratified seed-0 one."""
    want = digits.split_with_sklearn()
    first = digits.digits_split()  # made with scikit-learn, written
    assert digits.cache_file().exists()
    again = digits.digits_split()  # read back
    assert_same(first, want)
    assert_same(again, want)
    assert np.bincount(want[3]).tolist() == np.bincount(again[3]).tolist()


def test_a_damaged_cache_is_made_again(cache: Path) -> None:
    """Catches: a truncated or foreign cache file returned as data (or raised as an error)."""
    want = digits.split_with_sklearn()
    file = digits.cache_file()
    file.write_bytes(b"PK\x03\x04 not a whole zip")
    assert_same(digits.digits_split(), want)
    wrong = {
        k: np.zeros((3, 8, 8) if k.endswith("x") else 3, digits.LAYOUT[k][1]) for k in digits.KEYS
    }
    np.savez(file, **wrong)  # the right names, the wrong arrays
    assert_same(digits.digits_split(), want)
    assert_same(digits._read(file), want)  # and written whole again


def test_a_new_process_reads_digits_without_scikit_learn(tmp_path: Path) -> None:
    """Catches: a cache that is written but never read (each process imports scikit-learn,
    about a second of CPU), and a cache path that depends on the process."""
    code = (
        "import sys; from dml_core.data import load_dataset; load_dataset('digits'); "
        "print('sklearn' in sys.modules)"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert [r.stdout.strip() for r in runs] == ["True", "False"]
    assert list((tmp_path / ".cache" / "dml_playground").glob("digits-sklearn-*.npz"))
