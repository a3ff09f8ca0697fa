"""The annotation queue: value ordering, k with leases, gold mixing, skips, and racing annotators."""

from __future__ import annotations

import threading
import time

import pytest

from labeling import Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0, synchronous="NORMAL")
    yield s
    s.close()


def add(store: Store, name: str, probs: dict[str, float] | None = None) -> str:
    clip = store.add_clip(name.encode(), modalities=["speech"], consent=True)
    if probs:
        store.add_prediction(clip, "v1", probs)
    return clip


def test_most_uncertain_clip_comes_first(store):
    sure = add(store, "sure", {"happy": 0.97, "sad": 0.03})
    unsure = add(store, "unsure", {"happy": 0.4, "sad": 0.35, "angry": 0.25})
    middle = add(store, "middle", {"happy": 0.7, "sad": 0.3})
    order = []
    for _ in range(3):
        item = store.next_item("ann")
        order.append(item["id"])
        store.vote(item["id"], "ann", ["happy"])
    assert order == [unsure, middle, sure]
    assert store.next_item("ann") is None


def test_disagreement_raises_value(store):
    calm = add(store, "calm", {"happy": 0.6, "sad": 0.4})
    torn = add(store, "torn", {"happy": 0.6, "sad": 0.4})
    store.vote(calm, "x", ["happy"])
    store.vote(calm, "y", ["happy"])
    store.vote(torn, "x", ["happy"])
    store.vote(torn, "y", ["angry"])
    assert store.next_item("ann")["id"] == torn


def test_rare_predicted_classes_come_before_common_ones(store):
    common = [add(store, f"c{i}", {"happy": 0.8, "sad": 0.2}) for i in range(3)]
    rare = add(store, "rare", {"fearful": 0.8, "sad": 0.2})  # same entropy, rarer class
    first = store.next_item("ann")["id"]
    assert first == rare and first not in common


def test_k_is_respected_and_leases_count_toward_it(store):
    clip = add(store, "only")
    assert store.next_item("a", k=2)["id"] == clip
    assert store.next_item("b", k=2)["id"] == clip
    assert store.next_item("c", k=2) is None  # two open leases fill k=2
    store.vote(clip, "a", ["happy"])
    assert store.next_item("c", k=2) is None  # one vote + one lease
    store.vote(clip, "b", ["happy"])
    assert store.next_item("c", k=2) is None  # two votes
    assert store.next_item("c", k=3)["id"] == clip


def test_expired_leases_free_their_slot(store):
    clip = add(store, "only")
    assert store.next_item("a", k=1, reserve_minutes=0.001)["id"] == clip
    assert store.next_item("b", k=1) is None
    time.sleep(0.1)
    assert store.next_item("b", k=1)["id"] == clip


def test_asking_again_returns_the_held_clip(store):
    add(store, "one", {"happy": 0.5, "sad": 0.5})
    add(store, "two", {"happy": 0.9, "sad": 0.1})
    first = store.next_item("ann")["id"]
    assert store.next_item("ann")["id"] == first
    assert store.db["reservations"].count == 1


def test_skip_is_not_shown_again(store):
    a = add(store, "a", {"happy": 0.5, "sad": 0.5})
    b = add(store, "b", {"happy": 0.9, "sad": 0.1})
    assert store.next_item("ann")["id"] == a
    store.skip(a, "ann")
    assert store.next_item("ann")["id"] == b
    store.skip(b, "ann")
    assert store.next_item("ann") is None
    assert store.votes() == []
    assert store.next_item("other")["id"] == a  # skips are per annotator


def test_clips_without_kept_content_are_not_queued(store):
    store.add_clip(b"private", modalities=["speech"], consent=False)
    assert store.next_item("ann") is None


def test_gold_items_are_mixed_in_at_the_configured_rate(store):
    gold = set()
    for i in range(10):
        clip = add(store, f"gold{i}")
        store.add_gold(clip, "sad")
        gold.add(clip)
    for i in range(30):
        add(store, f"plain{i}")
    served = []
    for _ in range(20):
        item = store.next_item("ann", gold_rate=0.25)
        assert "gold_label" not in item  # blind: the known answer is not handed out
        served.append(item["id"] in gold)
        store.vote(item["id"], "ann", ["happy"])
    assert sum(served) == 5
    assert [i + 1 for i, g in enumerate(served) if g] == [4, 8, 12, 16, 20]
    assert store.next_item("other", gold_rate=0.0)["id"] not in gold


def test_gold_clips_are_not_capped_by_k(store):
    clip = add(store, "g")
    store.add_gold(clip, "happy")
    for annotator in "abcde":
        assert store.next_item(annotator, k=1, gold_rate=1.0)["id"] == clip
        store.vote(clip, annotator, ["happy"])


@pytest.mark.parametrize("k", [1, 3])
def test_racing_annotators_never_exceed_k(store, k):
    clip = add(store, "last")
    n = 12
    barrier = threading.Barrier(n)
    got, errors = [], []

    def ask(i):
        barrier.wait()
        try:
            item = store.next_item(f"ann{i}", k=k)
            got.append(item and item["id"])
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert got.count(clip) == k
    assert got.count(None) == n - k


def test_annotator_progress(store):
    clips = [add(store, f"c{i}") for i in range(4)]
    gold = add(store, "g")
    store.add_gold(gold, "sad")
    store.vote(clips[0], "ann", ["happy"])
    store.vote(gold, "ann", ["sad", "happy"])
    progress = store.annotator_progress("ann")
    assert progress["votes"] == 2
    assert progress["gold_seen"] == 1 and progress["gold_accuracy"] == pytest.approx(0.5)
    assert progress["remaining"] == 3
