"""Predictor over the tiny model: every modality, any subset, timeline for long audio, batch == single."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backend.labels import LABELS
from backend.model import EmotionModel
from backend.predictor import Predictor, windows
from backend.settings import load_settings
from backend.types import SAMPLE_RATE, Sample


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path, tiny_backbones) -> Predictor:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    return Predictor(model, load_settings(cache=Path(tiny_backbones["cache"]), asr=True))


@pytest.fixture(scope="module")
def clip(ravdess_clip: Path) -> np.ndarray:
    audio, rate = sf.read(str(ravdess_clip), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


def _is_distribution(probs: dict[str, float]) -> bool:
    return list(probs) == list(LABELS) and abs(sum(probs.values()) - 1) < 1e-4 and min(probs.values()) >= 0


def test_audio_only(predictor: Predictor, clip: np.ndarray) -> None:
    p = predictor.predict(Sample(audio=clip))
    assert _is_distribution(p.probs)
    assert set(p.modalities) >= {"speech"}
    assert p.model_version == "tiny-test"
    assert p.transcript is not None  # tiny Whisper transcribes nonsense, but the text path ran
    assert p.timeline == []  # 3.5 s clip: no timeline
    assert p.duration == pytest.approx(len(clip) / SAMPLE_RATE)


def test_text_only_and_missing_modalities(predictor: Predictor) -> None:
    p = predictor.predict(Sample(text="I am so happy and grateful today!"))
    assert set(p.modalities) == {"text"}
    assert p.modalities["text"].weight == pytest.approx(1.0)
    assert p.probs == pytest.approx(p.modalities["text"].probs)  # alone, fusion is the identity
    assert any(w.emotion == "happy" for w in p.words)


def test_missing_modality_changes_nothing_for_the_others(predictor: Predictor, clip: np.ndarray) -> None:
    a = predictor.predict(Sample(audio=clip, text="what a lovely day"))
    b = predictor.predict(Sample(audio=clip, text="what a lovely day", frames=[np.zeros((64, 64, 3), np.uint8)]))
    assert "face" not in b.modalities and b.notes  # no face found: said so, face left out
    assert a.probs == pytest.approx(b.probs, abs=1e-6)


def test_long_audio_gets_timeline(predictor: Predictor, clip: np.ndarray) -> None:
    long = np.concatenate([clip] * 4)  # ~14 s
    p = predictor.predict(Sample(audio=long))
    assert len(p.timeline) >= 5
    assert p.timeline[0].start == 0 and p.timeline[-1].end == pytest.approx(len(long) / SAMPLE_RATE)
    assert all(_is_distribution(s.probs) for s in p.timeline)


def test_audio_longer_than_whisper_window(predictor: Predictor, clip: np.ndarray) -> None:
    long = np.tile(clip, 10)[: 35 * SAMPLE_RATE]
    p = predictor.predict(Sample(audio=long))
    assert _is_distribution(p.probs) and len(p.timeline) > 10


def test_face_crops_and_batch_equals_single(predictor: Predictor, shared_data: Path, clip: np.ndarray) -> None:
    faces = np.load(shared_data / "faces" / "fer2013_val.npz")["images"][:3]
    samples = [Sample(frames=[np.repeat(f[..., None], 3, axis=2)]) for f in faces] + [Sample(audio=clip, text="no")]
    batch = predictor.predict_batch(samples, faces_are_crops=True)
    assert [set(p.modalities) for p in batch[:3]] == [{"face"}] * 3
    single = predictor.predict_batch(samples[:1], faces_are_crops=True)[0]
    assert batch[0].probs == pytest.approx(single.probs, abs=1e-5)


def test_windows_cover_the_clip() -> None:
    assert windows(100, 4.0, 2.0) == [(0, 100)]
    w = windows(int(9.5 * SAMPLE_RATE), 4.0, 2.0)
    assert w[0][0] == 0 and w[-1][1] == int(9.5 * SAMPLE_RATE)
    assert all(b - a == 4 * SAMPLE_RATE for a, b in w)
