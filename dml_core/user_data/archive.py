"""Uploads: a ``.zip`` of an image folder (or of one table), or a table file, stored safely.

Every entry of an archive is checked before anything is written (zip-slip, CVE-2018-1002200
and kin): names are read with a backslash as a separator too, and an absolute name, a drive letter,
a ``..`` component, a symbolic link or an encrypted entry refuses the whole archive; so do an
archive file, an entry or a total uncompressed size over the size cap (zip bombs). Entries are
then written one by one under a fresh temporary folder, each copy stopped at its declared
size, and the folder is moved into place (``os.replace``) under
``<cache>/extracted/<sha256 of the archive>``, so an archive is extracted once. Uploaded files
are kept under ``<cache>/uploads/<sha256>/<name>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from dml_core.user_data.errors import FileTooLarge, UnsafeFile, UserDataError, megabytes
from dml_core.user_data.images import cache_root
from dml_core.user_data.tables import TABLE_SUFFIXES

COPY_BLOCK = 2**20
DEFAULT_MAX_BYTES = 200 * 2**20


def check_file_size(path: Path, max_bytes: int) -> None:
    """Raise :class:`FileTooLarge` if ``path`` is larger than ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise FileTooLarge(
            f"{path} is {megabytes(size)}, over the size cap of {megabytes(max_bytes)}; use a "
            f"smaller file or raise the cap (max_bytes)."
        )


def member_path(name: str, archive: Path) -> PurePosixPath:
    """The relative path an archive entry may be written to.

    Raises:
        UnsafeFile: the name is absolute, has a drive letter or a ``..`` component.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    parts = path.parts
    if (
        path.is_absolute()
        or ".." in parts
        or "\0" in name
        or (parts and re.match(r"^[A-Za-z]:", parts[0]))
    ):
        raise UnsafeFile(
            f"Entry {name!r} of {archive} would be written outside the extraction folder "
            f"(zip-slip), so the archive is refused; zip the folder with relative paths only."
        )
    return path


def check_archive(zf: zipfile.ZipFile, archive: Path, max_bytes: int) -> list[zipfile.ZipInfo]:
    """Check every entry before extracting; returns the file entries (directories left out).

    Raises:
        UnsafeFile: an escaping name or a symbolic link.
        FileTooLarge: an entry, or all of them together, over ``max_bytes`` uncompressed.
        UserDataError: an encrypted entry.
    """
    files, total = [], 0
    for info in zf.infolist():
        member_path(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeFile(
                f"Entry {info.filename!r} of {archive} is a symbolic link, which is refused; "
                f"zip the files themselves."
            )
        if info.flag_bits & 0x1:
            raise UserDataError(
                f"Entry {info.filename!r} of {archive} is encrypted; zip it without a password."
            )
        if info.is_dir():
            continue
        total += info.file_size
        if info.file_size > max_bytes or total > max_bytes:
            what = f"entry {info.filename!r}" if info.file_size > max_bytes else "its content"
            raise FileTooLarge(
                f"{archive} is refused: {what} would unpack to more than the size cap of "
                f"{megabytes(max_bytes)}; upload less or raise the cap (max_bytes)."
            )
        files.append(info)
    return files


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Write one entry, never more than its declared size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    left = info.file_size
    with zf.open(info) as src, target.open("xb") as dst:
        while block := src.read(min(COPY_BLOCK, left + 1)):
            left -= len(block)
            if left < 0:
                raise UnsafeFile(f"Entry {info.filename!r} is larger than it declares; refused.")
            dst.write(block)


def _shown(name: str) -> bool:
    """Whether a top-level entry of an archive is data (not hidden, not macOS's metadata)."""
    return not name.startswith(".") and name != "__MACOSX"


def data_root(folder: Path) -> Path:
    """Where the data of an extracted archive starts: its only folder, its only table, or itself."""
    entries = [p for p in folder.iterdir() if _shown(p.name)]
    if len(entries) == 1 and (entries[0].is_dir() or entries[0].suffix.lower() in TABLE_SUFFIXES):
        return entries[0]
    return folder


def _safe_name(text: str, default: str) -> str:
    """``text`` as a file name in the cache: safe characters only, never hidden (or ``default``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or default


def _wrapper(parts: list[tuple[str, ...]], archive: Path) -> tuple[str, ...]:
    """A folder named after the archive for its entries, unless one folder or table holds them.

    The data's folder name is the dataset's name in the app: class folders at an archive's
    top would otherwise be read from the cache's content-hash folder, and named by it.
    """
    tops = {p[0] for p in parts if _shown(p[0])}
    inside = {p[0] for p in parts if _shown(p[0]) and len(p) > 1}
    table = len(tops) == 1 and Path(next(iter(tops))).suffix.lower() in TABLE_SUFFIXES
    if len(tops) == 1 and (tops == inside or table):
        return ()
    return (_safe_name(archive.stem, "data"),)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def extract_zip(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Check and extract a ``.zip`` into the cache (once per content); returns its data root.

    Raises:
        FileTooLarge, UnsafeFile: see :func:`check_archive` (nothing is written then).
        UserDataError: not a zip file.
    """
    check_file_size(path, max_bytes)
    final = cache_root() / "extracted" / _sha256(path)[:32]
    if final.is_dir():
        return data_root(final)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserDataError(f"{path} is not a readable zip archive ({err}).") from None
    with zf:
        members = check_archive(zf, path, max_bytes)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".extract-"))
        parts = [member_path(info.filename, path).parts for info in members]
        base = tmp.joinpath(*_wrapper(parts, path))
        try:
            for info, member in zip(members, parts, strict=True):
                _copy_member(zf, info, base.joinpath(*member))
            try:
                os.replace(tmp, final)
            except OSError:  # extracted meanwhile by another process: keep that copy
                if not final.is_dir():
                    raise
        except zipfile.BadZipFile as err:
            raise UserDataError(f"{path} is a damaged zip archive ({err}).") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return data_root(final)


def store_upload(filename: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Save an uploaded file in the cache; a ``.zip`` is extracted. Returns what to load.

    Args:
        filename: the name the user's file had (only its last part and safe characters are kept).
        data: its bytes.
        max_bytes: the size cap.
    """
    if len(data) > max_bytes:
        raise FileTooLarge(
            f"The upload {filename!r} is {megabytes(len(data))}, over the size cap of "
            f"{megabytes(max_bytes)}; upload a smaller file or raise the cap."
        )
    name = _safe_name(PurePosixPath(filename.replace("\\", "/")).name, "upload")
    folder = cache_root() / "uploads" / hashlib.sha256(data).hexdigest()[:32]
    target = folder / name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as f:
            f.write(data)
        os.replace(f.name, target)
    return extract_zip(target, max_bytes=max_bytes) if name.lower().endswith(".zip") else target
