"""Which model the app serves: a pinned EMO_MODEL, else the last promoted version, else the shipped default.

Retraining promotes by writing <data_dir>/models/current.json atomically; the app checks it on each request
(one stat call), so a newly promoted version is picked up without a restart.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from backend.settings import DEFAULT_MODEL_DIR, Settings

POINTER = "current.json"


def registry_dir(settings: Settings) -> Path:
    """Where promoted model folders live: <data_dir>/models/<version>/."""
    return Path(settings.data_dir) / "models"


def promote(folder: Path, version: str, settings: Settings) -> Path:
    """Point the registry at a model folder (atomic rename, so readers never see half a file)."""
    root = registry_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".current-")
    with os.fdopen(fd, "w") as f:
        json.dump({"version": version, "path": str(Path(folder).resolve())}, f)
    os.replace(tmp, root / POINTER)
    return root / POINTER


def current_model(settings: Settings) -> str:
    """The model path or Hub id to serve now."""
    if str(settings.model) != str(DEFAULT_MODEL_DIR):  # pinned by EMO_MODEL (path, Hub id or id@tag)
        return str(settings.model)
    pointer = registry_dir(settings) / POINTER
    if pointer.exists():
        try:
            path = json.loads(pointer.read_text())["path"]
        except (OSError, ValueError, KeyError):
            return str(DEFAULT_MODEL_DIR)
        if Path(path).is_dir():
            return path
    return str(DEFAULT_MODEL_DIR)
