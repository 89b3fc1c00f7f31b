"""Image folders: ``root/<class>/*.png|jpg|jpeg|bmp|webp`` decoded to uint8 arrays, cached.

Layouts: ``root/<class>/...`` (images may sit in subfolders of a class folder), or
``root/train/<class>/...`` with ``root/test/<class>/...`` (the folders give the split). Names
starting with ``.`` and ``__MACOSX`` (zip clutter) are ignored; class names are the folder
names, sorted.

Each image is read with Pillow, converted to grayscale (``L``) or ``RGB`` (transparency is
laid on white; 16-bit and float images are scaled to 0-255), centre-cropped to a square and
resized to ``size x size`` with Pillow's antialiasing bilinear filter (JPEGs are first
reduced by the decoder, ``Image.draft``). Large folders are decoded in a pool of forked
processes (threads where fork is unavailable): decoding a small PNG is mostly Python code in
``PngImagePlugin``, so threads do not scale.

The cache (``$DML_CACHE_DIR``, default ``~/.cache/dml_playground``, under ``user_images/``)
holds one ``.npz`` of uint8 arrays per folder version, written to a temporary file and moved
into place with ``os.replace``. Its key hashes, for every image file, the relative path, the
size, ``st_mtime_ns`` and ``st_ctime_ns``, with the size, colour mode and this format's
version. The file stats are used rather than the file contents because hashing 60k files
costs a read of every file, most of what the cache saves; ``st_ctime_ns`` is included
because tools that copy a file and restore its mtime (``cp -p``, ``rsync -t``, ``unzip``)
cannot set it back, so a replaced file always changes the key.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from dml_core.user_data.errors import ClassTooSmall, TooFewClasses, UserDataError, megabytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGE_SIZES = (28, 32, 64)
COLORS = ("gray", "rgb")
CACHE_VERSION = 1
MAX_PIXELS = 2**26  # refuse larger images before decoding them (decompression bombs)
PARALLEL_MIN = 2000  # fewer images decode faster in this process than in a pool
CHUNK = 1024  # images per pool task


class ImageFile(NamedTuple):
    """One image found in a folder: where it is, its class, its part, its stat signature."""

    relpath: str  # "/"-separated, relative to the root
    label: int
    is_test: bool
    size: int
    mtime_ns: int
    ctime_ns: int


class ImageArrays(NamedTuple):
    """A decoded image folder (cached or not).

    Attributes:
        x: ``(N, C, S, S)`` uint8, the readable images.
        y: ``(N,)`` int64 labels, indices into ``class_names``.
        is_test: ``(N,)`` bool from ``train/``/``test/`` folders, or None without them.
        class_names: folder names, sorted.
        files: relative paths of the N images.
        bad: ``(relative path, reason)`` of each file that could not be used.
        cache_note: how the cache was used, e.g. ``"from the cache"``.
    """

    x: np.ndarray
    y: np.ndarray
    is_test: np.ndarray | None
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    bad: tuple[tuple[str, str], ...]
    cache_note: str


def cache_root() -> Path:
    """``$DML_CACHE_DIR`` or ``~/.cache/dml_playground``."""
    return Path(os.environ.get("DML_CACHE_DIR") or Path.home() / ".cache" / "dml_playground")


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def _loose_image(folder: Path) -> str | None:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and _visible(entry.name) and _is_image(entry.name):
            return entry.name
    return None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _class_files(folder: str, rel: str) -> list[tuple[str, os.stat_result]]:
    """``(relative path, stat)`` of every image under ``folder`` (``rel`` from the root), sorted.

    Plain strings and ``os.scandir``: with pathlib, scanning 60k files took 3x longer.
    """
    found = []
    for entry in os.scandir(folder):
        if not _visible(entry.name):
            continue
        if entry.is_dir():
            found += _class_files(entry.path, f"{rel}/{entry.name}")
        elif _is_image(entry.name) and entry.is_file():
            found.append((f"{rel}/{entry.name}", entry.stat()))
    return sorted(found, key=lambda item: item[0])


def scan_folder(root: Path) -> tuple[list[ImageFile], tuple[str, ...], bool]:
    """Find the images of a folder dataset.

    Returns:
        the images (sorted by relative path), the class names (sorted) and whether
        ``train/`` and ``test/`` folders give the split.

    Raises:
        TooFewClasses: no class folders.
        ClassTooSmall: a class folder without images.
        UserDataError: an image outside any class folder, or folders beside ``train/``/``test/``.
    """
    tops = _subfolders(root)
    has_split = "train" in tops and "test" in tops
    parts = ["train", "test"] if has_split else [""]
    if has_split and (others := [t for t in tops if t not in ("train", "test")]):
        raise UserDataError(
            f"{root} has train/ and test/ folders and also {others[0]}/; put every class "
            f"folder inside train/ and test/ (or drop train/ and test/ for an 80/20 split)."
        )
    classes = sorted({c for part in parts for c in _subfolders(root / part)})
    if not classes:
        raise TooFewClasses(
            f"{root} has no class folders; put each class's images in {root}/<class name>/ "
            f"(at least 2 classes, formats {', '.join(IMAGE_SUFFIXES)})."
        )
    for part in parts:
        if (loose := _loose_image(root / part)) is not None:
            raise UserDataError(
                f"{root / part / loose} lies outside any class folder; move it into "
                f"{root / part}/<class name>/ (class names are the folder names)."
            )
    files: list[ImageFile] = []
    counts = dict.fromkeys(classes, 0)
    for part in parts:
        for label, name in enumerate(classes):
            if not (root / part / name).is_dir():
                continue
            prefix = f"{part}/{name}" if part else name
            for rel, st in _class_files(str(root / prefix), prefix):
                files.append(
                    ImageFile(
                        rel, label, part == "test", st.st_size, st.st_mtime_ns, st.st_ctime_ns
                    )
                )
                counts[name] += 1
    if empty := [name for name, n in counts.items() if n == 0]:
        raise ClassTooSmall(
            f"Class folder {empty[0]!r} in {root} holds no images; add images "
            f"({', '.join(IMAGE_SUFFIXES)}) or remove the folder."
        )
    return files, tuple(classes), has_split


def cache_key(files: list[ImageFile], size: int, color: str) -> str:
    """SHA-256 of the format version, size, colour and each file's path, size and times."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {size} {color}\n".encode())
    for f in files:
        digest.update(f"{f.relpath}\0{f.label}\0{f.is_test:d}\0{f.size}\0".encode())
        digest.update(f"{f.mtime_ns}\0{f.ctime_ns}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- decoding


def _to_8bit(im: Image.Image, color: str) -> Image.Image:
    """``im`` in mode ``L`` or ``RGB``; transparency laid on white, wide modes scaled."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float32)  # (H, W)
        if arr.size and arr.max() > 255:
            arr = arr / 257
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return im.convert("L" if color == "gray" else "RGB")


def decode_image(path: str, size: int, color: str) -> np.ndarray:
    """One image file as ``(C, size, size)`` uint8 (C = 1 for gray, 3 for rgb).

    The largest centred square is resized to ``size x size`` (no distortion).

    Raises:
        Exception: whatever Pillow raises on a damaged file; ``ValueError`` for images over
            :data:`MAX_PIXELS`.
    """
    with Image.open(path) as im:
        if im.width * im.height > MAX_PIXELS:
            raise ValueError(f"{im.width} x {im.height} pixels is more than {MAX_PIXELS}")
        im.draft("L" if color == "gray" else "RGB", (size, size))  # JPEG: decode at 1/2..1/8
        im = _to_8bit(im, color)
        w, h = im.size
        side = min(w, h)
        if w != h:  # crop first: resizing with a box would blend in pixels beyond it
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side))
        if side != size:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)  # (S, S) or (S, S, 3)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, S, S)


def _decode_chunk(paths: list[str], size: int, color: str) -> tuple[np.ndarray, list[str]]:
    """Decode ``paths``: ``(n, C, S, S)`` uint8 (zeros where failed) and one reason per file."""
    channels = 1 if color == "gray" else 3
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    reasons = [""] * len(paths)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size, color)
        except Exception as err:  # any failure means the file is unreadable
            reasons[i] = f"{type(err).__name__}: {err}".rstrip(": ")
    return out, reasons


def default_workers() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _pool(workers: int) -> Executor:
    if sys.platform == "linux":  # fork: the workers need no import of torch or dml_core
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def decode_images(
    paths: list[str], size: int, color: str, workers: int = 1
) -> tuple[np.ndarray, list[str]]:
    """Decode many images, in ``workers`` processes when more than one.

    Returns:
        ``(N, C, S, S)`` uint8 and, per file, ``""`` or why it failed.
    """
    if workers <= 1 or len(paths) <= CHUNK:
        return _decode_chunk(paths, size, color)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with _pool(workers) as pool:
        parts = list(pool.map(_decode_chunk, chunks, [size] * len(chunks), [color] * len(chunks)))
    return np.concatenate([p[0] for p in parts]), [r for p in parts for r in p[1]]


# ---------------------------------------------------------------- cache


def _read_cache(path: Path) -> ImageArrays | None:
    """The cached arrays, or None if absent or unreadable (then they are decoded again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            has_split = bool(z["has_split"])
            return ImageArrays(
                z["x"],
                z["y"].astype(np.int64),
                z["is_test"] if has_split else None,
                tuple(str(c) for c in z["class_names"]),
                tuple(str(f) for f in z["files"]),
                tuple(zip(map(str, z["bad_files"]), map(str, z["bad_reasons"]), strict=True)),
                "from the cache",
            )
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_cache(path: Path, arrays: ImageArrays) -> str:
    """Write atomically (temporary file + ``os.replace``); returns a note for the source text."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            np.savez(
                f,
                x=arrays.x,
                y=arrays.y,
                has_split=np.array(arrays.is_test is not None),
                is_test=arrays.is_test if arrays.is_test is not None else np.zeros(0, bool),
                class_names=np.array(arrays.class_names, dtype=str),
                files=np.array(arrays.files, dtype=str),
                bad_files=np.array([b[0] for b in arrays.bad], dtype=str),
                bad_reasons=np.array([b[1] for b in arrays.bad], dtype=str),
            )
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return f"decoded; not cached ({err.strerror or err})"
    return "decoded and cached"


def load_image_folder(
    root: Path,
    *,
    image_size: int = 28,
    color: str = "gray",
    max_bytes: int = 200 * 2**20,
    workers: int | None = None,
) -> ImageArrays:
    """Decode an image folder, or read it from the cache if no file changed.

    Args:
        root: the folder (layouts in the module docstring).
        image_size: side of the square images, one of :data:`IMAGE_SIZES`.
        color: ``gray`` (1 channel) or ``rgb`` (3 channels).
        max_bytes: files larger than this are bad files (not read).
        workers: decoding processes; default: the usable cores, for folders of at least
            :data:`PARALLEL_MIN` images.

    Raises:
        DatasetError: a bad parameter, or a layout fault (see :func:`scan_folder`).
    """
    if image_size not in IMAGE_SIZES:
        raise UserDataError(
            f"The 'image_size' parameter must be one of {IMAGE_SIZES}. Got {image_size!r}."
        )
    if color not in COLORS:
        raise UserDataError(f"The 'color' parameter must be one of {COLORS}. Got {color!r}.")
    files, class_names, has_split = scan_folder(root)
    path = cache_root() / "user_images" / f"{cache_key(files, image_size, color)}.npz"
    if (cached := _read_cache(path)) is not None:
        return cached
    small = [f for f in files if f.size <= max_bytes]
    if workers is None:
        workers = default_workers() if len(small) >= PARALLEL_MIN else 1
    x, reasons = decode_images([str(root / f.relpath) for f in small], image_size, color, workers)
    ok = np.array([not r for r in reasons], dtype=bool)
    bad = [
        (f.relpath, f"{megabytes(f.size)}, over the size cap") for f in files if f.size > max_bytes
    ]
    bad += [(f.relpath, r) for f, r in zip(small, reasons, strict=True) if r]
    arrays = ImageArrays(
        np.ascontiguousarray(x[ok]),
        np.array([f.label for f in small], dtype=np.int64)[ok],
        np.array([f.is_test for f in small], dtype=bool)[ok] if has_split else None,
        class_names,
        tuple(f.relpath for f, good in zip(small, ok, strict=True) if good),
        tuple(sorted(bad)),
        "",
    )
    return arrays._replace(cache_note=_write_cache(path, arrays))
