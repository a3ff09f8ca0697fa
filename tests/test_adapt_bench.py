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
