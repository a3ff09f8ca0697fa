"""Content-addressed media files beside the database: media_dir/ab/abcdef....ext, written atomically.

The database stores only paths relative to the media dir; every path read back is resolved and
checked to lie inside it, so a tampered row cannot point the app at another file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

from .errors import StoreError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(value: str) -> str:
    """The value as a lower-case sha256 hex digest, or StoreError."""
    text = str(value).strip().lower()
    if not _SHA256.match(text):
        raise StoreError(f"{value!r} is not a clip id (expected 64 hexadecimal characters of a sha256).")
    return text


def check_ext(ext: str) -> str:
    text = str(ext).strip().lower()
    if text and not text.startswith("."):
        text = "." + text
    if not _EXT.match(text):
        raise StoreError(f"{ext!r} is not a usable file extension (expected something like '.wav').")
    return text


def relative_path(sha256: str, ext: str) -> str:
    """Where a clip's media lives, relative to the media dir (POSIX separators, as stored)."""
    return f"{sha256[:2]}/{sha256}{ext}"


def resolve(media_dir: Path, relative: str) -> Path:
    """Absolute path of a stored relative path; StoreError if it would leave the media dir."""
    root = Path(media_dir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise StoreError("A stored media path points outside the media folder; it was not used.")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write then fsync a temporary file beside `path` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove(media_dir: Path, relative: str | None) -> int:
    """Delete a stored media file (and its empty fan-out folder); return how many files went."""
    if not relative:
        return 0
    path = resolve(media_dir, relative)
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only succeeds when empty
    return 1
