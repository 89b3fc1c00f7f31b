"""Run files written safely: atomic writes, and one writer at a time across processes.

Readers (the pages, another server) see a run's old file or its new one, never a mix
(``atomic_write_bytes``). A read-modify-write of one file (status.json) takes ``locked``: the
app's runs train in child processes (``services.process_jobs``) beside the server, and both
write a run's status.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: one process writes each run there
    fcntl = None  # type: ignore[assignment]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    """Atomically write ``value`` as indented JSON."""
    atomic_write_bytes(path, json.dumps(value, indent=2, default=float).encode())


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``.<name>.lock`` beside it).

    Advisory (``flock``): it orders the writers that take it, across processes.
    """
    if fcntl is None:
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
