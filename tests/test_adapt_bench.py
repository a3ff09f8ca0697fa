"""The ASED adaptation bench end to end on the tiny model: store, crowd, `python -m train.retrain`, gate, scoring,
one JSON file with the learning curve; and its refusal of a base model that saw ASED."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest


def load_bench():
    spec = importlib.util.spec_from_file_location("adapt_ased", Path(__file__).parents[1] / "bench" / "adapt_ased.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_spread_and_votes() -> None:
    import numpy as np

    bench = load_bench()
    assert bench.spread([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(2**0.5), "min": 1.0, "max": 3.0, "n": 2}
    assert bench.spread([0.5])["sd"] == 0.0 and bench.spread([])["n"] == 0
    rng = np.random.default_rng(0)
    votes = [bench.vote_for(2, 0.3, rng) for _ in range(4000)]
    assert abs(sum(v != "sad" for v in votes) / 4000 - 0.3 * 6 / 7) < 0.03  # random 30% of the time


def test_refuses_a_base_model_that_saw_ased(tmp_path, tiny_model_dir) -> None:
    folder = tmp_path / "v2"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "training_summary.json").write_text(json.dumps({"speech": {"protocol": "RAVDESS + ASED train"}}))
    with pytest.raises(SystemExit, match="must never have seen it"):
        load_bench().main(["--base-model", str(folder), "--out", str(tmp_path / "out")])


def test_the_bench_runs_end_to_end(tmp_path, monkeypatch, tiny_model_dir, tiny_backbones, shared_data) -> None:
    monkeypatch.setenv("EMO_CACHE", tiny_backbones["cache"])
    args = ["--base-model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")]
    args += ["--data", str(shared_data), "--sizes", "12", "--seeds", "0", "--epochs", "1", "--score-limit", "10"]
    args += ["--speech-dev-size", "8", "--text-dev-size", "20", "--face-dev-size", "20", "--replay-limit", "8"]
    args += ["--calib-replay", "4", "--cpu"]
    report = load_bench().main(args)
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report, default=str))
    (run,) = report["runs"]
    assert run["corrections"] == 12 and run["crowd"]["votes"] == 36 and run["unseen_speakers"]["n"] == 10
    assert set(run["dev"]) == {"ravdess_dev", "goemotions_dev", "fer2013_val"}
    assert "Holm" in run["gate"]["test"] and not run["gate"]["promote"]  # 12 corrections: n < 30 held out
    assert "speech" in run["calibration"]["branches"]
    (row,) = report["curve"]
    assert row["corrections"] == 12 and row["seeds"] == 1 and "mean" in row["uar_gain_points"]
    assert set(report["scoring_speakers"]).isdisjoint(report["adaptation_speakers"])
    again = load_bench().main([*args, "--resume"])  # nothing left to do: the finished run is kept, not redone
    assert again["runs"] == json.loads(json.dumps(report["runs"], default=str))


def crowded_store(bench, db: Path, population: str, n: int = 40) -> dict[str, int]:
    """n synthetic clips (distinct noise, so distinct ids) voted on by a population; returns the truth per clip."""
    import numpy as np

    from backend.labels import LABELS
    from backend.media import encode_wav
    from train.corpora import Example

    rng = np.random.default_rng(0)
    clips = [Example("speech", i % len(LABELS)) for i in range(n)]
    wavs = [encode_wav(rng.uniform(-0.1, 0.1, 1600).astype(np.float32)) for _ in clips]
    preds = [dict.fromkeys(LABELS, 1 / len(LABELS)) for _ in clips]
    counts, truth = bench.fill_store(db, clips, wavs, preds, bench.crowd(population), seed=0)
    assert counts["votes"] == 3 * n and len(truth) == n
    return truth


def test_a_hostile_populations_votes_reach_the_store(tmp_path) -> None:
    from bench.hostile_crowd import group_wrong
    from labeling.aggregate import load_votes
    from labeling.store import Store

    bench = load_bench()
    truth = crowded_store(bench, tmp_path / "s.db", "coordinated")
    with Store.open(tmp_path / "s.db") as store:
        votes = load_votes(store)
    assert set(votes) == set(truth) and all(len(v) == 3 and len({a for a, _, _ in v}) == 3 for v in votes.values())
    group = [(c, labels) for c, v in votes.items() for a, labels, _ in v if a.startswith("group:")]
    assert len(group) > 20 and all(labels == [group_wrong(c, truth[c])] for c, labels in group)
    default = {a.name for a in bench.crowd("default")}
    assert default == {"honest:1", "honest:2", "honest:3", "noisy:1", "noisy:2"}  # the old crowd, unchanged


def test_poisoned_labels_are_the_majority_labels(tmp_path) -> None:
    from labeling.aggregate import aggregate_clip, load_votes
    from labeling.store import Store

    bench = load_bench()
    truth = crowded_store(bench, tmp_path / "crowd.db", "coordinated")
    with Store.open(tmp_path / "crowd.db") as store:
        majority = {c: aggregate_clip(c, v, {}).majority for c, v in load_votes(store).items()}
        wavs = [store.media_path(c).read_bytes() for c in truth]
    bench.undefended_copy(tmp_path / "crowd.db", tmp_path / "studio.db", wavs, None)
    with Store.open(tmp_path / "studio.db") as store:
        poisoned = load_votes(store)
    assert set(poisoned) == set(majority)
    assert all(labels == [majority[c]] for c, v in poisoned.items() for _, labels, _ in v)
    figures = bench.training_labels(tmp_path, truth)  # no run yet: no training slice, every clip counted
    assert figures["train_slice"]["n"] == 0 and figures["all_clips"]["n"] == len(truth)
    wrong_majority = sum(majority[c] != bench.LABELS[truth[c]] for c in truth)
    assert figures["majority_all_clips"]["wrong"] == wrong_majority > 0  # the group wins some clips


def test_the_control_pool_is_the_base_models_training_actors(shared_data) -> None:
    from train.corpora import SPEECH_TRAIN_ACTORS

    clips = load_bench().correction_pool(shared_data, "ravdess-train")
    assert clips and {c.meta["actor"] for c in clips} <= set(SPEECH_TRAIN_ACTORS)
    assert {c.meta["corpus"] for c in load_bench().correction_pool(shared_data, "ased-train")} != {"ravdess"}


def test_settings_keep_their_results_apart(tmp_path) -> None:
    bench = load_bench()
    base = ["--base-model", "m", "--out", str(tmp_path)]
    default = bench.parse_args(base)
    old_share = bench.parse_args([*base, "--gold-share", "0.1", "--resume"])
    hostile = bench.parse_args([*base, "--population", "coordinated", "--poisoned", "--resume", "--gold-share", "0.1"])
    control = bench.parse_args([*base, "--pool", "ravdess-train"])
    assert default.gold_share == 0.25
    assert bench.work_folder(default, 0, 25) == tmp_path / "seed0-gold0.25" / "n25"
    assert bench.work_folder(old_share, 0, 25) == tmp_path / "seed0" / "n25"  # as before: --resume finds old runs
    assert bench.work_folder(hostile, 0, 25) == tmp_path / "seed0-coordinated-poisoned" / "n25"
    assert bench.work_folder(control, 1, 50) == tmp_path / "seed1-ravdess-train-gold0.25" / "n50"
    (tmp_path / "old.json").write_text(json.dumps({"runs": [{"seed": 0, "corrections": 25}]}))  # before the flags
    assert bench.resumed_runs(old_share, tmp_path / "old.json")
    for other in (hostile, bench.parse_args([*base, "--resume"])):  # another crowd; the same crowd at 25% gold
        with pytest.raises(SystemExit, match="another --json"):
            bench.resumed_runs(other, tmp_path / "old.json")
