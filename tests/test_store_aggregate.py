"""Per-clip aggregation: majority, soft label, reliability-weighted label, spammer detection."""

from __future__ import annotations

import pytest

from backend.labels import LABELS
from labeling import Store, aggregate_labels
from labeling.aggregate import aggregate_clip, reliability, update_reliability, vote_weight


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0, synchronous="NORMAL")
    yield s
    s.close()


def add(store: Store, name: str) -> str:
    return store.add_clip(name.encode(), modalities=["speech"], consent=True)


def by_clip(store: Store, **kwargs) -> dict:
    return {item.clip_id: item for item in aggregate_labels(store, **kwargs)}


def test_majority_and_soft_distribution(store):
    clip = add(store, "c")
    store.vote(clip, "a", ["sad"])
    store.vote(clip, "b", ["sad"])
    store.vote(clip, "c", ["angry"])
    item = by_clip(store)[clip]
    assert item.majority == "sad" and item.weighted == "sad" and item.label == "sad"
    assert item.soft["sad"] == pytest.approx(2 / 3) and item.soft["angry"] == pytest.approx(1 / 3)
    assert sum(item.soft.values()) == pytest.approx(1.0)
    assert item.n_votes == 3 and sorted(item.annotators) == ["a", "b", "c"]
    assert item.weight == pytest.approx(0.5)  # no gold yet: the Laplace prior


def test_unsure_votes_count_half_and_multilabel_splits():
    votes = [("a", ["happy"], True), ("b", ["sad", "angry"], False)]
    item = aggregate_clip("x", votes, {})
    assert item.soft["happy"] == pytest.approx(0.5 / 1.5)
    assert item.soft["sad"] == pytest.approx(0.5 / 1.5)
    assert item.majority == "happy"  # tie broken by taxonomy order


def test_reliability_is_laplace_smoothed_and_chance_corrected():
    assert reliability(0, 0.0) == 0.5
    assert reliability(8, 8.0) == pytest.approx(0.9)
    assert vote_weight(1 / len(LABELS)) == 0.0
    assert vote_weight(0.05) == 0.0
    assert vote_weight(1.0) == 1.0


def test_a_spammer_loses_weight_once_gold_items_exist(store):
    truths = ["sad", "angry", "fearful", "neutral", "disgust", "sad"]
    for i, truth in enumerate(truths):
        gold = add(store, f"gold{i}")
        store.add_gold(gold, truth)
        store.vote(gold, "spam1", ["happy"])
        store.vote(gold, "spam2", ["happy"])
        store.vote(gold, "good", [truth])
    contested = add(store, "contested")
    store.vote(contested, "spam1", ["happy"])
    store.vote(contested, "spam2", ["happy"])
    store.vote(contested, "good", ["sad"])
    item = by_clip(store)[contested]
    assert item.majority == "happy"
    assert item.weighted == "sad" and item.label == "sad"
    rel = update_reliability(store)
    assert rel["spam1"] < 0.2 and rel["good"] > 0.8
    assert store.get_annotator("spam1")["reliability"] == pytest.approx(rel["spam1"])
    assert store.get_annotator("good")["reliability"] == pytest.approx(7 / 8)


def test_weighted_falls_back_to_majority_when_everyone_is_at_chance(store):
    gold = add(store, "gold")
    store.add_gold(gold, "sad")
    store.vote(gold, "a", ["happy"])
    clip = add(store, "c")
    store.vote(clip, "a", ["angry"])
    item = by_clip(store)[clip]
    assert item.weighted == item.majority == "angry"


def test_predicted_label_is_the_latest_prediction(store):
    clip = add(store, "c")
    store.add_prediction(clip, "v1", {"happy": 0.9, "sad": 0.1})
    store.add_prediction(clip, "v2", {"fearful": 0.9, "sad": 0.1})
    store.vote(clip, "a", ["sad"])
    assert by_clip(store)[clip].predicted_label == "fearful"


def test_min_votes_filters_but_gold_clips_are_always_there(store):
    few = add(store, "few")
    store.vote(few, "a", ["happy"])
    many = add(store, "many")
    store.vote(many, "a", ["sad"])
    store.vote(many, "b", ["sad"])
    gold = add(store, "gold")
    store.add_gold(gold, "surprised")
    add(store, "nothing")
    items = by_clip(store, min_votes=2)
    assert set(items) == {many, gold}
    assert items[gold].label == "surprised" and items[gold].n_votes == 0 and items[gold].majority is None
