"""The hostile-crowd bench's aggregation table on real RAVDESS clips through a real store (no retraining): the
queue hands out k=3 votes per clip with gold mixed in, and the table tells the estimators apart."""

from __future__ import annotations

from backend.media import encode_wav
from bench import hostile_crowd as bench
from labeling.store import Store
from train.fit_speech import load_clips


def test_the_table_shows_flippers_caught_and_their_weight_gone(tmp_path, shared_data) -> None:
    clips = bench.choose_clips(shared_data, 40, seed=0)
    wavs = [encode_wav(w) for w in load_clips(clips)]
    truth, gold = bench.fill(tmp_path / "crowd.db", clips, wavs, None, "flipping", seed=0)
    with Store.open(tmp_path / "crowd.db") as store:
        votes_per_clip = [
            r["n"]
            for r in store.db.query(
                "SELECT COUNT(*) AS n FROM votes v JOIN clips c ON c.id = v.clip_id WHERE c.gold_label IS NULL GROUP BY v.clip_id"
            )
        ]
        row = bench.aggregation_row(store, truth, gold, bench.pool("flipping"))
    assert set(votes_per_clip) == {3} and len(gold) == 4 and row["clips"] == 40
    acc = {name: figures["accuracy"] for name, figures in row["accuracy"].items()}
    assert all(figures["n"] == 36 for figures in row["accuracy"].values())  # the non-gold clips
    assert row["majority_wrong_clips"] > 0 and acc["store"] > acc["majority"]
    for name, weights in row["hostile_weights"].items():
        assert name.startswith("flipper:") and weights["store"] < 0.05 < row["honest_weights"]["store"]["min"]
        assert weights["gold_seen"] >= 1 and weights["votes"] > 5
