"""Crowd-grade store and service (issue 17): idempotent votes, annotator keys, probation by gold, the admin's
who-is-who, keyed text ids, private served copies purged on delete, videos kept without their metadata,
and Markdown views that show user strings as text. Real SQLite files throughout."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from backend import present
from backend.labels import LABELS
from backend.types import ModalityResult, Prediction, Sample
from labeling import keys, service
from labeling.aggregate import PROBATION_GOLD, aggregate_labels
from labeling.errors import StoreError
from labeling.served import ServedCopies
from labeling.store import Store


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "studio.db", tmp_path / "media", k=3, gold_rate=0.0) as opened:
        yield opened


def add(store: Store, tag: str, consent: bool = True) -> str:
    return store.add_clip(f"clip {tag}".encode(), ext=".wav", modalities=["speech"], consent=consent)


def prediction() -> Prediction:
    probs = {name: 1.0 / len(LABELS) for name in LABELS}
    return Prediction(probs=probs, modalities={"speech": ModalityResult(probs, 1.0)}, model_version="v1")


# ---- 1. idempotent votes ----------------------------------------------------------------------------


def test_a_retried_vote_with_its_key_is_counted_once_and_returns_the_first_result(store):
    clip = add(store, "a")
    first = store.vote(clip, "name:ann", ["sad"], request_id="k-1")
    again = store.vote(clip, "name:ann", ["happy"], request_id="k-1")  # a confused retry changes nothing
    assert again == first
    assert [v["labels"] for v in store.votes(clip)] == [["sad"]]
    assert store.vote_history(clip) == []
    other = add(store, "b")
    assert store.vote(other, "name:ann", ["sad"], request_id="k-1") == first  # the key names the request
    assert store.votes(other) == []
    assert store.vote(other, "name:bob", ["sad"], request_id="k-1") != first  # keys are per annotator


def test_concurrent_retries_of_one_vote_store_it_once(tmp_path):
    with Store.open(tmp_path / "studio.db", tmp_path / "media", k=3, gold_rate=0.0) as store:
        clips = [add(store, str(i)) for i in range(10)]
        results: list[int] = []
        lock = threading.Lock()

        def send(clip: str, key: str) -> None:
            vote_id = store.vote(clip, "name:ann", ["angry"], request_id=key)
            with lock:
                results.append(vote_id)

        threads = [
            threading.Thread(target=send, args=(clip, f"key-{i}")) for i, clip in enumerate(clips) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(store.votes()) == 10 and len(set(results)) == 10 and len(results) == 60
        rows = store.db.execute("SELECT COUNT(*) FROM vote_requests").fetchone()[0]
        assert rows == 10


def test_a_vote_may_name_only_a_clip_handed_out_or_already_voted_on(store):
    held, voted, stranger = add(store, "held"), add(store, "voted"), add(store, "stranger")
    store.vote(voted, "name:ann", ["sad"])
    assert service.voted_clip(store, "name:ann", held, None) == held
    assert service.voted_clip(store, "name:ann", held, voted.upper()) == voted  # a retry after the first went in
    with pytest.raises(StoreError, match="not handed to you"):
        service.voted_clip(store, "name:ann", held, stranger)
    with pytest.raises(StoreError, match="no clip to vote on"):
        service.voted_clip(store, "name:ann", None, None)


# ---- 2. annotator identity --------------------------------------------------------------------------


def test_a_name_needs_the_key_issued_on_its_first_use(store):
    key = service.identify(store, "name:alice", None)
    assert key and len(key) >= 20
    stored = store.db.execute("SELECT key_hash FROM annotator_keys WHERE annotator_id = 'name:alice'").fetchone()[0]
    assert key not in stored and stored == keys.key_hash(key)  # only the hash is kept
    for wrong in (None, "", "alice", key[:-1]):
        with pytest.raises(StoreError, match="already belongs"):
            service.identify(store, "name:alice", wrong)
    assert service.identify(store, "name:alice", f"  {key} ") == key
    assert service.identify(store, "name:alice", None, proven="name:alice") is None  # this session proved it
    assert service.identify(store, "hf:alice", None) is None  # a login needs no key
    assert service.identify(store, "name:bob", key) != key  # someone else's key does not carry over


def test_fresh_names_weigh_nothing_until_they_answer_gold(store):
    truths = ["sad", "angry", "fearful", "neutral"]
    for i, truth in enumerate(truths):
        gold = add(store, f"gold{i}")
        store.add_gold(gold, truth)
        store.vote(gold, "name:veteran", [truth])
    contested = add(store, "contested")
    store.vote(contested, "name:veteran", ["sad"])
    for i in range(8):  # eight throwaway names all say happy
        store.vote(contested, f"name:sock{i}", ["happy"])
    item = {c.clip_id: c for c in aggregate_labels(store)}[contested]
    assert item.majority == "happy"
    assert item.weighted == "sad" and item.label == "sad"
    weights = {r["annotator"]: r["weight"] for r in service.annotator_overview(store)}
    assert weights["name:sock0"] == 0.0 and weights["name:veteran"] == pytest.approx(1 - (1 / 6) / (6 / 7), abs=1e-3)
    assert len(truths) == PROBATION_GOLD  # the veteran just finished probation


def test_annotator_overview_says_who_is_who(store):
    service.identify(store, "name:alice", None)
    store.ensure_annotator("name:legacy")
    store.ensure_annotator("hf:carol")
    clip = add(store, "x")
    store.vote(clip, "name:alice", ["sad"])
    rows = {r["annotator"]: r for r in service.annotator_overview(store)}
    assert rows["name:alice"]["identity"] == "name + key" and rows["name:alice"]["votes"] == 1
    assert rows["name:legacy"]["identity"] == "no key yet"
    assert rows["hf:carol"]["identity"] == "Hugging Face login"
    assert json.dumps(rows)  # plain values, ready for a table


# ---- 5. leaks ---------------------------------------------------------------------------------------


def test_text_clip_ids_are_keyed_with_the_server_secret(tmp_path):
    words = "I am so happy"
    c = service.make_contribution(Sample(text=words), prediction())
    assert c.sha256 is None  # nothing derived from the words alone
    with Store.open(tmp_path / "a.db", tmp_path / "media-a") as first:
        receipt = service.record_correction(first, c, "session:x", ["happy"], consent=False)
        secret_file = keys.secret_path(first.path)
        assert receipt.clip_id != hashlib.sha256(words.encode()).hexdigest()
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert words not in json.dumps(first.db.execute("SELECT * FROM clips").fetchall())
    with Store.open(tmp_path / "a.db", tmp_path / "media-a") as reopened:  # stable across restarts: dedupe works
        assert service.record_correction(reopened, c, "session:y", ["happy"]).clip_id == receipt.clip_id
    with Store.open(tmp_path / "b.db", tmp_path / "media-b") as other:  # another server, another key
        assert service.record_correction(other, c, "session:x", ["happy"]).clip_id != receipt.clip_id


def test_served_copies_are_private_copies_purged_when_the_clip_goes(store, tmp_path):
    mirror = tmp_path / "gradio-cache"
    served = ServedCopies(ttl_s=300, remember_s=3600, mirrors=lambda: [mirror])
    store.on_media_gone.append(served.purge)
    try:
        assert stat.S_IMODE(served.folder.stat().st_mode) == 0o700
        assert served.folder.stat().st_uid == Path(tmp_path).stat().st_uid
        other_process = ServedCopies(300, 3600)
        assert other_process.folder != served.folder  # fresh per process, never a shared fixed name
        other_process.close()
        clip, kept = add(store, "a"), add(store, "b")
        original = store.media_path(clip)
        copy, other = served.copy(clip, original), served.copy(kept, store.media_path(kept))
        assert copy.read_bytes() == original.read_bytes() and copy.stat().st_ino != original.stat().st_ino
        assert original.stat().st_nlink == 1  # not a hard link: deleting the clip frees its bytes
        (mirror / "hash1").mkdir(parents=True)
        cached = mirror / "hash1" / copy.name  # where Gradio's cache keeps its own copy of the served file
        cached.write_bytes(copy.read_bytes())
        store.delete_clip(clip)
        assert not copy.exists() and not cached.exists()
        assert other.exists()  # other clips' copies stay
        store.set_consent(kept, False)  # withdrawing consent purges too
        assert not other.exists()
    finally:
        served.close()
    assert not served.folder.exists()


def test_a_clip_is_prepared_once_and_its_conversion_goes_with_it(store):
    prepared: list[Path] = []

    def convert(media: Path, folder: Path) -> Path:  # stands for a browser-playable conversion
        folder.mkdir(exist_ok=True)
        out = folder / f"{media.stem}.converted{media.suffix}"
        out.write_bytes(b"converted:" + media.read_bytes())
        prepared.append(media)
        return out

    served = ServedCopies(ttl_s=300, remember_s=3600, prepare=convert)
    store.on_media_gone.append(served.purge)
    try:
        clip = add(store, "p")
        media = store.media_path(clip)
        first, second = served.copy(clip, media), served.copy(clip, media)
        assert prepared == [media]  # once per clip, not per response
        assert first != second and first.read_bytes() == second.read_bytes() == b"converted:" + media.read_bytes()
        assert served.owns(first) and not served.owns(media) and not served.owns(served.source(clip, media))
        conversion = served.source(clip, media)
        store.delete_clip(clip)
        assert not conversion.exists() and not first.exists() and not second.exists()
    finally:
        served.close()


FFMPEG_TAGS = [
    "-metadata",
    "location=+48.8584+002.2945/",
    "-metadata",
    "title=secret-title",
    "-metadata",
    "make=PhoneCo",
]


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_kept_videos_lose_their_metadata(store, tmp_path, ext):
    video = tmp_path / f"in{ext}"
    codec = ["-c:v", "mpeg4"] if ext == ".mp4" else ["-c:v", "libvpx", "-b:v", "200k"]
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=5:duration=1",
            *codec,
            *FFMPEG_TAGS,
            str(video),
        ],
        check=True,
    )
    assert b"secret-title" in video.read_bytes()
    frame = np.zeros((4, 4, 3), np.uint8)
    c = service.make_contribution(Sample(frames=[frame]), prediction(), video=video)
    receipt = service.record_correction(store, c, "session:a", ["happy"], consent=True)
    kept = store.media_path(receipt.clip_id)
    data = kept.read_bytes()
    assert kept.suffix == ext and receipt.clip_id == hashlib.sha256(data).hexdigest()
    for secret in (b"secret-title", b"PhoneCo", b"48.8584"):
        assert secret not in data
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags:stream_tags", "-of", "json", str(kept)],
        capture_output=True,
        check=True,
    )
    assert "secret" not in probe.stdout.decode() and "PhoneCo" not in probe.stdout.decode()
    assert service.make_contribution(Sample(frames=[frame]), prediction(), video=video).sha256 == receipt.clip_id


def test_a_video_that_cannot_be_cleaned_is_not_kept(store, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"GPS-secret" * 10)
    c = service.make_contribution(Sample(frames=[np.zeros((4, 4, 3), np.uint8)]), prediction(), video=video)
    receipt = service.record_correction(store, c, "session:a", ["happy"], consent=True)
    assert not receipt.kept_media and store.media_path(receipt.clip_id) is None
    assert not [p for p in store.media_dir.rglob("*") if p.is_file()]


# ---- 3. escaping ------------------------------------------------------------------------------------

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "[click](javascript:alert(1))",
    "![x](x onerror=alert(1))",
    "**bold** _it_ `code` # head",
    "a`</code><img src=x>`b",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markdown_views_show_user_strings_as_text(payload):
    views = [
        present.progress_markdown({"annotator_id": f"name:{payload}", "votes": 1, "remaining": 0}),
        present.clip_text_markdown(payload),
        present.receipt_markdown(
            {"labels": ["sad"], "vote_id": 1, "model_version": payload, "clip_id": "ab" * 32, "annotator_id": payload}
        ),
        present.clip_context_markdown({"model_version": payload, "top_label": payload}, []),
    ]
    for view in views:
        outside_code = "".join(part for i, part in enumerate(view.split("`")) if i % 2 == 0)
        assert "<" not in outside_code and "](" not in outside_code, view
    block = present.md_code_block(f"log line ``` {payload}")
    fence = block.split("\n", 1)[0]
    assert len(fence) > 3 and block.endswith("\n" + fence) and block.count(fence) == 2
