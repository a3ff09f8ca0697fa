"""Unlabelled per-speaker adaptation and the "not sure" flag, through the predictor over the tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from backend.adapt import MIN_CLIPS, SHRINK, SpeakerStats, group_stats
from backend.model import EmotionModel
from backend.predictor import Predictor, not_sure
from backend.settings import load_settings
from backend.types import Sample


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path, tiny_backbones) -> Predictor:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    torch.manual_seed(1)
    model.heads.speech_head.reference_mean.normal_()  # a trained model's mean; the tiny folder ships zeros
    return Predictor(model, load_settings(cache=Path(tiny_backbones["cache"]), asr=False))


@pytest.fixture(scope="module")
def clips(shared_data: Path) -> list[np.ndarray]:
    files = sorted((shared_data / "ravdess-speech-16k" / "Actor_19").glob("*.flac"))[:5]
    return [sf.read(str(f), dtype="float32")[0] for f in files]


def test_speaker_stats_wait_for_enough_clips_and_shrink():
    ref = np.ones(4)
    stats = SpeakerStats()
    for _ in range(MIN_CLIPS - 1):
        stats.add(np.zeros(4))
    assert stats.shift(ref) is None
    stats.add(np.zeros(4))
    assert stats.shift(ref) == pytest.approx(np.full(4, MIN_CLIPS / (MIN_CLIPS + SHRINK)))
    assert SpeakerStats().shift(np.zeros(4)) is None  # a model without a reference mean adapts nothing
    stats.add(np.full(4, np.nan))  # a broken embedding is not counted
    assert stats.count == MIN_CLIPS and SpeakerStats.from_dict(stats.to_dict()) == stats
    assert {g: s.count for g, s in group_stats(np.zeros((3, 4)), ["a", None, "a"]).items()} == {"a": 2}


def test_predictor_adapts_a_speaker_only_once_it_has_heard_enough(predictor: Predictor, clips):
    plain = [p.modalities["speech"].probs for p in predictor.predict_batch([Sample(audio=c) for c in clips])]
    stats = SpeakerStats()
    first = predictor.predict_batch([Sample(audio=clips[0])], speakers=[stats])[0]
    assert stats.count == 1 and first.modalities["speech"].probs == pytest.approx(plain[0], abs=1e-5)
    predictor.predict_batch([Sample(audio=c) for c in clips[1:MIN_CLIPS]], speakers=[stats] * (MIN_CLIPS - 1))
    assert stats.count == MIN_CLIPS
    frozen = dataclasses.replace(stats)
    later = predictor.predict_batch([Sample(audio=clips[-1])], speakers=[frozen], update_speakers=False)[0]
    assert frozen.count == MIN_CLIPS  # update_speakers=False leaves the statistics as given
    moved = max(abs(later.modalities["speech"].probs[k] - plain[-1][k]) for k in plain[-1])
    assert moved > 1e-4  # the speaker's statistics now change how their voice is read
    other = predictor.predict_batch([Sample(audio=clips[-1]), Sample(text="hello")], speakers=[None, frozen])
    assert other[0].modalities["speech"].probs == pytest.approx(plain[-1], abs=1e-5)  # other samples untouched


def test_not_sure_names_the_two_likeliest_labels():
    probs = np.array([0.05, 0.1, 0.05, 0.38, 0.35, 0.02, 0.05])
    assert not_sure(probs, 0.5) == (True, ["angry", "fearful"])
    assert not_sure(probs, 0.3) == (False, [])
    assert not_sure(probs, 0.0) == (False, [])


def test_uncertain_flag_reaches_the_prediction(predictor: Predictor, clips):
    config = predictor.model.config
    before = config.uncertain_threshold
    try:
        config.uncertain_threshold = 0.99  # a random tiny model is never that sure
        p = predictor.predict(Sample(audio=clips[0]))
        assert p.uncertain and len(p.alternatives) == 2 and p.alternatives[0] == p.label
        assert p.to_dict()["uncertain"] is True
        config.uncertain_threshold = 0.0
        assert not predictor.predict(Sample(audio=clips[0])).uncertain
    finally:
        config.uncertain_threshold = before
