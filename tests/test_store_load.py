"""The store under load and faults: many concurrent writers, and a writer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backend.labels import LABELS
from labeling import Store, StoreError
from labeling.db import Connections

REPO = Path(__file__).resolve().parents[1]
THREADS, VOTES = 50, 200


def test_50_writer_threads_every_vote_exactly_once(tmp_path):
    # synchronous=NORMAL only skips the fsync per commit (to keep the suite fast on 2 cores); the
    # locking under test is the same as with the default FULL.
    store = Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0, synchronous="NORMAL")
    clips = [store.add_clip(f"clip{i}".encode(), modalities=["speech"]) for i in range(VOTES)]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        barrier.wait()
        for i, clip in enumerate(clips):
            try:
                store.vote(clip, f"ann{t}", [LABELS[(t + i) % len(LABELS)]])
            except BaseException as err:  # collected and asserted below
                errors.append(err)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], f"{len(errors)} writes failed, first: {errors[:1]}"
    rows = list(store.db.query("SELECT clip_id, annotator_id, labels FROM votes"))
    assert len(rows) == THREADS * VOTES
    assert len({(r["clip_id"], r["annotator_id"]) for r in rows}) == THREADS * VOTES
    index = {clip: i for i, clip in enumerate(clips)}
    for r in rows:
        t, i = int(r["annotator_id"][3:]), index[r["clip_id"]]
        assert r["labels"] == f'["{LABELS[(t + i) % len(LABELS)]}"]'
    assert store.db["vote_history"].count == 0
    store.close()


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection (as another process would) holding the write lock for a while."""
    ready = threading.Event()

    def hold():
        conn = sqlite3.connect(str(path))
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.rollback()
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


def test_a_writer_waits_out_a_foreign_lock_with_retries(tmp_path):
    Store.open(tmp_path / "studio.db").close()
    conns = Connections(tmp_path / "studio.db", busy_seconds=5.0, busy_timeout_ms=20)
    holder = hold_write_lock(tmp_path / "studio.db", 0.5)
    start = time.monotonic()
    with conns.write() as db:  # SQLite gives up after 20 ms; the retry loop keeps going
        db.execute("INSERT INTO annotators (id, kind, created) VALUES ('a', 'crowd', 'now')")
    assert time.monotonic() - start >= 0.4
    holder.join()
    assert conns.db["annotators"].count == 1
    conns.close()


def test_a_lock_held_too_long_is_a_store_error_not_sqlite_busy(tmp_path):
    Store.open(tmp_path / "studio.db").close()
    conns = Connections(tmp_path / "studio.db", busy_seconds=0.2, busy_timeout_ms=20)
    holder = hold_write_lock(tmp_path / "studio.db", 0.5)
    with pytest.raises(StoreError, match="busy"), conns.write():
        pass
    holder.join()
    conns.close()


CHILD = textwrap.dedent(
    """
    import sys, threading
    from labeling import Store

    store = Store.open(sys.argv[1], k=3, gold_rate=0.0)  # default durability (synchronous=FULL)
    clips = [store.add_clip(f"clip{i}".encode(), modalities=["speech"]) for i in range(50)]
    out = threading.Lock()

    def writer(t):
        for i in range(100_000):
            clip = clips[i % len(clips)]
            label = ["happy", "sad", "angry"][i % 3]
            store.vote(clip, f"w{t}-{i // len(clips)}", [label])
            with out:
                sys.stdout.write(f"ack {clip} w{t}-{i // len(clips)} {label}\\n")
                sys.stdout.flush()

    for t in range(4):
        threading.Thread(target=writer, args=(t,)).start()
    """
)


@pytest.mark.timeout(120)
def test_sigkill_mid_stream_loses_no_acknowledged_vote(tmp_path):
    db = tmp_path / "studio.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    acked = []
    deadline = time.monotonic() + 60
    try:
        for line in child.stdout:
            if line.endswith("\n") and line.startswith("ack "):
                acked.append(line.split())
            if len(acked) >= 300 or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        for line in child.stdout:  # acks written before the kill
            if line.endswith("\n") and line.startswith("ack "):
                acked.append(line.split())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= 300
    store = Store.open(db, k=3, gold_rate=0.0)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    votes = {(r["clip_id"], r["annotator_id"]): r["labels"] for r in store.db.query("SELECT * FROM votes")}
    for _, clip, annotator, label in acked:
        assert votes.get((clip, annotator)) == f'["{label}"]'
    store.close()
