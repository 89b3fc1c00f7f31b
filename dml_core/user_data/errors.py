"""What can be wrong with a user's data: one ``DatasetError`` subclass per kind of fault.

Every message is one sentence that names the file, column, class or row at fault and says
what would work. The CLI prints it and exits with status 2 (it catches ``DatasetError``); the
Train page shows it and disables Train.
"""

from __future__ import annotations

from dml_core.data import DatasetCorrupt, DatasetError


class UserDataError(DatasetError):
    """A user's dataset (image folder, feature table or archive) cannot be used."""


class TooFewClasses(UserDataError):  # noqa: N818 (reads as the fault it names)
    """Fewer than 2 classes to train on (or fewer than 3 for the open-set split)."""


class ClassTooSmall(UserDataError):  # noqa: N818
    """A class has fewer samples than a batch takes from each class (K)."""


class TooManyClassesPerBatch(UserDataError):  # noqa: N818
    """An explicit P (classes per batch) is larger than the number of training classes."""


class BadImage(UserDataError, DatasetCorrupt):  # noqa: N818
    """An image file cannot be read or decoded."""


class BadTable(UserDataError):  # noqa: N818
    """A feature table is malformed: no label column, non-numeric or non-finite features, ..."""


class UnsafeFile(UserDataError):  # noqa: N818
    """A file is refused for safety: a zip entry escaping its folder, a pickled object array."""


class FileTooLarge(UnsafeFile):
    """A file (or an archive's content) is larger than the configured size cap."""


def megabytes(n_bytes: int) -> str:
    """``n_bytes`` as megabytes for messages, e.g. ``'200 MB'`` or ``'0.01 MB'``."""
    return f"{n_bytes / 2**20:.3g} MB"
