"""The one retraining lock of a store: a file beside the database, whoever starts the run.

train.retrain (unless --no-lock), a train.schedule tick and the app's admin button all lock
<db folder>/retrain/retrain.lock, so two runs on one store never overlap even when the database lives outside
the app's data dir. It is an flock(2) lock (what filelock uses on Unix): the kernel drops it when the last
descriptor holding it closes, so a crashed run never leaves a stale lock. The app hands its descriptor to the
run it starts (`hold` then `subprocess.Popen(pass_fds=...)`), which keeps the lock for exactly the run's life.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

RETRAIN_DIR = "retrain"  # beside the database: the lock, the scheduler's runs and logs
LOCK_FILE = "retrain.lock"


def retrain_dir(db: str | Path) -> Path:
    return Path(db).resolve().parent / RETRAIN_DIR


def lock_path(db: str | Path) -> Path:
    """The lock file of this store (its folder is created)."""
    folder = retrain_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / LOCK_FILE


def hold(db: str | Path) -> int | None:
    """Take the store's lock without waiting: an open descriptor that holds it, or None if a run holds it."""
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_held(db: str | Path) -> bool:
    """Whether some run (of any starter) holds the store's lock now."""
    fd = hold(db)
    if fd is None:
        return True
    os.close(fd)  # closing our only descriptor releases it
    return False
