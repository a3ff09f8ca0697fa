"""The shipped default model (models/default) on small real dev slices: it must clearly beat chance.

Integration tests: real wheels, real data, the real checkpoint; ASR off so speech is judged on its own.
Chance for 7 classes is 0.14 (0.27 for always-'neutral' on RAVDESS, where calm counts as neutral).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.model import EmotionModel
from backend.predictor import Predictor
from backend.settings import DEFAULT_MODEL_DIR, load_settings
from train import corpora
from train.evaluate import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    settings = load_settings(asr=False)
    return Predictor(EmotionModel.from_pretrained(DEFAULT_MODEL_DIR, cache=settings.cache), settings)


def test_folder_is_small_and_complete() -> None:
    files = {p.name: p.stat().st_size for p in Path(DEFAULT_MODEL_DIR).iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert sum(files.values()) <= 30 * 2**20
    card = (Path(DEFAULT_MODEL_DIR) / "README.md").read_text()
    assert "model-index" in card and "cc-by-nc-sa-4.0" in card and "NonCommercial" in card


def test_speech_beats_chance_on_two_dev_actors(predictor: Predictor, shared_data: Path) -> None:
    examples = corpora.ravdess(shared_data / "ravdess-speech-16k", actors=[17, 18])
    report = evaluate(examples, predictor, progress=False)
    assert report["n"] == 120
    assert report["accuracy"] >= 0.55, report["accuracy"]
    assert report["uar"] >= 0.5


def test_text_beats_chance_on_goemotions_dev(predictor: Predictor, shared_data: Path) -> None:
    examples = corpora.goemotions(shared_data / "text" / "goemotions-ekman" / "dev.tsv", single_label_only=True)
    report = evaluate(examples[:400], predictor, progress=False)
    assert report["accuracy"] >= 0.5 and report["macro_f1"] >= 0.35, report


def test_face_beats_chance_on_fer_val(predictor: Predictor, shared_data: Path) -> None:
    examples = corpora.fer2013(shared_data / "faces" / "fer2013_val.npz")[:400]
    report = evaluate(examples, predictor, progress=False)
    assert report["accuracy"] >= 0.5, report["accuracy"]
