"""The issue's case through the real default model: an angry RAVDESS clip, a happy FER2013 face and the typed
words "I am so happy to see you!". Two confident agreeing modalities must count, and the weights the table
shows must be the ones fusion used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from backend.labels import LABEL_TO_ID, LABELS, MODALITIES
from backend.model import EmotionModel
from backend.predictor import Predictor
from backend.present import breakdown_table, percent
from backend.settings import DEFAULT_MODEL_DIR, load_settings
from backend.types import Sample
from train import corpora

pytestmark = pytest.mark.slow

TEXT = "I am so happy to see you!"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    settings = load_settings(asr=False)
    return Predictor(EmotionModel.from_pretrained(DEFAULT_MODEL_DIR, cache=settings.cache), settings)


def first_read_as(predictor: Predictor, samples: list[Sample], modality: str, label: str, **kw) -> int:
    """Index of the first sample the branch reads as `label` with at least 80% (a clear single-modality case)."""
    for i, p in enumerate(predictor.predict_batch(samples, **kw)):
        if p.modalities[modality].label == label and p.modalities[modality].probs[label] >= 0.8:
            return i
    raise AssertionError(f"no {modality} sample read as {label} >= 80%")


@pytest.fixture(scope="module")
def angry_clip(predictor: Predictor, shared_data: Path) -> np.ndarray:
    clips = [
        e.path for e in corpora.ravdess(shared_data / "ravdess-speech-16k", actors=[19, 20]) if e.label_name == "angry"
    ]
    audio = [sf.read(str(p), dtype="float32")[0] for p in clips[:8]]
    return audio[first_read_as(predictor, [Sample(audio=a) for a in audio], "speech", "angry")]


@pytest.fixture(scope="module")
def happy_face(predictor: Predictor, shared_data: Path) -> np.ndarray:
    images, labels = corpora.fer2013_arrays(shared_data / "faces" / "fer2013_val.npz")
    faces = [np.repeat(img[..., None], 3, axis=2) for img in images[labels == LABEL_TO_ID["happy"]][:16]]
    samples = [Sample(frames=[f]) for f in faces]
    return faces[first_read_as(predictor, samples, "face", "happy", faces_are_crops=True)]


def test_angry_voice_does_not_outvote_happy_face_and_words(predictor, angry_clip, happy_face) -> None:
    sample = Sample(audio=angry_clip, text=TEXT, frames=[happy_face])
    p = predictor.predict_batch([sample], faces_are_crops=True)[0]
    said = {m: r.label for m, r in p.modalities.items()}
    assert said == {"speech": "angry", "text": "happy", "face": "happy"}, said
    weights = {m: r.weight for m, r in p.modalities.items()}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert max(weights.values()) < 0.6 and min(weights.values()) > 0.15, weights  # not 97/1/1
    assert p.label == "happy", p.probs


def test_the_table_shows_the_weights_fusion_used(predictor, angry_clip, happy_face) -> None:
    p = predictor.predict_batch([Sample(audio=angry_clip, text=TEXT, frames=[happy_face])], faces_are_crops=True)[0]
    gate = predictor.model.heads.gate
    probs = torch.tensor([[[p.modalities[m].probs[k] for k in LABELS] for m in MODALITIES]])
    with torch.no_grad():
        fused, weights = gate.fuse(probs, torch.ones(1, len(MODALITIES), dtype=torch.bool))
    assert np.allclose(fused[0].numpy(), [p.probs[k] for k in LABELS], atol=1e-5)
    assert np.allclose(weights[0].numpy(), [p.modalities[m].weight for m in MODALITIES], atol=1e-5)
    # the fused log-probabilities are the weighted sum the weights describe (up to one scale and a constant)
    log_fused = np.log([p.probs[k] for k in LABELS])
    mix = sum(p.modalities[m].weight * np.log([p.modalities[m].probs[k] for k in LABELS]) for m in MODALITIES)
    scale = np.polyfit(mix - mix.mean(), log_fused - log_fused.mean(), 1)[0]
    assert scale > 0 and np.allclose(scale * (mix - mix.mean()), log_fused - log_fused.mean(), atol=1e-3)
    table = breakdown_table(p)
    assert table["weight"].tolist()[:3] == [percent(p.modalities[m].weight) for m in MODALITIES]


def test_neutral_transcript_keeps_the_voice(predictor, angry_clip) -> None:
    """RAVDESS's own sentence as the words (lexically neutral): the fused reading stays angry."""
    alone = predictor.predict(Sample(audio=angry_clip))
    both = predictor.predict(Sample(audio=angry_clip, text="Kids are talking by the door."))
    assert alone.label == both.label == "angry"
    assert both.probs["angry"] > 2 * both.probs["neutral"]
    assert both.modalities["text"].weight < both.modalities["speech"].weight
