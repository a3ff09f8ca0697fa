"""Privacy: consent per clip, deletion by clip or annotator removes files and rows, logs carry no content."""

from __future__ import annotations

import logging

import pytest

from labeling import NotFoundError, Store

NOTE = "my private note about my aunt"
TEXT = "words only I should know"


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0, synchronous="NORMAL")
    yield s
    s.close()


def files(store: Store) -> list:
    return sorted(p for p in store.media_dir.rglob("*") if p.is_file())


def test_without_consent_nothing_of_the_content_is_kept(store):
    clip = store.add_clip(b"secret audio", modalities=["speech", "text"], consent=False, text=TEXT)
    row = store.get_clip(clip)
    assert row["consent"] == 0 and row["media"] is None and row["text"] is None
    assert files(store) == []
    assert store.media_path(clip) is None


def test_withdrawing_consent_removes_media_and_text(store):
    clip = store.add_clip(b"kept", modalities=["speech"], consent=True, text=TEXT)
    store.vote(clip, "me", ["happy"])
    store.set_consent(clip, False)
    row = store.get_clip(clip)
    assert row["media"] is None and row["text"] is None and row["consent"] == 0
    assert files(store) == []
    assert len(store.votes(clip)) == 1


def test_delete_clip_removes_file_and_every_row(store, caplog):
    clip = store.add_clip(b"to delete", modalities=["speech"], consent=True, text=TEXT)
    keep = store.add_clip(b"to keep", modalities=["speech"], consent=True)
    store.add_prediction(clip, "v1", {"happy": 1.0})
    store.vote(clip, "alice", ["happy"], note=NOTE)
    store.vote(clip, "alice", ["sad"], note=NOTE)
    store.vote(clip, "bob", ["angry"])
    store.vote(keep, "bob", ["angry"])
    store.skip(clip, "carol")
    store.skip(keep, "dave")
    assert store.next_item("dave")["id"] == clip  # a lease on the clip
    with caplog.at_level(logging.DEBUG, logger="labeling"):
        counts = store.delete_clip(clip)
    assert counts == {
        "clips": 1,
        "files": 1,
        "predictions": 1,
        "votes": 2,
        "vote_history": 1,
        "reservations": 1,
        "skips": 1,
    }
    assert len(files(store)) == 1
    for table in ("predictions", "votes", "vote_history", "reservations", "skips"):
        assert store.db.execute(f"SELECT COUNT(*) FROM {table} WHERE clip_id = ?", [clip]).fetchone()[0] == 0
    assert len(store.votes(keep)) == 1
    with pytest.raises(NotFoundError):
        store.get_clip(clip)
    assert caplog.records, "the deletion is logged"
    for secret in (clip, clip[:8], "alice", "bob", NOTE, TEXT, "happy", "sad", "angry"):
        assert secret not in caplog.text


def test_delete_annotator_removes_their_votes_and_uploads(store, caplog):
    store.ensure_annotator("alice", "user")
    upload = store.add_clip(b"alice's upload", modalities=["speech"], consent=True, uploader="alice")
    other = store.add_clip(b"someone else's", modalities=["speech"], consent=True)
    store.vote(upload, "alice", ["happy"], note=NOTE)
    store.vote(upload, "bob", ["sad"])  # bob's vote on alice's clip goes with the clip
    store.vote(other, "alice", ["angry"])
    store.vote(other, "alice", ["fearful"])
    store.vote(other, "bob", ["angry"])
    with caplog.at_level(logging.DEBUG, logger="labeling"):
        counts = store.delete_annotator("alice")
    assert counts["annotators"] == 1 and counts["clips"] == 1 and counts["files"] == 1
    assert counts["votes"] == 3 and counts["vote_history"] == 1
    assert [v["annotator_id"] for v in store.votes()] == ["bob"]
    assert store.vote_history() == []
    assert files(store) == [store.media_path(other)]
    with pytest.raises(NotFoundError):
        store.get_annotator("alice")
    assert store.get_annotator("bob")["kind"] == "crowd"
    for secret in ("alice", upload, NOTE, "happy", "fearful"):
        assert secret not in caplog.text


def test_deleting_what_is_not_there_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.delete_clip("a" * 64)
    with pytest.raises(NotFoundError):
        store.delete_annotator("nobody")


def test_sweep_removes_only_old_files_no_clip_refers_to(store, tmp_path):
    import os
    import time

    from labeling import media
    from labeling.__main__ import main

    kept = store.add_clip(b"RIFF kept", ext=".wav", modalities=["speech"], consent=True)
    orphan = media.resolve(store.media_dir, media.relative_path("ab" * 32, ".wav"))  # a crash after the write
    media.write_atomic(orphan, b"no row")
    leftover = store.media_dir / "cd" / ".tmp-x.wav"  # a half-written temporary
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    fresh = media.resolve(store.media_dir, media.relative_path("ef" * 32, ".wav"))  # being added right now
    media.write_atomic(fresh, b"row comes next")
    old = time.time() - 7200
    for path in (orphan, leftover, store.media_path(kept)):
        os.utime(path, (old, old))
    assert store.sweep_orphans(min_age_s=3600) == 2
    assert not orphan.exists() and not leftover.exists()
    assert fresh.exists() and store.media_path(kept).read_bytes() == b"RIFF kept"
    assert main(["--db", str(store.path), "--media-dir", str(store.media_dir), "sweep", "--min-age", "0"]) == 0
    assert not fresh.exists() and store.media_path(kept).exists()
