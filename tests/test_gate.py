"""The promotion gate: the decision rule on given figures, the fixed dev subsets, and a poisoned batch (one
annotator labels everything "happy") that trains a worse model and is rejected, recorded, never published."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.labels import LABEL_TO_ID, LABELS
from backend.model import EmotionModel
from backend.registry import registry_dir
from backend.settings import load_settings
from labeling.store import Store
from tests.retrain_helpers import add_prediction, add_speech, add_text, ravdess_examples, small_config, text_examples
from train.corrections import load_corrections, split
from train.gate import CORRECTIONS, GateConfig, decide, evaluate_corrections, load_dev_sets
from train.gate import main as gate_main
from train.retrain import run


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(True)


def figures(corrections: float | None, **dev: float) -> dict:
    out = {name: {"n": 100, "accuracy": value, "macro_f1": value} for name, value in dev.items()}
    out[CORRECTIONS] = None if corrections is None else {"n": 20, "accuracy": corrections, "macro_f1": corrections}
    return out


def test_promotes_a_challenger_better_on_corrections_and_within_tolerance() -> None:
    cfg = GateConfig(tolerance=0.02)
    decision = decide(figures(0.50, speech=0.60, text=0.50), figures(0.60, speech=0.58, text=0.55), cfg)
    assert decision["promote"] and "better on held-out corrections" in decision["reason"]
    assert {(c["set"], c["metric"]) for c in decision["checks"]} == {
        ("speech", "accuracy"),
        ("speech", "macro_f1"),
        ("text", "accuracy"),
        ("text", "macro_f1"),
    }


def test_rejects_a_drop_beyond_tolerance_on_any_dev_set() -> None:
    cfg = GateConfig(tolerance=0.02)
    decision = decide(figures(0.50, speech=0.60, text=0.50), figures(0.90, speech=0.579, text=0.70), cfg)
    assert not decision["promote"]
    assert "worse than the champion by more than 0.02 on speech accuracy 0.579 vs 0.600" in decision["reason"]
    assert [c["ok"] for c in decision["checks"] if c["set"] == "speech"] == [False, False]


def test_rejects_a_challenger_that_is_not_better_on_corrections() -> None:
    cfg = GateConfig(tolerance=0.02)
    same = decide(figures(0.50, speech=0.6), figures(0.50, speech=0.7), cfg)
    assert not same["promote"] and "not better on held-out corrections" in same["reason"]
    gain = decide(figures(0.50, speech=0.6), figures(0.52, speech=0.6), GateConfig(min_gain=0.05))
    assert not gain["promote"]
    none = decide(figures(None, speech=0.6), figures(None, speech=0.7), cfg)
    assert not none["promote"] and "no trusted held-out corrections" in none["reason"]


def test_dev_sets_are_fixed_subsets(shared_data: Path) -> None:
    cfg = GateConfig(data=shared_data, speech_size=6, text_size=20, face_size=-1, seed=3)
    a, b = load_dev_sets(cfg), load_dev_sets(cfg)
    assert a.text[0] == b.text[0] and np.array_equal(a.speech[1], b.speech[1]) and a.face is None
    assert len(a.speech[0]) == 6 and len(a.text[0]) == 20 and a.speech_split == "actors 17,18,19,20"
    other = load_dev_sets(GateConfig(data=shared_data, speech_size=-1, text_size=20, face_size=-1, seed=4))
    assert other.text[0] != a.text[0] and other.speech is None


def test_corrections_are_scored_through_the_predictor(tmp_path, shared_data, tiny_model_dir, tiny_backbones) -> None:
    with Store.open(tmp_path / "s.db") as store:
        for ex in text_examples(shared_data, 6):
            clip = add_text(store, ex.text)
            store.vote(clip, "a", LABELS[ex.label])
            store.vote(clip, "b", LABELS[ex.label])
        _, held = split(load_corrections(store), 1.0)
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    report = evaluate_corrections(model, held)
    assert report["n"] == 6 and report["modality"] == "text" and 0.0 <= report["accuracy"] <= 1.0


def poisoned_store(db: Path, shared: Path) -> dict[str, int]:
    """Real RAVDESS clips and GoEmotions texts, none truly happy. Two honest annotators label a third of them;
    'mallory' labels every clip 'happy', so two thirds carry only the poison."""
    happy = LABEL_TO_ID["happy"]
    speech = [e for e in ravdess_examples(shared, [1, 2, 3, 5], 12, seed=1) if e.label != happy][:36]
    texts = [e for e in text_examples(shared, 40, seed=1) if e.label != happy][:18]
    rng = np.random.default_rng(0)
    truth = {}
    with Store.open(db, k=3, gold_rate=0.0) as store:
        for i, ex in enumerate(speech + texts):
            clip = add_speech(store, ex) if ex.modality == "speech" else add_text(store, ex.text)
            truth[clip] = ex.label
            add_prediction(store, clip, LABELS[int(rng.integers(len(LABELS)))])
            if i % 3 == 0:
                store.vote(clip, "alice", LABELS[ex.label])
                store.vote(clip, "bob", LABELS[ex.label])
            store.vote(clip, "mallory", "happy")
    return truth


def test_a_poisoned_batch_is_rejected_recorded_and_not_published(
    tmp_path, monkeypatch, shared_data, tiny_model_dir, tiny_backbones
):
    truth = poisoned_store(tmp_path / "studio.db", shared_data)
    config = small_config(
        tmp_path,
        tmp_path / "studio.db",
        tiny_model_dir,
        tiny_backbones["cache"],
        shared_data,
        epochs=6,
        lr=3e-3,
        holdout=0.5,
        tolerance=0.02,
        speech_dev_size=28,
        text_dev_size=100,
    )
    decision = run(config)["decision"]
    # the challenger did learn the poison: it calls most of the held-out clips (none of them happy) happy
    challenger = EmotionModel.from_pretrained(Path(config.out) / "challenger", cache=Path(tiny_backbones["cache"]))
    with Store.open(config.db) as store:
        _, held = split(load_corrections(store), config.holdout)
    assert held and all(truth[it.clip_id] == it.label != LABEL_TO_ID["happy"] for it in held)  # judged on honest labels
    predictions = [p.label for p in evaluate_predictions(challenger, held)]
    assert predictions.count("happy") / len(predictions) >= 0.6
    assert not decision["promote"]
    assert "not better on held-out corrections" in decision["reason"]
    assert decision["challenger"][CORRECTIONS]["accuracy"] <= decision["champion"][CORRECTIONS]["accuracy"]
    with Store.open(config.db) as store:
        (row,) = store.training_runs()
        assert row["decision"] == "rejected" and row["reason"] == decision["reason"]
        assert row["metrics"]["challenger"][CORRECTIONS] == decision["challenger"][CORRECTIONS]
        assert store.model_versions() == []
    settings = load_settings(data_dir=tmp_path / "data")
    assert not (registry_dir(settings) / "current.json").exists() and not (registry_dir(settings) / "v1").exists()
    assert json.loads((Path(config.out) / "decision.json").read_text())["published"] is None
    # the gate's CLI, on the same store and folders, reaches the same decision and records it
    monkeypatch.setenv("EMO_CACHE", tiny_backbones["cache"])
    sizes = ["--speech-dev-size", "28", "--text-dev-size", "100", "--face-dev-size", "40", "--holdout", "0.5"]
    again = gate_main(
        [
            "--db",
            config.db,
            "--champion",
            str(tiny_model_dir),
            "--challenger",
            str(Path(config.out) / "challenger"),
            "--data",
            str(shared_data),
            *sizes,
            "--record",
        ]
    )
    assert again["reason"] == decision["reason"] and again["challenger"] == decision["challenger"]
    with Store.open(config.db) as store:
        assert [r["decision"] for r in store.training_runs()] == ["rejected", "rejected"]


def evaluate_predictions(model: EmotionModel, items: list) -> list:
    from backend.predictor import Predictor

    return Predictor(model, load_settings(asr=False)).predict_batch([it.sample() for it in items])
