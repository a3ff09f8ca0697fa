"""Secrets of the label store: annotator keys and the server secret that keys text-clip ids.

An annotator key is issued once, on a name's first use, and only its SHA-256 is stored (the key is 144
random bits, so a plain hash is enough). The server secret is 256 random bits in a file beside the
database (mode 0600), created atomically on first use, so every process of one store agrees on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

KEY_BYTES = 18  # an annotator key: 144 random bits, 24 url-safe characters
SECRET_BYTES = 32
MSG_NAME_TAKEN = (
    "That name already belongs to an annotator with a key. Paste your annotator key (this browser keeps it "
    "after your first Start), or choose another name."
)


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(str(key).strip().encode("utf-8")).hexdigest()


def secret_path(db_path: Path) -> Path:
    """Where a store's server secret lives: beside its database file."""
    return Path(db_path).with_name(Path(db_path).name + ".secret")


def server_secret(db_path: Path) -> bytes:
    """The store's secret, created on first use; two processes starting at once end up with the same one."""
    path = secret_path(db_path)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(SECRET_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())
