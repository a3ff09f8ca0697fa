"""Schema, migrations, connections and clip basics of the label store."""

from __future__ import annotations

import gc
import sqlite3
import threading

import pytest

from labeling import NotFoundError, Store, StoreError
from labeling.schema import MIGRATIONS, migration_names

TABLES = {
    "clips",
    "predictions",
    "annotators",
    "votes",
    "vote_history",
    "reservations",
    "skips",
    "model_versions",
    "training_runs",
}


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "db" / "studio.db", k=3, gold_rate=0.0)
    yield s
    s.close()


def test_fresh_store_records_every_migration_in_order(store):
    applied = [m.name for m in MIGRATIONS.applied(store.db)]
    assert applied == migration_names()
    assert applied[0].startswith("0001") and len(applied) >= 3
    assert set(store.db.table_names()) >= TABLES


def test_wal_and_foreign_keys_on_every_thread_connection(store):
    assert store.db.journal_mode == "wal"
    seen = []

    def probe():  # one append per thread: two would interleave between threads
        db = store.db
        seen.append((db.execute("PRAGMA foreign_keys").fetchone()[0], db.execute("PRAGMA busy_timeout").fetchone()[0]))

    threads = [threading.Thread(target=probe) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [fk for fk, _ in seen] == [1, 1, 1]
    assert all(timeout > 0 for _, timeout in seen)


def test_a_finished_threads_connection_is_released(store):
    store.db.execute("SELECT 1")  # the main thread's connection
    thread = threading.Thread(target=lambda: store.db.execute("SELECT 1"))
    thread.start()
    thread.join()
    gc.collect()
    assert len(store.conns._all) == 1


def test_foreign_keys_are_enforced(store):
    with pytest.raises(sqlite3.IntegrityError), store.write() as db:
        db.execute(
            "INSERT INTO predictions (clip_id, model_version, probs, top_label, entropy, margin, created) "
            "VALUES (?, 'v', '{}', 'happy', 0, 0, 'now')",
            ["0" * 64],
        )


def test_reopening_the_file_keeps_data_and_does_not_rerun_migrations(tmp_path):
    path = tmp_path / "studio.db"
    with Store.open(path, k=3, gold_rate=0.0) as first:
        clip = first.add_clip(b"abc", modalities=["speech"], consent=True)
        first.vote(clip, "ann", ["happy"])
        n_migrations = first.db["_sqlite_migrations"].count
    with Store.open(path, k=3, gold_rate=0.0) as again:
        assert again.db["_sqlite_migrations"].count == n_migrations
        assert again.votes(clip)[0]["labels"] == ["happy"]
        assert again.media_path(clip).read_bytes() == b"abc"


def test_concurrent_first_opens_apply_migrations_once(tmp_path):
    path = tmp_path / "race.db"
    errors, stores = [], []
    barrier = threading.Barrier(6)

    def opener():
        barrier.wait()
        try:
            stores.append(Store.open(path, k=3, gold_rate=0.0))
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stores[0].db["_sqlite_migrations"].count == len(migration_names())
    for s in stores:
        s.close()


def test_default_paths_come_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("EMO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EMO_DB_PATH", raising=False)
    monkeypatch.setenv("EMO_VOTES_PER_CLIP", "5")
    with Store.open() as s:
        assert s.path == tmp_path / "data" / "studio.db"
        assert s.media_dir == tmp_path / "data" / "media"
        assert s.path.exists() and s.media_dir.is_dir()
        assert s.k == 5


def test_add_clip_is_content_addressed_and_idempotent(store):
    first = store.add_clip(b"same bytes", ext="flac", modalities=["speech"], duration=1.5, consent=True)
    second = store.add_clip(b"same bytes", ext=".flac", modalities=["speech"], consent=True)
    assert first == second and len(first) == 64
    assert store.db["clips"].count == 1
    path = store.media_path(first)
    assert path == store.media_dir.resolve() / first[:2] / f"{first}.flac"
    assert path.read_bytes() == b"same bytes"
    assert store.get_clip(first)["duration"] == 1.5


def test_consent_can_be_upgraded_later(store):
    clip = store.add_clip(b"later", modalities=["speech"], consent=False, text="words")
    assert store.media_path(clip) is None
    assert store.get_clip(clip)["text"] is None
    assert store.add_clip(b"later", modalities=["speech"], consent=True, text="words") == clip
    row = store.get_clip(clip)
    assert row["consent"] == 1 and row["text"] == "words"
    assert store.media_path(clip).read_bytes() == b"later"


def test_clip_by_hash_only_and_checks(store):
    sha = "ab" * 32
    assert store.add_clip(None, sha256=sha.upper(), modalities=["text"]) == sha
    with pytest.raises(StoreError, match="does not match"):
        store.add_clip(b"x", sha256=sha, modalities=["speech"])
    with pytest.raises(StoreError, match="Modalities"):
        store.add_clip(b"x", modalities=["smell"])
    with pytest.raises(StoreError, match="extension"):
        store.add_clip(b"x", ext="../../x", modalities=["speech"])
    with pytest.raises(StoreError):
        store.add_clip(None, modalities=["speech"])


def test_get_clip_raises_not_found(store):
    with pytest.raises(NotFoundError):
        store.get_clip("0" * 64)


def test_media_path_never_leaves_the_media_dir(store):
    clip = store.add_clip(b"x", modalities=["speech"], consent=True)
    with store.write() as db:
        db.execute("UPDATE clips SET media = '../../../etc/passwd' WHERE id = ?", [clip])
    with pytest.raises(StoreError, match="outside the media folder"):
        store.media_path(clip)
