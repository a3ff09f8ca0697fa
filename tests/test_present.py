"""backend.present: Prediction -> the values the UI widgets show (pure functions, no model, no Gradio)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend import present
from backend.labels import LABELS
from backend.types import Face, ModalityResult, Prediction, Segment, WordTag, probs_dict


def one_hot(label: str, p: float = 0.7) -> dict[str, float]:
    rest = (1.0 - p) / (len(LABELS) - 1)
    return {name: (p if name == label else rest) for name in LABELS}


def make_prediction(**overrides) -> Prediction:
    values = {
        "probs": one_hot("happy", 0.6),
        "modalities": {
            "speech": ModalityResult(one_hot("happy", 0.5), 0.7),
            "text": ModalityResult(one_hot("sad", 0.8), 0.3),
        },
        "model_version": "v3",
        "duration": 4.0,
        "latency_ms": 1234.0,
    }
    values.update(overrides)
    return Prediction(**values)


def test_label_confidences_are_sorted_and_complete():
    probs = probs_dict(np.linspace(0.05, 0.2, len(LABELS)))
    out = present.label_confidences(make_prediction(probs=probs))
    assert list(out.values()) == sorted(out.values(), reverse=True)
    assert set(out) == set(LABELS)
    assert next(iter(out)) == LABELS[-1]


def test_breakdown_says_which_modality_said_what_with_weight():
    table = present.breakdown_table(make_prediction())
    assert list(table.columns) == present.BREAKDOWN_COLUMNS
    assert table["says"].tolist() == ["happy", "sad", "happy"]
    assert table["weight"].tolist() == ["70%", "30%", "100%"]
    assert table["confidence"].tolist() == ["50%", "80%", "60%"]
    assert table["modality"].iloc[0].startswith("voice")


def test_highlighted_words_keep_the_text_and_mark_emotion_words():
    text = "I'm so happy, but   scared!"
    words = [
        WordTag("I'm", None),
        WordTag("so", None),
        WordTag("happy", "happy", 1.0),
        WordTag("but", None),
        WordTag("scared", "fearful", 1.0, expanded=True),
    ]
    spans = present.highlighted_words(words, text)
    assert "".join(piece for piece, _ in spans) == text
    assert ("happy", "happy") in spans
    assert ("scared", "fearful") in spans
    plain = [piece for piece, emotion in spans if emotion is None]
    assert plain == ["I'm so ", ", but   ", "!"]  # neighbours merged, spacing kept


def test_highlighted_words_survive_a_word_missing_from_the_text():
    spans = present.highlighted_words([WordTag("joy", "happy")], "nothing here")
    assert ("joy", "happy") in spans
    assert present.highlighted_words([WordTag("a", None)], None) == [("a ", None)]


def test_draw_faces_draws_coloured_box_and_keeps_the_input():
    frame = np.full((120, 160, 3), 255, dtype=np.uint8)
    face = Face(box=(40, 40, 50, 50), frame_index=0, probs=one_hot("angry", 0.9))
    out = present.draw_faces(frame, [face])
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == 255).all(), "the input frame must not be modified"
    red = np.array([0xEF, 0x44, 0x44])
    left_edge = out[60, 40]
    assert np.abs(left_edge.astype(int) - red).max() <= 1, left_edge
    assert (out[65, 65] == 255).all(), "the inside of the box stays untouched"


def test_face_image_picks_the_frame_with_most_faces():
    frames = [np.zeros((60, 60, 3), np.uint8), np.zeros((60, 60, 3), np.uint8)]
    faces = [
        Face((0, 0, 20, 20), 1, one_hot("sad")),
        Face((30, 30, 20, 20), 1, one_hot("sad")),
        Face((5, 5, 20, 20), 0, one_hot("happy")),
    ]
    out = present.face_image(frames, faces)
    assert out is not None and out.any()
    assert not frames[1].any(), "frames are not drawn on in place"
    blue = np.array([0x3B, 0x82, 0xF6])
    assert np.abs(out[10, 0].astype(int) - blue).max() <= 1  # frame 1's sad box, not frame 0's happy one
    assert present.face_image(None, []) is None
    assert present.face_image(frames, []) is frames[0]


def test_timeline_frame_is_long_format_over_all_labels():
    segments = [Segment(0.0, 4.0, one_hot("sad")), Segment(2.0, 6.0, one_hot("angry"))]
    frame = present.timeline_frame(make_prediction(timeline=segments))
    assert list(frame.columns) == present.TIMELINE_COLUMNS
    assert len(frame) == 2 * len(LABELS)
    assert sorted(frame["time"].unique()) == [2.0, 4.0]
    at4 = frame[frame["time"] == 4.0].set_index("emotion")["probability"]
    assert at4.idxmax() == "angry"
    assert present.timeline_frame(make_prediction()).empty


def test_summary_names_label_version_device_and_notes():
    text = present.summary_markdown(make_prediction(notes=["No face found."]), device="cuda:0")
    assert "**happy**" in text and "60%" in text
    assert "`v3`" in text and "cuda:0" in text and "speech, text" in text
    assert text.endswith("- No face found.")


def test_receipt_says_what_was_kept():
    base = {
        "clip_id": "ab" * 32,
        "annotator_id": "session:1",
        "labels": ["sad", "angry"],
        "unsure": True,
        "note": None,
        "model_version": "v3",
        "vote_id": 4,
        "kept_media": False,
    }
    text = present.receipt_markdown(base)
    assert "**sad** + **angry**" in text and "unsure" in text and "no media" in text and "`v3`" in text
    kept = present.receipt_markdown(base | {"kept_media": True, "vote_id": None})
    assert "media itself" in kept and "'unsure'" in kept


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, "Nothing was stored for you, so nothing was deleted."),
        ({"clips": 1, "files": 0, "votes": 2}, "Deleted 1 clip and 2 votes."),
        ({"votes": 1, "predictions": 1, "files": 1}, "Deleted 1 vote, 1 prediction and 1 media file."),
    ],
)
def test_deletion_markdown(counts, expected):
    assert present.deletion_markdown(counts) == expected


def test_progress_and_context():
    progress = {"annotator_id": "name:alice", "votes": 3, "gold_seen": 2, "gold_accuracy": 0.5, "remaining": 7}
    text = present.progress_markdown(progress)
    assert text.startswith("**alice**") and "3 vote(s)" in text and "50%" in text and "7 clip(s)" in text
    context = present.clip_context_markdown(
        {"model_version": "v1", "top_label": "sad"},
        [{"labels": ["sad"]}, {"labels": ["sad", "angry"]}],
    )
    assert "**sad**" in context and "sad x2" in context and "angry x1" in context


def test_model_tab_tables():
    stats = {"clips": 3, "votes": 5, "vote_labels": {"happy": 4, "sad": 1}, "annotators_by_kind": {"crowd": 2}}
    dist = present.label_distribution(stats)
    assert dist["emotion"].tolist() == list(LABELS)
    assert dist.set_index("emotion")["votes"]["happy"] == 4
    counts = present.counts_table(stats)
    assert counts.set_index("what")["count"].to_dict() == {"clips": 3, "votes": 5}
    runs = present.runs_table([{"started": "2026-11-25T10:00:00+00:00", "decision": "rejected", "reason": "worse"}])
    assert runs["decision"].tolist() == ["rejected"] and runs["started"].tolist() == ["2026-11-25T10:00:00"]
    text = present.agreement_markdown({"alpha": 0.41, "fleiss_kappa": None, "per_class": {"sad": {"alpha": 0.2}}})
    assert "0.410" in text and "| sad | 0.200 | - | 0 |" in text


def test_model_info_reads_card_summary_and_confusion(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# Card\n\nBody text.\n")
    summary = {"speech": {"dev": {"accuracy": 0.61234, "uar": 0.5}}, "face": {"dev": {"macro_f1": 0.4}}}
    (tmp_path / "training_summary.json").write_text(json.dumps(summary))
    (tmp_path / "confusion_speech.png").write_bytes(b"png")
    info = present.model_info(tmp_path, "v2")
    assert info.card.startswith("# Card") and "license" not in info.card
    assert info.metrics.values.tolist() == [
        ["speech", "accuracy", 0.6123],
        ["speech", "uar", 0.5],
        ["face", "macro_f1", 0.4],
    ]
    assert info.confusion == tmp_path / "confusion_speech.png"
    empty = present.model_info(None, "v2")
    assert empty.version == "v2" and empty.card == "" and empty.metrics.empty and empty.confusion is None


def test_summary_says_not_sure_with_the_two_likeliest_labels():
    from backend.present import summary_markdown
    from backend.types import ModalityResult, Prediction, probs_dict

    probs = probs_dict([0.05, 0.1, 0.05, 0.38, 0.35, 0.02, 0.05])
    sure = Prediction(probs=probs, modalities={"speech": ModalityResult(probs, 1.0)}, model_version="v2")
    unsure = Prediction(**{**sure.__dict__, "uncertain": True, "alternatives": ["angry", "fearful"]})
    assert "Not sure" not in summary_markdown(sure) and summary_markdown(sure).startswith("**angry**")
    assert summary_markdown(unsure).startswith("**Not sure: angry or fearful?**")
