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
from labeling.aggregate import aggregate_labels
from labeling.store import Store
from tests.retrain_helpers import add_prediction, add_speech, add_text, ravdess_examples, small_config, text_examples
from train.corrections import load_corrections, split
from train.gate import CORRECTIONS, GateConfig, decide, evaluate_corrections, headline, load_dev_sets
from train.gate import main as gate_main
from train.retrain import run


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(True)


def answers(n: int, right: int, seed: int = 0, y: np.ndarray | None = None) -> dict:
    """Figures of a set of n examples of which the first `right` are answered correctly (the rest: off by one)."""
    y = np.arange(n) % 7 if y is None else y
    pred = np.where(np.arange(n) < right, y, (y + 1) % 7)
    return headline(y, pred, "speech", "test")


def figures(corrections: tuple[int, int] | None, **dev: tuple[int, int]) -> dict:
    """(n, right) per set; corrections None = no held-out clips."""
    out = {name: answers(*nr) for name, nr in dev.items()}
    out[CORRECTIONS] = None if corrections is None else answers(*corrections)
    return out


def test_promotes_a_significant_gain_within_the_margins() -> None:
    cfg = GateConfig(min_n=30, n_boot=1000)
    champion = figures((60, 30), speech=(240, 180), text=(1000, 600))
    challenger = figures((60, 48), speech=(240, 178), text=(1000, 605))
    decision = decide(champion, challenger, cfg)
    assert decision["promote"], decision["reason"]
    sup = decision["superiority"]
    assert sup["n"] == 60 and sup["delta"] == pytest.approx(0.3) and sup["ci_low"] > 0.15
    assert sup["mcnemar"] == {
        "b": 0,
        "c": 18,
        "p_one_sided": pytest.approx(2**-18),
        "p_two_sided": pytest.approx(2**-17),
    }
    assert {(c["set"], c["metric"]) for c in decision["checks"]} == {
        ("speech", "accuracy"),
        ("speech", "macro_f1"),
        ("text", "accuracy"),
        ("text", "macro_f1"),
    }
    speech = next(c for c in decision["checks"] if c["set"] == "speech" and c["metric"] == "accuracy")
    assert speech["margin"] == pytest.approx(0.5 / np.sqrt(240)) and speech["ok"] and speech["ci_level"] == 1 - 0.05 / 4
    assert "answers" not in decision["challenger"]["speech"] and "Holm" in decision["test"]


def test_a_small_gain_on_few_clips_is_not_enough() -> None:
    # one clip more of 20 right: the old rule promoted this; the paired test cannot tell it from chance
    decision = decide(figures((20, 10), speech=(240, 180)), figures((20, 11), speech=(240, 180)), GateConfig())
    assert not decision["promote"] and "not better on held-out corrections beyond chance" in decision["reason"]
    assert decision["superiority"]["ci_low"] <= 0
    # a large gain on too few clips: significant but below the minimum n
    few = decide(figures((12, 0), speech=(240, 180)), figures((12, 12), speech=(240, 180)), GateConfig(min_n=30))
    assert few["superiority"]["significant"] and not few["promote"] and "too few held-out corrections" in few["reason"]
    none = decide(figures(None, speech=(240, 180)), figures(None, speech=(240, 200)), GateConfig())
    assert not none["promote"] and "no trusted held-out corrections" in none["reason"]


def test_a_drop_beyond_the_margin_on_any_dev_set_blocks_promotion() -> None:
    cfg = GateConfig(n_boot=1000)
    champion = figures((60, 30), speech=(240, 180), text=(1000, 600))
    challenger = figures((60, 50), speech=(240, 160), text=(1000, 600))  # -0.083 on speech, margin 0.032
    decision = decide(champion, challenger, cfg)
    assert not decision["promote"] and "not shown non-inferior on speech accuracy 0.667 vs 0.750" in decision["reason"]
    assert [c["ok"] for c in decision["checks"] if c["set"] == "text"] == [True, True]
    fixed = decide(champion, challenger, GateConfig(n_boot=1000, tolerance=1.0))  # a fixed margin overrides
    assert fixed["promote"] and all(c["margin"] == 1.0 for c in fixed["checks"])


def test_mcnemar_rule() -> None:
    cfg = GateConfig(test="mcnemar", min_n=10)
    ok = decide(figures((20, 5), speech=(240, 180)), figures((20, 15), speech=(240, 180)), cfg)  # b=0, c=10
    assert ok["promote"] and ok["superiority"]["mcnemar"]["p_one_sided"] == pytest.approx(2**-10)
    close = decide(figures((20, 5), speech=(240, 180)), figures((20, 8), speech=(240, 180)), cfg)  # p = 1/8
    assert not close["promote"] and "McNemar" in close["test"]


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
    # a clip or two either way on 9 held-out clips is no evidence: the paired test does not call it better
    assert not decision["superiority"]["significant"] and decision["superiority"]["ci_low"] <= 0
    assert "bootstrap" in decision["test"]
    with Store.open(config.db) as store:
        (row,) = store.training_runs()
        assert row["decision"] == "rejected" and row["reason"] == decision["reason"]
        assert row["metrics"]["challenger"][CORRECTIONS] == decision["challenger"][CORRECTIONS]
        assert row["metrics"]["superiority"]["ci_low"] == decision["superiority"]["ci_low"]
        assert row["metrics"]["test"] == decision["test"] and row["metrics"]["rotation"] == 0
        assert store.model_versions() == []
    settings = load_settings(data_dir=tmp_path / "data")
    assert not (registry_dir(settings) / "current.json").exists() and not (registry_dir(settings) / "v1").exists()
    assert json.loads((Path(config.out) / "decision.json").read_text())["published"] is None
    # the gate's CLI, on the same store and folders, reaches the same decision and records it
    monkeypatch.setenv("EMO_CACHE", tiny_backbones["cache"])
    sizes = ["--speech-dev-size", "28", "--text-dev-size", "100", "--face-dev-size", "40", "--holdout", "0.5"]
    sizes += ["--tolerance", "0.02", "--min-holdout", "1"]  # as small_config
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


def test_a_crowd_whose_labels_fail_the_gold_audit_promotes_nothing() -> None:
    """Poisoned held-out labels can make a poisoned challenger look better: the crowd's labels against gold are
    checked first, and a challenger that passes every model test is still refused below the floor."""
    cfg = GateConfig(min_n=30, n_boot=1000)
    champion = figures((60, 30), speech=(240, 180))
    challenger = figures((60, 48), speech=(240, 180))
    poisoned = decide(champion, challenger, cfg, {"n": 40, "agree": 24, "accuracy": 0.6})
    assert not poisoned["promote"] and "match gold on only 24 of 40 gold clips (60% < 90%)" in poisoned["reason"]
    assert poisoned["audit"] == {"n": 40, "agree": 24, "accuracy": 0.6, "min": 0.9, "min_n": 10}
    honest = decide(champion, challenger, cfg, {"n": 40, "agree": 38, "accuracy": 0.95})
    assert honest["promote"] and "crowd labels match gold on 38/40" in honest["reason"]
    few = decide(champion, challenger, cfg, {"n": 6, "agree": 3, "accuracy": 0.5})  # too few gold clips to judge
    assert few["promote"]
    assert decide(champion, challenger, cfg)["audit"]["n"] == 0  # no audit given: recorded as not judged
    with pytest.raises(ValueError, match="between 0 and 1"):
        GateConfig(audit_min=90)  # a percentage where a share belongs


def test_the_audit_interval_is_wilsons() -> None:
    """Known values of the Wilson score interval (90%): 38 of 40, all of 5, none of 5."""
    from labeling.aggregate import wilson_interval

    assert wilson_interval(38, 40) == pytest.approx((0.8597, 0.9833), abs=1e-4)
    assert wilson_interval(5, 5) == pytest.approx((0.6488, 1.0), abs=1e-4)
    assert wilson_interval(0, 5) == pytest.approx((0.0, 0.3512), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_gold_audit_reads_the_crowds_label_not_the_gold_mark(tmp_path) -> None:
    """On a real store: the crowd's label of each voted gold clip, compared with its gold label."""
    from labeling.aggregate import gold_audit

    with Store.open(tmp_path / "studio.db", tmp_path / "media", k=3, gold_rate=0.0) as store:
        for i in range(12):
            clip = store.add_clip(f"clip {i}".encode(), ext=".wav", modalities=["speech"], consent=True)
            store.add_gold(clip, "sad")
            wrong = i < 5  # a coordinated pair outvotes the honest annotator on 5 gold clips
            for who in ("name:a", "name:b"):
                store.vote(clip, who, ["happy" if wrong else "sad"])
            store.vote(clip, "name:honest", ["sad"])
        unvoted = store.add_clip(b"clip x", ext=".wav", modalities=["speech"], consent=True)
        store.add_gold(unvoted, "angry")
        labels = aggregate_labels(store)
    audit = gold_audit(labels)
    assert {k: audit[k] for k in ("n", "agree")} == {"n": 12, "agree": 7} and audit["accuracy"] == pytest.approx(7 / 12)
    assert 0.35 < audit["ci_low"] < 7 / 12 < audit["ci_high"] < 0.8  # Wilson 90%: 12 clips say little
    assert all(c.label == "sad" for c in labels if c.n_votes)  # training itself uses the gold mark
