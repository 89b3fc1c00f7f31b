"""Feature tables: ``.npz`` (``x`` (n, d), ``y`` (n,), optional ``split``), ``.csv``, ``.parquet``.

The frozen-backbone setting: each row is a feature vector from a pretrained network and a
small metric head is trained on top. ``.csv`` and ``.parquet`` hold numeric feature columns,
a ``label`` column (numbers or strings) and optionally a ``split`` column (``train``/``test``).

Nothing in a data file can execute: ``.npz`` is read with ``numpy.load(allow_pickle=False)``,
which refuses object arrays (their loading would run pickle); ``.csv`` is parsed as text;
``.parquet`` is read by pyarrow, whose types need no pickle.

Labels may be numbers or strings; the class names are the distinct labels sorted by value
(numerically for numbers) and written as strings, and ``y`` indexes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from dml_core.user_data.errors import BadTable, UnsafeFile
from dml_core.user_data.splits import parse_split_values

TABLE_SUFFIXES = (".npz", ".csv", ".parquet", ".pq")
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"


class TableArrays(NamedTuple):
    """A feature table: ``x`` (N, d) float32, ``y`` (N,) int64, test mask or None, names."""

    x: np.ndarray
    y: np.ndarray
    is_test: np.ndarray | None
    class_names: tuple[str, ...]


def _encode_labels(labels: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels ``(N,)`` of any plain dtype -> indices ``(N,)`` int64 and the sorted names."""
    if labels.ndim != 1:
        raise BadTable(
            f"The labels in {where} must be one value per row; got shape {labels.shape}."
        )
    if labels.dtype.kind == "f" and (bad := np.flatnonzero(~np.isfinite(labels))).size:
        raise BadTable(f"Row {int(bad[0])} of {where} has no label (NaN); give every row a label.")
    if labels.dtype.kind not in "biufUS":
        raise BadTable(
            f"The labels in {where} must be numbers or strings; got dtype {labels.dtype}."
        )
    values, y = np.unique(labels, return_inverse=True)
    names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist())
    return y.astype(np.int64).reshape(-1), names


def _check_finite(x: np.ndarray, columns: list[str], where: str, line_offset: int | None) -> None:
    """Raise naming the first row and column whose float32 value is NaN or infinite."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        line = f" (line {row + line_offset} of the file)" if line_offset is not None else ""
        raise BadTable(
            f"Column {columns[col]} of {where} is NaN or infinite (or beyond float32) at row "
            f"{row}{line}; fill or drop the missing values before loading."
        )


def load_npz(path: Path) -> TableArrays:
    """Read ``x`` (n, d) numbers, ``y`` (n,) labels and an optional ``split`` from an ``.npz``.

    Raises:
        UnsafeFile: an array of Python objects (refused: loading it would run pickle).
        BadTable: missing keys, wrong shapes, non-numeric or non-finite features.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise BadTable(
            f"{path} is not a readable .npz file ({err}); save it with np.savez."
        ) from None
    with archive:
        arrays = {}
        for key in ("x", "y", SPLIT_COLUMN):
            if key not in archive.files:
                if key == SPLIT_COLUMN:
                    continue
                raise BadTable(
                    f"{path} has no array '{key}' (it holds {', '.join(archive.files) or 'none'}); "
                    f"save it as np.savez(path, x=features, y=labels)."
                )
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                if "allow_pickle" not in str(err):
                    raise BadTable(f"Array '{key}' of {path} cannot be read ({err}).") from None
                raise UnsafeFile(
                    f"Array '{key}' of {path} holds Python objects, which are refused because "
                    f"loading them would run pickle; save plain arrays instead, e.g. "
                    f"{key}=np.asarray({key}, dtype=str) for labels or float32 for features."
                ) from None
    x = arrays["x"]
    if x.ndim != 2 or x.dtype.kind not in "biuf" or x.shape[1] == 0:
        raise BadTable(
            f"Array 'x' of {path} must be numbers of shape (n, d); got {x.dtype} {x.shape}."
        )
    if len(arrays["y"]) != len(x):
        raise BadTable(f"{path} has {len(x)} rows in 'x' but {len(arrays['y'])} labels in 'y'.")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, reported just below
        x = x.astype(np.float32)
    _check_finite(x, [f"{j} of 'x'" for j in range(x.shape[1])], str(path), None)
    y, names = _encode_labels(arrays["y"], f"array 'y' of {path}")
    is_test = None
    if SPLIT_COLUMN in arrays:
        is_test = parse_split_values(list(arrays[SPLIT_COLUMN]), f"array 'split' of {path}")
        if len(is_test) != len(x):
            raise BadTable(f"{path} has {len(x)} rows in 'x' but {len(is_test)} in 'split'.")
    return TableArrays(x, y, is_test, names)


def load_frame(path: Path) -> TableArrays:
    """Read a ``.csv`` or ``.parquet`` table: numeric features, ``label``, optional ``split``.

    Raises:
        BadTable: no label column, a non-numeric feature column, a NaN/inf value (column and
            row named), a row without a label, or no feature column.
    """
    import pandas as pd

    csv = path.suffix.lower() == ".csv"
    try:
        frame = pd.read_csv(path) if csv else pd.read_parquet(path)
    except Exception as err:  # parsers raise many types; all mean unreadable
        kind = "CSV" if csv else "Parquet"
        raise BadTable(f"{path} cannot be read as {kind} ({type(err).__name__}: {err}).") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if LABEL_COLUMN not in columns:
        shown = ", ".join(repr(c) for c in columns[:8]) + (", ..." if len(columns) > 8 else "")
        raise BadTable(
            f"{path} has no '{LABEL_COLUMN}' column (its columns are {shown}); name the column "
            f"holding the classes '{LABEL_COLUMN}'."
        )
    features = [c for c in columns if c not in (LABEL_COLUMN, SPLIT_COLUMN)]
    if not features:
        raise BadTable(f"{path} has no feature columns besides '{LABEL_COLUMN}'; add numeric ones.")
    line_offset = 2 if csv else None  # header line + 1-based lines
    for name in features:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column):
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & column.notna().to_numpy())
        row = int(bad[0]) if bad.size else 0
        line = f" (line {row + line_offset} of the file)" if line_offset else ""
        raise BadTable(
            f"Column '{name}' of {path} is not numeric (row {row}{line} holds "
            f"{column.iloc[row]!r}); feature columns must hold numbers only, so drop or encode it."
        )
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, reported just below
        x = frame[features].to_numpy(dtype=np.float64).astype(np.float32)  # (N, d)
    _check_finite(x, [repr(c) for c in features], str(path), line_offset)
    labels = frame[LABEL_COLUMN]
    if (missing := np.flatnonzero(labels.isna().to_numpy())).size:
        row = int(missing[0])
        line = f" (line {row + line_offset} of the file)" if line_offset else ""
        raise BadTable(
            f"Row {row}{line} of {path} has no label; give every row a '{LABEL_COLUMN}'."
        )
    values = labels.to_numpy()
    if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        values = labels.astype(str).to_numpy(dtype=str)
    y, names = _encode_labels(values, f"column '{LABEL_COLUMN}' of {path}")
    is_test = None
    if SPLIT_COLUMN in columns:
        is_test = parse_split_values(frame[SPLIT_COLUMN].tolist(), f"column 'split' of {path}")
    return TableArrays(x, y, is_test, names)


def load_table(path: Path) -> TableArrays:
    """Read a feature table by its suffix (:data:`TABLE_SUFFIXES`)."""
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    return load_frame(path)
