"""Faults: the app killed mid-vote, a full disk during a media write. Each recovers on restart without
losing acknowledged data, or refuses with a clear message.

Covered elsewhere (not repeated here): a store writer killed with SIGKILL (test_store_load.py),
retraining killed mid-epoch and resumed (test_retrain_resume.py), a corrupted cache of converted
backbones rebuilt (test_whisper_convert.py::test_cache_converts_once_and_rebuilds_broken_folders).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client

from backend.labels import LABELS
from backend.media import encode_wav
from labeling import service
from labeling.errors import StoreError
from labeling.store import Store
from tests.app_support import free_port
from tests.nasty_files import is_clear, tone

REPO = Path(__file__).resolve().parents[1]
SERVER = """
import sys, app
demo = app.build_demo()
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True, **app.launch_options(app.get_settings()))
"""


def start_app(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "EMO_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "EMO_RATE_LIMIT_PER_MINUTE": "0"}
    env.pop("EMO_DB_PATH", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the app did not start")


def seed(data_dir: Path, n: int) -> None:
    with Store.open(data_dir / "studio.db", data_dir / "media", k=3, gold_rate=0.0) as store:
        for i in range(n):
            data = encode_wav(tone(0.5, freq=200.0 + 7 * i)[:, 0])
            store.add_clip(data, ext=".wav", modalities=["speech"], duration=0.5, consent=True)


@pytest.mark.slow
def test_app_killed_mid_vote_keeps_every_acknowledged_vote(tmp_path):
    data_dir = tmp_path / "data"
    seed(data_dir, 40)
    port = free_port()
    proc = start_app(data_dir, port)
    acked: list[tuple[str, str]] = []  # (annotator, clip) whose vote the server confirmed
    stop = threading.Event()

    def voter(index: int) -> None:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        name = f"voter-{index}"
        while not stop.is_set():
            try:
                *_, clip_id, _note = client.predict(name=name, api_name="/next_item")
                if not clip_id:
                    return
                client.predict(labels=[LABELS[index % 7]], unsure=False, note="", api_name="/vote")
                acked.append((f"name:{name}", clip_id))
            except Exception:  # the server died under us: whatever was not confirmed may be lost
                return

    threads = [threading.Thread(target=voter, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: other votes are in flight
    proc.wait(10)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 12

    with sqlite3.connect(data_dir / "studio.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = set(conn.execute("SELECT annotator_id, clip_id FROM votes").fetchall())
    assert set(acked) <= stored, f"lost acknowledged votes: {set(acked) - stored}"

    proc = start_app(data_dir, port)  # restart: it serves and records again over the same store
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        *_, clip_id, _note = client.predict(name="after-restart", api_name="/next_item")
        assert len(clip_id) == 64
        client.predict(labels=["sad"], unsure=False, note="", api_name="/vote")
        with sqlite3.connect(data_dir / "studio.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM votes WHERE annotator_id = 'name:after-restart'").fetchone()[0]
    finally:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str = "256k"):
    """A size-limited tmpfs at `folder` (root can mount); yields True, or False when mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def contribution(seconds: float, freq: float) -> service.Contribution:
    data = encode_wav(tone(seconds, freq=freq)[:, 0])
    probs = {label: 1.0 / len(LABELS) for label in LABELS}
    return service.Contribution(
        sha256=service.sha256_bytes(data),
        ext=".wav",
        modalities=["speech"],
        duration=seconds,
        probs=probs,
        model_version="faults",
        media=data,
    )


def test_full_disk_during_a_media_write_is_refused_clearly_and_keeps_earlier_data(tmp_path, monkeypatch):
    """A real full tmpfs where mount is allowed (root); else ENOSPC simulated in the media write."""
    media_dir = tmp_path / "media"
    with tiny_disk(media_dir) as real:
        if not real:  # simulate: the atomic write's data write fails with ENOSPC past 256 kB

            def full(path: Path, data: bytes) -> None:
                if len(data) > 256 * 1024:
                    raise OSError(errno.ENOSPC, "No space left on device")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

            monkeypatch.setattr("labeling.media.write_atomic", full)
        with Store.open(tmp_path / "studio.db", media_dir, k=3, gold_rate=0.0) as store:
            small = service.record_correction(store, contribution(1.0, 300.0), "name:a", ["sad"], consent=True)
            with pytest.raises(StoreError) as refused:  # 20 s of 16 kHz wav = 640 kB > 256 kB
                service.record_correction(store, contribution(20.0, 400.0), "name:a", ["happy"], consent=True)
            assert is_clear(str(refused.value)) and "storage space" in str(refused.value)
            assert not [p for p in media_dir.rglob("*") if p.name.startswith(".tmp-")], "a partial file was left"
            assert store.get_clip(small.clip_id)["media"] and store.media_path(small.clip_id).is_file()
            assert [v["labels"] for v in store.votes(small.clip_id)] == [["sad"]]
            assert store.stats()["clips"] == 1  # the refused clip left no row
            kept = service.record_correction(store, contribution(20.0, 400.0), "name:a", ["happy"], consent=False)
            assert kept.kept_media is False  # without media the answer still goes in
        with Store.open(tmp_path / "studio.db", media_dir) as reopened:  # "restart"
            assert len(reopened.votes()) == 2
