"""app.py's handlers called directly (no server): errors a person can read, consent rules, deletion."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from backend.labels import LABELS
from tests.app_support import ADMIN_TOKEN, studio  # noqa: F401  (module fixture)
from tests.conftest import SHARED

RAVDESS = "ravdess-speech-16k"
ANGRY = f"{RAVDESS}/Actor_02/03-01-05-02-01-02-02.flac"  # 4.0 s, angry, strong
SAD = f"{RAVDESS}/Actor_03/03-01-04-01-01-01-03.flac"


def count(app, sql: str, *params) -> int:
    with sqlite3.connect(app.get_settings().database) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_nothing_given_is_a_clear_error(studio):  # noqa: F811
    with pytest.raises(gr.Error, match="Nothing to analyze"):
        studio.predict(None, None, None, "   ", None)


def test_a_text_file_as_audio_is_a_clear_error(studio, tmp_path):  # noqa: F811
    fake = tmp_path / "notes.wav"
    fake.write_text("this is not audio at all\n" * 20)
    with pytest.raises(gr.Error, match="not audio we can read"):
        studio.predict(str(fake), None, None, None, None)


@pytest.mark.slow
def test_a_photo_without_a_face_and_nothing_else_is_a_clear_error(studio, tmp_path):  # noqa: F811
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, np.uint8))
    with pytest.raises(gr.Error, match="No face was found"):
        studio.predict(image=str(blank))


def test_correcting_before_analyzing_is_refused(studio):  # noqa: F811
    with pytest.raises(gr.Error, match="Analyze something first"):
        studio.correct(["sad"], None, False, None)


@pytest.mark.slow
def test_text_only_prediction(studio):  # noqa: F811
    label, summary, table, words, faces, timeline, details, session, *_ = studio.predict(
        text="I am so happy and grateful today, what a wonderful surprise!"
    )
    assert set(label) == set(LABELS) and abs(sum(label.values()) - 1.0) < 1e-3
    assert table["modality"].tolist()[0].startswith("words") and "text" in summary
    assert any(emotion for _, emotion in words), words
    assert details["model_version"] == studio.get_predictor().model_version
    assert session["pending"].ext == ".txt" and session["pending"].media is None
    assert faces["visible"] is False and timeline["visible"] is False  # no face, no long audio


@pytest.mark.slow
def test_consent_off_keeps_no_media(studio, shared_data):  # noqa: F811
    *_, session, _, _ = studio.predict(str(shared_data / SAD))
    text, receipt, session = studio.correct(["sad"], "", False, session)
    assert "no media" in text and receipt["kept_media"] is False
    assert count(studio, "SELECT COUNT(*) FROM clips WHERE id = ? AND media IS NULL", receipt["clip_id"]) == 1
    assert count(studio, "SELECT COUNT(*) FROM votes WHERE clip_id = ?", receipt["clip_id"]) == 1
    media = studio.get_settings().media_dir
    assert not any(receipt["clip_id"] in p.name for p in media.rglob("*"))


@pytest.mark.slow
def test_consent_on_keeps_media_and_delete_my_data_removes_it(studio, shared_data, tmp_path):  # noqa: F811
    audio, rate = sf.read(shared_data / ANGRY, dtype="float32")  # as browsers record: 48 kHz stereo
    stereo = torchaudio.functional.resample(torch.from_numpy(audio), rate, 48_000).numpy()
    browser_like = tmp_path / "recording.wav"
    sf.write(browser_like, np.stack([stereo, 0.5 * stereo], axis=1), 48_000, subtype="PCM_16")
    _, summary, *_, session, _, _ = studio.predict(str(browser_like))
    assert "4.0 s of audio" in summary
    text, receipt, session = studio.correct(["angry", "unsure"], "loud", True, session)
    assert "media itself" in text and receipt["labels"] == ["angry"] and receipt["unsure"] is True
    path = studio.get_store().media_path(receipt["clip_id"])
    assert path.is_file() and path.is_relative_to(studio.get_settings().media_dir.resolve())
    kept = sf.info(path)
    assert (kept.samplerate, kept.channels) == (16_000, 1) and abs(kept.duration - 4.0) < 0.05
    message, counts, session = studio.delete_my_data(session)
    assert counts["clips"] == 1 and counts["files"] == 1 and "Deleted" in message
    assert not path.exists()
    assert count(studio, "SELECT COUNT(*) FROM clips WHERE id = ?", receipt["clip_id"]) == 0
    assert session["receipts"] == []


def test_admin_actions_need_the_token(studio):  # noqa: F811
    with pytest.raises(gr.Error, match="admin token is not right") as wrong:
        studio.delete_clip("wrong", "ab" * 32)
    assert ADMIN_TOKEN not in str(wrong.value)
    with pytest.raises(gr.Error, match="not in the store"):
        studio.delete_clip(ADMIN_TOKEN, "ab" * 32)


def fer_face(index: int, side: int = 192) -> np.ndarray:
    """A real FER2013 face (grayscale 48x48) as an RGB image large enough for the Haar detector."""
    with np.load(SHARED / "faces" / "fer2013_val.npz") as data:
        gray = data["images"][index]
    return cv2.resize(np.repeat(gray[:, :, None], 3, axis=2), (side, side), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    canvas = np.full((240, 460, 3), 200, dtype=np.uint8)
    canvas[24:216, 16:208] = fer_face(1)
    canvas[24:216, 252:444] = fer_face(13)
    path = tmp_path_factory.mktemp("faces") / "two_faces.png"
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return path


@pytest.mark.slow
def test_photo_faces_are_boxed_with_their_reading(studio, two_faces):  # noqa: F811
    _, _, table, _, faces, _, details, session, *_ = studio.predict(image=str(two_faces))
    assert len(details["faces"]) == 2 and faces["visible"] is True
    drawn = faces["value"]
    original = cv2.cvtColor(cv2.imread(str(two_faces)), cv2.COLOR_BGR2RGB)
    assert drawn.shape == original.shape and (drawn != original).any()
    x, y, _w, h = details["faces"][0]["box"]
    assert (drawn[y + h // 2, x] != original[y + h // 2, x]).any(), "the box edge is drawn"
    assert table["modality"].tolist()[0].startswith("face")
    assert session["pending"].ext == ".png"


@pytest.mark.slow
def test_video_upload_reads_the_face_and_keeps_the_file_with_consent(studio, tmp_path):  # noqa: F811
    video = tmp_path / "face.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (192, 192))
    for index in (1, 1, 13, 13, 13, 1, 1, 13, 13, 1):
        writer.write(cv2.cvtColor(fer_face(index), cv2.COLOR_RGB2BGR))
    writer.release()
    *_, details, session, _, _ = studio.predict(video=str(video))
    assert "face" in details["modalities"] and details["faces"]
    _, receipt, session = studio.correct(["neutral"], None, True, session)
    kept = studio.get_store().media_path(receipt["clip_id"])
    assert kept.suffix == ".mp4" and kept.read_bytes()[4:8] == b"ftyp"  # a remux without metadata (test_crowd_store)
    studio.delete_my_data(session)
    assert not kept.exists()


@pytest.mark.slow
def test_long_audio_gets_a_timeline(studio, shared_data, tmp_path):  # noqa: F811
    parts = [sf.read(shared_data / rel, dtype="float32")[0] for rel in (SAD, ANGRY, SAD)]
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, np.concatenate(parts), 16_000)
    *_, timeline, details, _session, _, _ = studio.predict(audio=str(long_clip))
    assert timeline["visible"] is True
    frame = timeline["value"]
    assert frame["time"].nunique() >= 4 and set(frame["emotion"]) == set(LABELS)
    assert details["duration"] > 10


def test_wiring_names_every_event_and_starts_offline(studio):  # noqa: F811
    demo = studio.build_demo()
    events = {fn.api_name: fn.api_visibility for fn in demo.fns.values()}
    assert all(events), "every event has an api_name"
    public = {name for name, visibility in events.items() if visibility == "public"}
    assert {"predict", "correct", "next_item", "vote", "skip", "delete_my_data", "stats"} <= public
    assert events["vote_happy"] == "private" and events["stats_on_open"] == "private"
    assert not any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())  # whoami needs the Hub
    options = studio.launch_options(studio.get_settings())
    assert options["max_file_size"] == int(studio.get_settings().max_upload_mb * 1024 * 1024)
    assert options["blocked_paths"] == [str(studio.get_settings().media_dir)] and "allowed_paths" not in options


@pytest.mark.slow
def test_a_session_is_read_as_one_voice_after_three_clips(studio, shared_data):  # noqa: F811
    clips = sorted((shared_data / RAVDESS / "Actor_17").glob("*.flac"))[:4]
    session = None
    for clip in clips[:3]:
        _, summary, *_, session, _, _ = studio.predict(str(clip), session=session)
        assert "adapting to this voice" not in summary
    assert session["voice"]["count"] == 3 and len(session["voice"]["total"]) > 0
    _, summary, *_, details, session, _, _ = studio.predict(str(clips[3]), session=session)
    assert "adapting to this voice" in summary
    assert "Speech read after adapting to this voice (3 earlier clips)." in details["notes"]
    assert session["voice"]["count"] == 4
    *_, session = studio.delete_my_data(session)
    assert "voice" not in session  # deleting what the session gave forgets the voice statistics too


@pytest.mark.skipif(not gr.processing_utils.ffmpeg_installed(), reason="needs ffmpeg")
def test_served_audio_is_made_playable_once_and_then_sent_without_a_probe(studio, tmp_path, monkeypatch):  # noqa: F811
    tone = (0.3 * np.sin(np.linspace(0, 440 * 2 * np.pi, 16_000))).astype(np.float32)
    playable, odd = tmp_path / "s16.wav", tmp_path / "s32.wav"
    sf.write(playable, tone, 16_000, subtype="PCM_16")
    sf.write(odd, tone, 16_000, subtype="PCM_32")  # pcm_s32le: no browser plays it
    folder = tmp_path / "ready"
    assert studio.browser_ready(playable, folder) == playable
    converted = studio.browser_ready(odd, folder)
    assert folder in converted.parents and gr.processing_utils.audio_is_playable(str(converted))

    served = studio.get_served()
    served.copy("c" * 64, playable)  # the clip's first serve settles its playability

    def probed(path: str) -> bool:
        raise AssertionError(f"probed {path} again")

    monkeypatch.setattr(gr.processing_utils, "audio_is_playable", probed)
    copy = served.copy("c" * 64, playable)
    data = studio.ClipAudio(type="filepath").postprocess(str(copy))
    assert data.path == str(copy)
    with pytest.raises(AssertionError, match="probed"):  # anything else still gets Gradio's check
        studio.ClipAudio(type="filepath").postprocess(str(playable))


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("kind", ["media", "text", "long"])
def test_predictions_run_below_the_votes_priority_and_so_do_the_threads_they_start(studio, kind):  # noqa: F811
    here = os.getpriority(os.PRIO_PROCESS, 0)  # who=0: the calling thread on Linux

    def started_thread_nice() -> int:
        box: list[int] = []
        worker = threading.Thread(target=lambda: box.append(os.getpriority(os.PRIO_PROCESS, 0)))
        worker.start()
        worker.join()
        return box[0]

    expected = max(here, studio.LONG_JOB_NICE if kind == "long" else studio.PREDICT_NICE)
    assert studio.in_prediction_worker(os.getpriority, os.PRIO_PROCESS, 0, kind=kind) == expected
    assert studio.in_prediction_worker(started_thread_nice, kind=kind) == expected  # torch's, CTranslate2's teams too
    assert os.getpriority(os.PRIO_PROCESS, 0) == here  # the caller's own priority is untouched


def test_a_vote_that_keeps_the_widgets_sends_plain_values(studio):  # noqa: F811
    """Gradio rebuilds a component for every gr.update: a vote whose next clip shows the same widgets sends plain
    values, one that changes them (the first clip, the end of the queue) sends updates, and the screen stays right."""
    from tests.app_support import seed_tone

    widgets = ("audio", "image", "video", "text")
    for freq in (300, 420, 540):
        seed_tone(studio, freq)
    first = studio.next_item(name="plain-values")
    out, labeler = first[:4], first[-1]
    assert all(isinstance(o, dict) and o.get("__type__") == "update" for o in out)  # nothing was on screen
    visible = {w: o["visible"] for w, o in zip(widgets, out)}
    plain = 0
    while labeler["clip_id"]:
        shown = studio.vote(["sad"], False, "", labeler, labeler["clip_id"], None)
        out, labeler = shown[:4], shown[-1]
        updates = [isinstance(o, dict) for o in out]
        if any(updates):
            assert all(updates)
            visible = {w: o["visible"] for w, o in zip(widgets, out)}
            continue
        plain += 1
        kind, has_text = labeler["shown"]
        assert visible == {w: w == kind or (w == "text" and has_text) for w in widgets}  # what was on screen
        media = dict(zip(widgets, out))
        assert Path(media[kind]).is_file() and all(media[w] is None for w in widgets[:3] if w != kind)
    assert plain >= 2  # three tones in a row: the second and third keep the audio widget
    assert visible == {"audio": False, "image": False, "video": False, "text": True}  # "Nothing left to label"


def test_a_browser_that_missed_a_response_gets_every_widget_again(studio):  # noqa: F811
    from tests.app_support import seed_tone

    for freq in (660, 780, 900):
        seed_tone(studio, freq)
    first = studio.next_item(name="missed-a-response")
    missed = studio.vote(["sad"], False, "", first[-1], first[-1]["clip_id"], None)  # never reached the browser
    assert missed[-1]["clip_id"] and not isinstance(missed[0], dict)  # sent as plain values
    # the browser still shows the first clip and votes on it again (its clip id, the state's newer labeler)
    again = studio.vote(["sad"], False, "", missed[-1], first[-1]["clip_id"], None)
    assert all(isinstance(o, dict) and "visible" in o for o in again[:4])
