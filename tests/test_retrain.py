"""The retraining job end to end on a tiny model and a store of real RAVDESS clips and GoEmotions texts:
publication the app can load, what trains and what stays frozen, logs, and clear refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.model import EmotionModel
from backend.predictor import load_predictor
from backend.registry import current_model
from backend.settings import load_settings
from labeling.store import Store
from tests.retrain_helpers import fill_store, small_config
from train.retrain import RetrainError, main, run, trainable_groups
from train.schedule import retrain_lock


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps a process-wide state; each run here starts from a clean one (FACTS)."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(True)


@pytest.fixture()
def store_db(tmp_path: Path, shared_data: Path) -> Path:
    fill_store(tmp_path / "studio.db", shared_data)
    return tmp_path / "studio.db"


def config_for(tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data, **overrides):
    return small_config(tmp_path, store_db, tiny_model_dir, tiny_backbones["cache"], shared_data, **overrides)


def test_a_promoted_run_is_published_where_the_app_finds_it(
    tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data
):
    # gate open (min_gain -1, tolerance 1): this test is about what a promotion does; test_gate judges the gate
    config = config_for(tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data, min_gain=-1.0)
    result = run(config)
    decision = result["decision"]
    assert decision["promote"] and decision["version"] == "v1"
    settings = load_settings(data_dir=tmp_path / "data", cache=Path(tiny_backbones["cache"]))
    folder = Path(current_model(settings))
    assert folder == tmp_path / "data" / "models" / "v1"
    assert load_predictor(settings=settings).model_version == "v1"  # the app's next request serves the new version
    model = EmotionModel.from_pretrained(folder, cache=Path(tiny_backbones["cache"]))
    assert model.version == "v1" and model.config.parent_version == "tiny-test"
    assert model.config.trained["speech"] and model.config.trained["text"]
    card = (folder / "README.md").read_text()
    assert "model-index" in card and "Parent version: tiny-test" in card and "CC BY-NC-SA" in card
    with Store.open(store_db) as store:
        (row,) = store.training_runs()
        assert row["decision"] == "promoted" and row["candidate_version"] == "v1" and row["base_version"] == "tiny-test"
        assert set(row["metrics"]["challenger"]) == {
            "ravdess_dev",
            "goemotions_dev",
            "fer2013_val",
            "corrections_holdout",
        }
        assert row["n_corrections"] == result["train"]["items"] > 0
        (version,) = store.model_versions()
        assert version["version"] == "v1" and version["promoted"] and version["parent"] == "tiny-test"
    out = Path(config.out)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == result["step"] and all({"ce", "supcon", "negative", "lr"} <= set(r) for r in steps)
    assert [r["event"] for r in records if "event" in r] == ["start", "epoch", "epoch", "trained", "gate"]
    assert json.loads((out / "retrain_config.json").read_text())["epochs"] == 2
    assert json.loads((out / "decision.json").read_text())["version"] == "v1"


def test_only_the_heads_and_adapters_of_branches_with_data_train(
    tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data
):
    config = config_for(tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data, gate=False)
    result = run(config)
    assert result["branches"] == ["speech", "text"]
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(Path(config.out) / "challenger" / "model.safetensors"))
    assert before.keys() == after.keys()  # heads and adapters only, as the model format wants
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("heads.speech_head.") for k in changed)
    assert any(k.startswith("heads.text_head.") for k in changed)
    assert any(k.startswith("heads.projections.speech.") for k in changed)
    assert any(".lora_" in k for k in changed)  # the text adapters train
    assert not [k for k in changed if k.startswith(("heads.face_net.", "heads.projections.face.", "heads.gate."))]
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    groups = trainable_groups(model, ("speech",), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("heads.speech_head.", "heads.projections.speech.")) for n in trainable)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    frozen = trainable_groups(model, ("text",), dataclasses.replace(config, lora_lr=0.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(frozen) == 1 and trainable and not [n for n in trainable if ".lora_" in n]  # heads only


def test_an_empty_store_is_refused_with_a_message(tmp_path, tiny_model_dir, tiny_backbones, shared_data, capsys):
    Store.open(tmp_path / "empty.db").close()
    config = config_for(tmp_path, tmp_path / "empty.db", tiny_model_dir, tiny_backbones, shared_data)
    with pytest.raises(RetrainError, match="no labelled, consented corrections"):
        run(config)
    args = ["--db", config.db, "--out", config.out, "--base-model", config.base_model, "--cache", config.cache]
    assert main(args) == 1
    assert "error: There are no labelled" in capsys.readouterr().err


def test_missing_base_corpora_are_named(tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data):
    config = config_for(tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data, data=str(tmp_path / "none"))
    with pytest.raises(RetrainError, match=r"Replay needs the base corpora .*RAVDESS folder not found"):
        run(config)


def test_a_second_run_on_the_same_store_waits_for_the_first(
    tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data
):
    config = config_for(tmp_path, store_db, tiny_model_dir, tiny_backbones, shared_data)
    with retrain_lock(store_db), pytest.raises(RetrainError, match="Another retraining run"):
        run(config)
    assert not (Path(config.out) / "challenger").exists()


def test_the_gain_bench_runs_end_to_end(tmp_path, monkeypatch, tiny_model_dir, tiny_backbones, shared_data, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "retrain_gain", Path(__file__).parents[1] / "bench" / "retrain_gain.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("EMO_CACHE", tiny_backbones["cache"])
    args = [
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "gain"),
        "--data",
        str(shared_data),
        "--limit",
        "10",
        "--epochs",
        "1",
        "--cpu",
        "--text-dev-size",
        "20",
        "--face-dev-size",
        "20",
        "--replay-limit",
        "16",
    ]
    report = bench.main(args)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))  # one JSON object on stdout
    assert report["user_clips"] == 20 and report["train_corrections"] + report["held_out_clips"] <= 20
    gain = report["user_heldout_true_labels"]
    assert gain["champion"]["n"] == gain["challenger"]["n"] == report["held_out_clips"] > 0
    assert set(report["dev"]) == {"ravdess_dev", "goemotions_dev", "fer2013_val"}
    assert report["dev"]["ravdess_dev"]["champion"]["split"] == "actors 19,20"  # the user's actors are not judged on
