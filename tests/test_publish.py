"""Publishing a promoted model: version numbers, the model card, the local registry the app follows, and the
real HfApi pushing to a local fake Hub (tests/hub_server.py): files, privacy, tag, token hygiene, pinning a tag."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from safetensors.torch import load, load_file

from backend.model import EmotionModel
from backend.registry import current_model, registry_dir
from backend.settings import load_settings
from labeling.store import Store
from tests.hub_server import FakeHub
from tests.retrain_helpers import fill_store, small_config
from train.publish import hub_tags, next_version, publish

TOKEN = "hf_fakeTokenThatMustNeverBeLogged0123"
REPO = "studio/emotion-model"


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """The fake Hub, with the client pointed at it: online, HF_ENDPOINT and HF_TOKEN set, a private HF cache."""
    with FakeHub() as server:
        constants = huggingface_hub.constants
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def decision(promote: bool = True) -> dict:
    figures = {
        "ravdess_dev": {
            "n": 40,
            "accuracy": 0.61,
            "uar": 0.6,
            "macro_f1": 0.58,
            "modality": "speech",
            "split": "actors 17-20",
        },
        "corrections_holdout": {
            "n": 12,
            "accuracy": 0.75,
            "uar": 0.7,
            "macro_f1": 0.7,
            "modality": "speech",
            "split": "held-out",
        },
    }
    old = {k: {**v, "accuracy": v["accuracy"] - 0.05} for k, v in figures.items()}
    return {
        "promote": promote,
        "reason": "better on held-out corrections",
        "champion": old,
        "challenger": figures,
        "checks": [],
        "tolerance": 0.02,
        "min_gain": 0.0,
        "primary": "accuracy",
    }


def trained_model(tiny_model_dir: Path, tiny_backbones: dict) -> EmotionModel:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    model.config.parent_version = model.version  # as train.retrain leaves its challenger
    return model


def test_push_sends_the_folder_card_and_tag(tmp_path, hub, tiny_model_dir, tiny_backbones, caplog):
    caplog.set_level(logging.DEBUG)
    settings = load_settings(data_dir=tmp_path / "data")
    with Store.open(tmp_path / "studio.db") as store:
        result = publish(
            trained_model(tiny_model_dir, tiny_backbones),
            version="v2",
            decision=decision(),
            store=store,
            settings=settings,
            push=REPO,
            data={"items": 30},
            training={"base_version": "tiny-test"},
        )
        (row,) = store.model_versions()
    assert result["push"]["tag"] == "v2" and "error" not in result["push"]
    repo = hub.repos[REPO]
    assert repo.private  # private by default
    local = registry_dir(settings) / "v2"
    assert set(repo.files) == {"config.json", "model.safetensors", "README.md", "lexicon_embeddings.safetensors"}
    for name in ("config.json", "README.md"):
        assert repo.files[name] == (local / name).read_bytes(), name  # what arrived is what the app serves locally
    pushed, served = load(repo.files["model.safetensors"]), load_file(str(local / "model.safetensors"))
    assert pushed.keys() == served.keys() and all(torch.equal(pushed[k], served[k]) for k in served)
    assert repo.tags == {"v2": repo.head} and result["push"]["commit"] == repo.head
    card = repo.files["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    results = meta["model-index"][0]["results"]
    assert {r["dataset"]["name"] for r in results} == {"ravdess_dev", "corrections_holdout"}
    assert "Parent version: tiny-test" in card and "CC BY-NC-SA 4.0" in card and "User corrections" in card
    assert row["version"] == "v2" and row["path_or_repo"] == f"{REPO}@v2" and row["parent"] == "tiny-test"
    assert current_model(settings) == str(local.resolve())
    writes = [r for r in hub.requests if r.method == "POST"]
    assert writes and all(r.authorization == f"Bearer {TOKEN}" for r in writes)
    assert TOKEN not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file() and "hf-cache" not in path.parts:
            assert TOKEN.encode() not in path.read_bytes(), path


def test_the_app_can_pin_a_pushed_tag(tmp_path, hub, tiny_model_dir, tiny_backbones):
    settings = load_settings(data_dir=tmp_path / "data")
    with Store.open(tmp_path / "studio.db") as store:
        for version in ("v1", "v2"):
            model = trained_model(tiny_model_dir, tiny_backbones)
            publish(model, version=version, decision=decision(), store=store, settings=settings, push=REPO)
    assert hub_tags(REPO) == ["v1", "v2"] and hub_tags("studio/missing") == []
    pinned = EmotionModel.from_pretrained(f"{REPO}@v1", cache=Path(tiny_backbones["cache"]))
    assert pinned.version == "v1"
    assert EmotionModel.from_pretrained(REPO, cache=Path(tiny_backbones["cache"])).version == "v2"


def test_a_failed_push_keeps_the_local_promotion_and_hides_the_token(
    tmp_path, monkeypatch, tiny_model_dir, tiny_backbones, caplog
):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    settings = load_settings(data_dir=tmp_path / "data")
    with Store.open(tmp_path / "studio.db") as store:
        result = publish(
            trained_model(tiny_model_dir, tiny_backbones),
            version="v1",
            decision=decision(),
            store=store,
            settings=settings,
            push=REPO,
        )
        assert store.model_versions()[0]["path_or_repo"] == str(registry_dir(settings) / "v1")
    assert "error" in result["push"] and TOKEN not in result["push"]["error"] and TOKEN not in caplog.text
    assert current_model(settings) == str((registry_dir(settings) / "v1").resolve())


def test_next_version_never_reuses_a_number(tmp_path):
    settings = load_settings(data_dir=tmp_path / "data")
    with Store.open(tmp_path / "studio.db") as store:
        assert next_version(store, settings) == "v1"
        store.record_model_version("v1", "somewhere", {}, None)
        store.record_model_version("v3", "somewhere", {}, "v1")
        assert next_version(store, settings, "tiny-test") == "v4"
        store.record_training_run({"decision": "rejected", "candidate_version": "v4", "reason": "worse"})
        assert next_version(store, settings) == "v5"
        (registry_dir(settings) / "v7").mkdir(parents=True)
        assert next_version(store, settings) == "v8"
        assert next_version(store, settings, "v11", "v10") == "v12"  # e.g. tags already on the Hub


def test_retrain_with_push_publishes_to_the_hub(tmp_path, hub, shared_data, tiny_model_dir, tiny_backbones, caplog):
    from accelerate.state import AcceleratorState

    caplog.set_level(logging.INFO)
    fill_store(tmp_path / "studio.db", shared_data)
    config = small_config(
        tmp_path,
        tmp_path / "studio.db",
        tiny_model_dir,
        tiny_backbones["cache"],
        shared_data,
        push=REPO,
        min_gain=-1.0,
        epochs=1,
    )
    from train.retrain import run

    try:
        result = run(config)
    finally:
        AcceleratorState._reset_state(True)
    assert result["decision"]["published"]["push"]["tag"] == "v1"
    assert hub.repos[REPO].tags == {"v1": hub.repos[REPO].head}
    assert TOKEN not in caplog.text and TOKEN not in (Path(config.out) / "log.jsonl").read_text()


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="real-Hub smoke test: needs HF_TOKEN and network")
def test_real_hub_smoke(tmp_path, monkeypatch, tiny_model_dir, tiny_backbones):
    from huggingface_hub import HfApi

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    api = HfApi()
    repo = f"{api.whoami()['name']}/emotion-studio-smoke-{uuid.uuid4().hex[:8]}"
    settings = load_settings(data_dir=tmp_path / "data")
    try:
        with Store.open(tmp_path / "studio.db") as store:
            result = publish(
                trained_model(tiny_model_dir, tiny_backbones),
                version="v1",
                decision=decision(),
                store=store,
                settings=settings,
                push=repo,
            )
        assert "commit" in result["push"], result["push"]
        assert api.repo_info(repo).private
        assert [t.name for t in api.list_repo_refs(repo).tags] == ["v1"]
    finally:
        api.delete_repo(repo, missing_ok=True)


def test_the_card_says_how_much_of_the_retraining_was_kept() -> None:
    from train.publish import card_body

    decision = {"champion": {}, "challenger": {}, "promote": True, "reason": "better"}
    merged = card_body(decision, {"items": 200}, {"base_version": "v1", "merge": 0.5, "epochs": 16})
    assert "then 0.5 of the change was kept (weights averaged with `v1`'s" in merged and "- merge: 0.5" in merged
    plain = card_body(decision, {"items": 200}, {"base_version": "v1", "merge": 1.0})
    assert "of the change was kept" not in plain
