"""Dawid-Skene reliability: it recovers a label-flipper's confusion, down-weights an always-one-label annotator that
gold alone would trust, and (with gold clips clamped) catches a coordinated group that agrees on wrong labels.
The store cases run on a real SQLite file through the store's own API."""

from __future__ import annotations

import numpy as np
import pytest

from backend.labels import LABELS
from labeling import Store, aggregate_labels, dawid_skene
from labeling.aggregate import annotator_weights, update_reliability, vote_weights

PERM = [(i + 3) % len(LABELS) for i in range(len(LABELS))]  # a relabelling with no fixed point


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0, synchronous="NORMAL")
    yield s
    s.close()


def noisy(truth: int, noise: float, rng: np.random.Generator) -> str:
    return LABELS[int(rng.integers(len(LABELS)))] if rng.random() < noise else LABELS[truth]


def test_recovers_a_flipping_annotators_confusion() -> None:
    rng = np.random.default_rng(0)
    truth = {f"c{i}": i % len(LABELS) for i in range(140)}
    votes = []
    for clip, t in truth.items():
        votes += [(clip, f"honest{j}", [noisy(t, 0.1, rng)], False) for j in range(3)]
        votes.append((clip, "flipper", [LABELS[PERM[t]]], False))
    fit = dawid_skene.fit(votes)
    assert list(fit.confusion_of("flipper").argmax(1)) == PERM
    assert np.diag(fit.confusion_of("flipper")).max() < 0.05 and np.diag(fit.confusion_of("honest0")).min() > 0.7
    assert fit.accuracy()["flipper"] < 0.05 < 0.85 < fit.accuracy()["honest1"]
    labels = fit.labels()
    assert sum(labels[c] == LABELS[t] for c, t in truth.items()) >= 0.97 * len(truth)


def test_down_weights_an_always_one_label_annotator_that_passes_gold(store) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):  # every gold clip happens to be happy: the spammers pass gold perfectly
        gold = store.add_clip(f"gold{i}".encode(), modalities=["speech"], consent=True)
        store.add_gold(gold, "happy")
        for a in ("good1", "good2", "spam1", "spam2"):
            store.vote(gold, a, "happy")
    truth = {}
    for i in range(42):
        clip = store.add_clip(f"clip{i}".encode(), modalities=["speech"], consent=True)
        truth[clip] = i % len(LABELS)
        store.vote(clip, "good1", noisy(truth[clip], 0.1, rng))
        store.vote(clip, "spam1", "happy")
        store.vote(clip, "spam2", "happy")
        if i % 2:
            store.vote(clip, "good2", noisy(truth[clip], 0.1, rng))
    gold_only = annotator_weights(store, update_reliability(store))
    weights = vote_weights(store)
    assert gold_only["spam1"] > 0.7 and gold_only["spam1"] == pytest.approx(gold_only["good1"])  # gold is fooled
    assert weights["spam1"] < 0.15 and weights["spam2"] < 0.15 and weights["good1"] > 0.6
    items = {it.clip_id: it for it in aggregate_labels(store)}
    not_happy = [c for c, t in truth.items() if LABELS[t] != "happy"]
    by_majority = sum(items[c].majority == LABELS[truth[c]] for c in not_happy)  # two spammers outvote the rest
    right = sum(items[c].label == LABELS[truth[c]] for c in not_happy)
    assert by_majority < 0.6 * len(not_happy) and right >= 0.85 * len(not_happy)


def test_a_coordinated_group_is_caught_with_gold(store) -> None:
    rng = np.random.default_rng(2)
    honest = [f"honest{i}" for i in range(4)]
    group = [f"group{i}" for i in range(5)]

    def group_label(i: int, t: int) -> str:
        return LABELS[(t + 1 + i % (len(LABELS) - 1)) % len(LABELS)]  # the same wrong label for the whole group

    for i in range(8):  # gold clips, answered by everyone
        gold = store.add_clip(f"gold{i}".encode(), modalities=["speech"], consent=True)
        t = i % len(LABELS)
        store.add_gold(gold, LABELS[t])
        for a in honest:
            store.vote(gold, a, noisy(t, 0.1, rng))
        for a in group:
            store.vote(gold, a, group_label(i, t))
    truth = {}
    for i in range(80):  # three votes per clip from the pool of nine: the group is the majority on many
        clip = store.add_clip(f"clip{i}".encode(), modalities=["speech"], consent=True)
        truth[clip] = t = i % len(LABELS)
        for a in rng.choice(honest + group, size=3, replace=False):
            store.vote(clip, str(a), group_label(i, t) if a in group else noisy(t, 0.1, rng))
    weights = vote_weights(store)
    assert max(weights[g] for g in group) < 0.05 < 0.5 < min(weights[h] for h in honest)
    items = [it for it in aggregate_labels(store) if it.clip_id in truth]
    majority = sum(it.majority == LABELS[truth[it.clip_id]] for it in items) / len(items)
    weighted = sum(it.label == LABELS[truth[it.clip_id]] for it in items) / len(items)
    assert majority < 0.75 and weighted > majority + 0.15
