"""Shared set-up for the app tests: one temporary data dir and one model folder per test process.

The app reads its settings from EMO_* variables once (app.get_settings is cached), so the fixture
sets them, clears the app's caches, and restores everything afterwards. Every app test module sees
the same values, so the process loads the model once (backend.predictor caches per settings).

Model: models/default when it exists; otherwise a placeholder folder built here from the real
backbones in the wheels with untrained heads (the lead switches the tests to the trained model).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.settings import DEFAULT_MODEL_DIR

ADMIN_TOKEN = "test-admin-token-123"
_paths: dict[str, Path] = {}


def _root() -> Path:
    if "root" not in _paths:
        root = Path(tempfile.mkdtemp(prefix="emo-app-tests-"))
        atexit.register(shutil.rmtree, root, True)
        _paths["root"] = root
    return _paths["root"]


def model_dir() -> Path:
    """models/default if present, else an untrained placeholder over the real backbones (built once)."""
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return DEFAULT_MODEL_DIR
    if "model" not in _paths:
        from backend.model import build_model
        from backend.model_config import EmotionConfig

        folder = _root() / "model"
        build_model(EmotionConfig(version="test-placeholder"), adapt_dims=True).save_pretrained(folder)
        _paths["model"] = folder
    return _paths["model"]


@pytest.fixture(scope="module")
def studio() -> Iterator[object]:
    """The app module, configured for a temporary store and the test model; caches reset on both ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("EMO_DATA_DIR", str(_root() / "data"))
        mp.setenv("EMO_MODEL", str(model_dir()))
        mp.setenv("EMO_ADMIN_TOKEN", ADMIN_TOKEN)
        mp.delenv("EMO_DB_PATH", raising=False)
        mp.delenv("SPACE_ID", raising=False)
        app = importlib.import_module("app")
        app.get_settings.cache_clear()
        app.get_store.cache_clear()
        app.get_ip_limiter.cache_clear()  # every test client comes from 127.0.0.1: one budget per module
        yield app
        app.get_store().close()
        app.get_settings.cache_clear()
        app.get_store.cache_clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(studio, load_model: bool = True) -> Iterator[str]:
    """The app's Blocks served on a free local port, as `python app.py` serves it; yields its URL."""
    if load_model:
        studio.get_predictor()  # the model loads before the first request, as under `python app.py`
    demo = studio.build_demo()
    options = studio.launch_options(studio.get_settings())
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **options
    )
    try:
        yield url
    finally:
        demo.close()


def seed_tone(studio, freq: float) -> str:
    """A consented 0.6 s tone clip in the app's store (something to serve and vote on); its clip id."""
    from backend.media import encode_wav
    from tests.nasty_files import tone

    data = encode_wav(tone(0.6, freq=freq)[:, 0])
    return studio.get_store().add_clip(data, ext=".wav", modalities=["speech"], duration=0.6, consent=True)
