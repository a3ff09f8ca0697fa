"""labeling.service: corrections under the consent rules, undoing them, the queue view and admin checks.

A real SQLite file in tmp_path; samples and predictions are built by hand (no model needed).
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backend.labels import LABELS
from backend.settings import load_settings
from backend.types import SAMPLE_RATE, ModalityResult, Prediction, Sample
from labeling import service
from labeling.errors import StoreError
from labeling.store import Store


def tone(seconds: float = 1.0, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def prediction(label: str = "happy", version: str = "v7") -> Prediction:
    probs = {name: (0.4 if name == label else 0.1) for name in LABELS}
    return Prediction(probs=probs, modalities={"speech": ModalityResult(probs, 1.0)}, model_version=version)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "studio.db", tmp_path / "media", k=3, gold_rate=0.0) as s:
        yield s


def rows(store: Store, sql: str, *params) -> list[dict]:
    with sqlite3.connect(store.path) as conn:  # a separate connection: what is really in the file
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


def media_files(store: Store) -> list:
    return [p for p in store.media_dir.rglob("*") if p.is_file()]


def test_audio_contribution_is_the_16k_wav_it_would_keep():
    sample = Sample(audio=tone(), text=None)
    c = service.make_contribution(sample, prediction())
    assert c.ext == ".wav" and c.modalities == ["speech"] and c.duration == pytest.approx(1.0)
    audio, rate = sf.read(io.BytesIO(c.media), dtype="float32")
    assert rate == SAMPLE_RATE and len(audio) == SAMPLE_RATE
    assert c.sha256 == service.sha256_bytes(c.media)
    assert c.model_version == "v7" and c.probs["happy"] == pytest.approx(0.4)


def test_image_and_text_contributions():
    frame = np.zeros((8, 8, 3), np.uint8)
    image = service.make_contribution(Sample(frames=[frame], text="hi there"), prediction())
    assert image.ext == ".png" and image.media.startswith(b"\x89PNG") and image.modalities == ["text", "face"]
    text = service.make_contribution(Sample(text="so happy"), prediction())
    assert text.ext == ".txt" and text.media is None and text.sha256 is None  # the store keys text ids


def test_video_contribution_hashes_the_file(tmp_path):
    video = tmp_path / "clip.webm"
    video.write_bytes(b"\x1a\x45\xdf\xa3" + b"x" * 100)
    c = service.make_contribution(Sample(frames=[np.zeros((4, 4, 3), np.uint8)]), prediction(), video=video)
    assert c.media is None and c.media_file is None and c.ext == ".webm"  # cannot be cleaned: never kept
    assert c.sha256 == service.sha256_bytes(video.read_bytes())


def test_without_consent_only_prediction_and_label_are_kept(store):
    c = service.make_contribution(Sample(audio=tone(), text="typed words"), prediction())
    receipt = service.record_correction(store, c, "session:a", ["sad"], note=" too quiet ", consent=False)
    assert not receipt.kept_media and receipt.new_clip and receipt.labels == ["sad"]
    clip = rows(store, "SELECT * FROM clips WHERE id = ?", receipt.clip_id)[0]
    assert clip["media"] is None and clip["text"] is None and clip["consent"] == 0
    assert media_files(store) == []
    vote = rows(store, "SELECT * FROM votes WHERE clip_id = ?", receipt.clip_id)[0]
    assert vote["annotator_id"] == "session:a" and vote["labels"] == '["sad"]' and vote["note"] == "too quiet"
    pred = rows(store, "SELECT * FROM predictions WHERE id = ?", receipt.prediction_id)[0]
    assert pred["model_version"] == "v7" and pred["top_label"] == "happy"
    assert rows(store, "SELECT kind FROM annotators WHERE id = 'session:a'")[0]["kind"] == "user"


def test_with_consent_the_media_file_is_written(store):
    c = service.make_contribution(Sample(audio=tone(), text="typed words"), prediction())
    receipt = service.record_correction(store, c, "session:a", ["sad", "angry"], consent=True)
    path = store.media_path(receipt.clip_id)
    assert receipt.kept_media and receipt.media_added
    assert path.is_file() and path.is_relative_to(store.media_dir.resolve())
    assert path.read_bytes() == c.media
    assert rows(store, "SELECT text FROM clips")[0]["text"] == "typed words"


def test_unsure_alone_keeps_the_prediction_without_a_vote(store):
    c = service.make_contribution(Sample(text="hmm"), prediction())
    receipt = service.record_correction(store, c, "session:a", ["unsure"])
    assert receipt.vote_id is None and receipt.unsure and receipt.labels == []
    assert rows(store, "SELECT COUNT(*) AS n FROM votes")[0]["n"] == 0
    assert rows(store, "SELECT COUNT(*) AS n FROM predictions")[0]["n"] == 1
    marked = service.record_correction(store, c, "session:a", ["Happy", "unsure"])
    assert marked.labels == ["happy"] and rows(store, "SELECT unsure FROM votes")[0]["unsure"] == 1


@pytest.mark.parametrize(("choices", "message"), [([], "Pick the right emotion"), (["bored"], "unknown emotion")])
def test_bad_answers_are_refused_before_anything_is_stored(store, choices, message):
    c = service.make_contribution(Sample(text="hmm"), prediction())
    with pytest.raises(StoreError, match=message):
        service.record_correction(store, c, "session:a", choices)
    assert rows(store, "SELECT COUNT(*) AS n FROM clips")[0]["n"] == 0


def test_delete_contribution_removes_a_new_clip_with_its_file(store):
    c = service.make_contribution(Sample(audio=tone()), prediction())
    receipt = service.record_correction(store, c, "session:a", ["sad"], consent=True)
    counts = service.delete_contribution(store, receipt)
    assert counts["clips"] == 1 and counts["files"] == 1 and counts["votes"] == 1
    assert media_files(store) == [] and rows(store, "SELECT COUNT(*) AS n FROM clips")[0]["n"] == 0


def test_delete_contribution_on_a_shared_clip_leaves_the_other_persons_data(store):
    c = service.make_contribution(Sample(audio=tone()), prediction())
    first = service.record_correction(store, c, "session:a", ["sad"], consent=False)
    second = service.record_correction(store, c, "session:b", ["angry"], consent=True)
    assert first.new_clip and not second.new_clip and second.media_added
    counts = service.delete_contribution(store, second)
    assert counts == {"votes": 1, "predictions": 1, "files": 1}
    assert [v["annotator_id"] for v in rows(store, "SELECT annotator_id FROM votes")] == ["session:a"]
    assert rows(store, "SELECT media FROM clips")[0]["media"] is None and media_files(store) == []
    assert [p["id"] for p in rows(store, "SELECT id FROM predictions")] == [first.prediction_id]


def test_delete_my_data_removes_every_receipt_and_the_contributor(store):
    a = service.record_correction(
        store, service.make_contribution(Sample(audio=tone(freq=300)), prediction()), "session:a", ["sad"], consent=True
    )
    b = service.record_correction(
        store, service.make_contribution(Sample(text="words"), prediction()), "session:a", ["happy"], consent=True
    )
    counts = service.delete_my_data(store, "session:a", [a, b])
    assert counts["clips"] == 2 and counts["files"] == 1
    assert rows(store, "SELECT COUNT(*) AS n FROM clips")[0]["n"] == 0
    assert rows(store, "SELECT COUNT(*) AS n FROM annotators")[0]["n"] == 0
    assert service.delete_my_data(store, "session:a", []) == {}


def test_recording_a_video_needs_the_upload_to_still_be_there(store, tmp_path):
    video = tmp_path / "v.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=5:duration=1", str(video)], check=True
    )
    c = service.make_contribution(Sample(frames=[np.zeros((4, 4, 3), np.uint8)]), prediction(), video=video)
    receipt = service.record_correction(store, c, "session:a", ["happy"], consent=True)
    assert store.media_path(receipt.clip_id).read_bytes() == Path(c.media_file).read_bytes()  # the cleaned copy
    video = Path(c.media_file)
    video.unlink()
    other = service.make_contribution(Sample(text="x"), prediction())
    other.media_file, other.media = str(video), None
    with pytest.raises(StoreError, match="no longer on the server"):
        service.record_correction(store, other, "session:a", ["happy"], consent=True)


def test_queue_view_is_blind_unless_configured(store):
    c = service.make_contribution(Sample(audio=tone()), prediction("angry"))
    service.record_correction(store, c, "session:a", ["sad"], consent=True)
    blind = service.next_clip(store, "name:bob", blind=True)
    assert blind.kind == "audio" and blind.media_path.is_file() and blind.prediction is None and blind.votes == []
    open_view = service.next_clip(store, "name:carol", blind=False)
    assert open_view.prediction["top_label"] == "angry"
    assert [v["labels"] for v in open_view.votes] == [["sad"]]
    store.vote(blind.clip_id, "name:bob", ["sad"])
    assert service.next_clip(store, "name:bob") is None


def test_annotator_ids():
    assert service.annotator_id_for("  Alice   Smith ") == "name:Alice Smith"
    assert service.annotator_id_for("ignored", hf_username="alice") == "hf:alice"
    assert service.annotator_id_for("hf:bob") == "name:hf:bob"  # a typed name cannot pose as a login
    with pytest.raises(StoreError, match="Type a name"):
        service.annotator_id_for("   ")


def test_admin_token_is_checked_and_never_echoed():
    settings = load_settings(admin_token="s3cret-token")
    service.require_admin("s3cret-token", settings)
    with pytest.raises(StoreError) as wrong:
        service.require_admin("guess", settings)
    assert "s3cret" not in str(wrong.value) and "guess" not in str(wrong.value)
    with pytest.raises(StoreError, match="off on this server"):
        service.require_admin("anything", load_settings(admin_token=None))


def test_retraining_runs_the_module_as_a_subprocess(tmp_path, monkeypatch):
    settings = load_settings(data_dir=tmp_path)
    calls = []

    class FakeProcess:
        pid = 4242

    monkeypatch.setattr(service, "retrain_available", lambda: True)
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: calls.append(command) or FakeProcess())
    job = service.start_retraining(settings)
    assert calls[0][:3] == [sys.executable, "-m", "train.retrain"]
    assert calls[0][3:] == ["--db", str(settings.database), "--data-dir", str(tmp_path), "--no-lock"]
    assert job.pid == 4242 and job.log_path.parent == tmp_path / "retrain"
    monkeypatch.setattr(service, "retrain_available", lambda: False)
    with pytest.raises(StoreError, match="not available"):
        service.start_retraining(settings)


def test_export_writes_a_dataset(store, tmp_path):
    c = service.make_contribution(Sample(audio=tone()), prediction())
    service.record_correction(store, c, "session:a", ["sad"], consent=True)
    assert service.export_labels(store, tmp_path / "out") == 1
    assert list((tmp_path / "out" / "data").glob("*.parquet"))


def test_the_retrain_command_is_one_the_trainer_accepts(tmp_path):
    from train.retrain import build_parser

    settings = load_settings(data_dir=tmp_path)
    args = build_parser().parse_args(service.retrain_command(settings)[3:])
    assert args.db == str(settings.database) and args.data_dir == str(tmp_path)
    assert args.base_model is None  # the trainer starts from the model the app serves (registry)
    assert args.lock is False  # it inherits the store's lock from start_retraining


def test_the_app_refuses_to_retrain_while_a_scheduler_holds_the_lock_beside_a_database_elsewhere(tmp_path):
    from train.schedule import retrain_lock

    db = tmp_path / "elsewhere" / "studio.db"  # not under the data dir: the lock must still be the same one
    settings = load_settings(data_dir=tmp_path / "data", db_path=db)
    Store.open(db).close()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with retrain_lock(db):  # exactly what a train.schedule tick (or train.retrain) holds
        assert service.retrain_running(settings)
        with pytest.raises(StoreError, match=r"already in progress .*scheduler"):
            service.start_retraining(settings, command=sleeper)
    assert not list((tmp_path / "data").rglob("*.log"))  # refused before starting anything
    assert not service.retrain_running(settings)
    job = service.start_retraining(settings, command=sleeper)  # free again: it starts, and its process holds it
    try:
        assert service.retrain_running(settings)
        with pytest.raises(StoreError, match="already in progress"):
            service.start_retraining(settings, command=sleeper)  # a second press of the button
    finally:
        os.kill(job.pid, signal.SIGTERM)
        os.waitpid(job.pid, 0)
    assert not service.retrain_running(settings)  # the lock went with the process
