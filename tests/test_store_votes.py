"""Votes, predictions, annotators, model history and stats of the label store."""

from __future__ import annotations

import math

import pytest

from labeling import NotFoundError, Store, StoreError


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0)
    yield s
    s.close()


@pytest.fixture
def clip(store):
    return store.add_clip(b"clip", modalities=["speech"], consent=True)


def test_a_new_vote_replaces_the_old_which_goes_to_history(store, clip):
    first = store.vote(clip, "ann", ["joy"], note="first")
    second = store.vote(clip, "ann", ["sad"], unsure=True)
    assert first == second
    (current,) = store.votes(clip)
    assert current["labels"] == ["sad"] and current["unsure"] == 1 and current["note"] is None
    (old,) = store.vote_history(clip)
    assert old["labels"] == ["happy"] and old["note"] == "first" and old["action"] == "replaced"
    assert old["vote_id"] == first


def test_sending_the_same_vote_twice_changes_nothing(store, clip):
    store.vote(clip, "ann", ["angry"])
    store.vote(clip, "ann", ["anger"])  # alias of the same label
    assert len(store.votes(clip)) == 1
    assert store.vote_history(clip) == []


def test_labels_are_normalised_and_deduplicated(store, clip):
    store.vote(clip, "ann", ["Surprise", "fear", "surprised"])
    assert store.votes(clip)[0]["labels"] == ["surprised", "fearful"]


@pytest.mark.parametrize("labels", [[], ["boredom"], "nope"])
def test_bad_labels_are_refused(store, clip, labels):
    with pytest.raises(StoreError):
        store.vote(clip, "ann", labels)
    assert store.votes(clip) == []


def test_vote_on_unknown_clip_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.vote("f" * 64, "ann", ["happy"])
    assert store.db["annotators"].count == 0  # rolled back with the vote


def test_one_current_vote_per_annotator_and_clip(store, clip):
    for annotator in ("a", "b", "c"):
        store.vote(clip, annotator, ["happy"])
    store.vote(clip, "a", ["sad"])
    assert sorted(v["annotator_id"] for v in store.votes(clip)) == ["a", "b", "c"]


def test_undo_removes_the_current_vote_and_keeps_it_in_history(store, clip):
    store.vote(clip, "ann", ["neutral"])
    assert store.delete_vote(clip, "ann") is True
    assert store.votes(clip) == []
    assert store.vote_history(clip)[0]["action"] == "undone"
    assert store.delete_vote(clip, "ann") is False


def test_vote_releases_the_reservation(store, clip):
    assert store.next_item("ann")["id"] == clip
    assert store.db["reservations"].count == 1
    store.vote(clip, "ann", ["happy"])
    assert store.db["reservations"].count == 0


def test_annotators_kinds(store):
    assert store.ensure_annotator("u1", "user")["kind"] == "user"
    assert store.ensure_annotator("u1", "crowd")["kind"] == "user"  # existing kind kept
    assert store.ensure_annotator("g", "gold")["reliability"] == 1.0
    with pytest.raises(StoreError):
        store.ensure_annotator("x", "robot")
    with pytest.raises(StoreError):
        store.ensure_annotator("  ")
    with pytest.raises(NotFoundError):
        store.get_annotator("nobody")


def test_prediction_is_normalised_with_entropy_and_margin(store, clip):
    store.add_prediction(clip, "v1", {"happy": 2.0, "sadness": 1.0, "anger": 1.0})
    pred = store.latest_prediction(clip)
    assert pred["probs"]["happy"] == pytest.approx(0.5)
    assert pred["probs"]["sad"] == pytest.approx(0.25)
    assert sum(pred["probs"].values()) == pytest.approx(1.0)
    assert pred["top_label"] == "happy"
    assert pred["margin"] == pytest.approx(0.25)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(7)
    assert pred["entropy"] == pytest.approx(expected)
    store.add_prediction(clip, "v2", {"sad": 1.0})
    assert store.latest_prediction(clip)["model_version"] == "v2"


@pytest.mark.parametrize("probs", [{}, {"happy": -1}, {"happy": float("nan")}, {"boredom": 1.0}])
def test_bad_predictions_are_refused(store, clip, probs):
    with pytest.raises(StoreError):
        store.add_prediction(clip, "v1", probs)


def test_prediction_on_unknown_clip_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.add_prediction("e" * 64, "v1", {"happy": 1.0})


def test_model_versions_and_training_runs(store):
    store.record_model_version("v1", "models/v1", {"uar": 0.5}, None)
    store.record_model_version("v2", "user/emo@v2", {"uar": 0.55}, "v1")
    run_id = store.record_training_run(
        {
            "started": "2026-11-01T00:00:00+00:00",
            "finished": "2026-11-01T01:00:00+00:00",
            "base_version": "v1",
            "candidate_version": "v2",
            "n_corrections": 42,
            "metrics": {"champion": {"uar": 0.5}, "challenger": {"uar": 0.55}},
            "decision": "promoted",
            "reason": "challenger no worse on every dev set",
        }
    )
    (run,) = store.training_runs()
    assert run["id"] == run_id and run["metrics"]["challenger"]["uar"] == 0.55
    versions = {v["version"]: v for v in store.model_versions()}
    assert versions["v2"]["parent"] == "v1" and versions["v2"]["promoted"] is not None
    assert versions["v1"]["promoted"] is None and versions["v1"]["metrics"] == {"uar": 0.5}
    with pytest.raises(StoreError, match="decision"):
        store.record_training_run({"decision": "maybe"})


def test_stats_counts(store, clip):
    other = store.add_clip(b"other", modalities=["text"], source="import", consent=False)
    store.add_prediction(clip, "v1", {"happy": 1.0})
    store.vote(clip, "a", ["happy", "surprised"])
    store.vote(other, "b", ["happy"])
    store.vote(other, "b", ["sad"])
    stats = store.stats()
    assert stats["clips"] == 2 and stats["consented_clips"] == 1 and stats["clips_with_media"] == 1
    assert stats["votes"] == 2 and stats["vote_history"] == 1 and stats["predictions"] == 1
    assert stats["vote_labels"]["happy"] == 1 and stats["vote_labels"]["sad"] == 1
    assert stats["vote_labels"]["surprised"] == 1
    assert stats["clips_by_source"] == {"upload": 1, "import": 1}
    assert stats["annotators_by_kind"] == {"crowd": 2}
