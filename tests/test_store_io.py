"""Import (HF-style folder, `datasets` dataset) and export (parquet, Hub push) of the label store."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import pytest
from huggingface_hub import HfApi

from labeling import Store, StoreError
from labeling.io import export_dataset, import_dataset, import_folder, push_dataset

RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess-speech-16k"
EMOTION = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful"}


def ravdess_files(n: int = 6) -> list[Path]:
    files = sorted((RAVDESS / "Actor_01").glob("*.flac"))
    picked = {}
    for f in files:
        code = f.name.split("-")[2]
        if code in EMOTION and code not in picked:
            picked[code] = f
    assert len(picked) >= n, f"expected RAVDESS files under {RAVDESS}"
    return list(picked.values())[:n]


def make_folder(root: Path, *, with_labels: bool = True) -> tuple[Path, list[Path]]:
    folder = root / "upload"
    (folder / "audio").mkdir(parents=True)
    files = ravdess_files()
    with (folder / "metadata.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text", "label"])
        for src in files:
            shutil.copy(src, folder / "audio" / src.name)
            writer.writerow([f"audio/{src.name}", "", EMOTION[src.name.split("-")[2]] if with_labels else ""])
        writer.writerow(["", "I can't believe we won!", "happy" if with_labels else ""])
    return folder, files


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "db" / "studio.db", k=3, gold_rate=0.0, synchronous="NORMAL")
    yield s
    s.close()


def test_import_folder_of_real_ravdess_flac_as_gold(store, tmp_path):
    folder, files = make_folder(tmp_path)
    assert import_folder(store, folder) == {"rows": 7, "labelled": 7}
    stats = store.stats()
    assert stats["clips"] == 7 and stats["gold_clips"] == 7 and stats["votes"] == 0
    assert stats["clips_by_source"] == {"import": 7}
    clips = list(store.db.query("SELECT * FROM clips WHERE ext = '.flac'"))
    assert len(clips) == 6
    for clip in clips:
        assert 2.5 < clip["duration"] < 6.0
        assert clip["modalities"] == '["speech"]'
    golds = {c["gold_label"] for c in clips}
    assert "neutral" in golds and "calm" not in golds  # calm folds into neutral
    by_bytes = {store.media_path(c["id"]).read_bytes() for c in clips}
    assert by_bytes == {f.read_bytes() for f in files}
    text = next(store.db.query("SELECT * FROM clips WHERE ext = '.txt'"))
    assert text["text"] == "I can't believe we won!" and text["media"] is None
    assert import_folder(store, folder)["rows"] == 7  # idempotent
    assert store.db["clips"].count == 7


def test_import_folder_labels_as_import_votes(store, tmp_path):
    folder, _ = make_folder(tmp_path)
    import_folder(store, folder, label_mode="vote")
    assert store.stats()["gold_clips"] == 0
    votes = store.votes()
    assert len(votes) == 7 and {v["annotator_id"] for v in votes} == {"import"}
    assert store.get_annotator("import")["kind"] == "import"


def test_import_folder_without_labels_queues_clips(store, tmp_path):
    folder, _ = make_folder(tmp_path, with_labels=False)
    assert import_folder(store, folder)["labelled"] == 0
    assert store.next_item("ann") is not None


@pytest.mark.parametrize(
    ("row", "message"),
    [(["audio/../../secret.flac", "", ""], "not a file inside"), (["", "hi", "boredom"], "unknown emotion")],
)
def test_bad_metadata_imports_nothing(store, tmp_path, row, message):
    folder, _ = make_folder(tmp_path)
    (tmp_path / "secret.flac").write_bytes(b"x")
    with (folder / "metadata.csv").open("a", newline="") as f:
        csv.writer(f).writerow(row)
    with pytest.raises(StoreError, match=message):
        import_folder(store, folder)
    assert store.db["clips"].count == 0


def test_import_dataset_with_audio_and_classlabel(store):
    files = ravdess_files(4)
    names = ["neutral", "happy", "sad", "angry", "fearful"]
    ds = datasets.Dataset.from_dict(
        {
            "audio": [str(f) for f in files],
            "label": [names.index(EMOTION[f.name.split("-")[2]].replace("calm", "neutral")) for f in files],
        },
        features=datasets.Features({"audio": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}),
    ).cast_column("audio", datasets.Audio())  # a decoding Audio column, as load_dataset gives
    report = import_dataset(store, datasets.DatasetDict({"train": ds}), label_mode="vote")
    assert report == {"rows": 4, "labelled": 4}
    assert store.db["clips"].count == 4
    assert {v["labels"][0] for v in store.votes()} <= set(names)
    assert all(store.media_path(c["id"]) is not None for c in store.db.query("SELECT id FROM clips"))


def test_import_text_dataset_without_labels(store):
    ds = datasets.Dataset.from_dict({"text": ["so happy today", "this is awful", "so happy today"]})
    assert import_dataset(store, ds) == {"rows": 3, "labelled": 0}
    assert store.db["clips"].count == 2  # same text, same clip


@pytest.mark.parametrize("labels", [["happy", "boredom"], [1, 2]])
def test_bad_dataset_labels_import_nothing(store, labels):
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": labels})
    with pytest.raises(StoreError, match="nothing was imported"):
        import_dataset(store, ds)
    assert store.db["clips"].count == 0


def test_export_parquet_reloads_with_audio_for_consented_clips(store, tmp_path):
    folder, files = make_folder(tmp_path)
    import_folder(store, folder, label_mode="vote")
    private = store.add_clip(b"not kept", ext=".wav", modalities=["speech"], consent=False)
    store.vote(private, "user1", ["sad"])
    out = tmp_path / "export"
    written = export_dataset(store, out)
    assert len(written) == 8
    assert (out / "README.md").read_text().startswith("---\nconfigs:")
    reloaded = datasets.load_dataset(
        "parquet", data_files=str(out / "data" / "*.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(reloaded) == 8
    assert isinstance(reloaded.features["audio"], datasets.Audio)
    assert reloaded.features["label"].names[:3] == ["neutral", "happy", "sad"]
    rows = {r["clip_id"]: r for r in reloaded}
    assert rows[private]["audio"] is None and rows[private]["label"] == 2
    audio = [r["audio"] for r in rows.values() if r["audio"] is not None]
    assert len(audio) == 6
    assert {a["bytes"] for a in audio} == {f.read_bytes() for f in files}
    assert all(a["path"].endswith(".flac") for a in audio)
    text_row = next(r for r in rows.values() if r["text"])
    assert text_row["label"] == 1 and text_row["soft"][1] == pytest.approx(1.0)


def test_push_dataset_call_shape(tmp_path, monkeypatch, caplog):
    # TODO(lead): also drive the real HfApi against the local Hub test server once it exists.
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("card")
    api = mock.create_autospec(HfApi, instance=True)
    api.upload_folder.return_value = mock.Mock(commit_url="https://hub.example/commit/1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    with caplog.at_level(logging.DEBUG):
        url = push_dataset(out, "me/emotion-labels", api=api)
    assert url == "https://hub.example/commit/1"
    api.create_repo.assert_called_once_with(
        "me/emotion-labels", repo_type="dataset", private=True, exist_ok=True, token="hf_secret_token_value"
    )
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/emotion-labels" and kwargs["repo_type"] == "dataset"
    assert kwargs["folder_path"] == str(out)
    assert "hf_secret_token_value" not in caplog.text


def test_push_dataset_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(StoreError, match="HF_TOKEN"):
        push_dataset(tmp_path, "me/x", api=mock.create_autospec(HfApi, instance=True))


def test_push_dataset_reaches_a_hub_endpoint_intact(store, tmp_path, caplog, monkeypatch):
    """The real HfApi against the local fake Hub (tests/hub_server.py): private dataset repo, every file intact."""
    from huggingface_hub import constants

    from tests.hub_server import FakeHub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the local endpoint only; no other host is reachable

    caplog.set_level(logging.DEBUG)
    folder, _ = make_folder(tmp_path)
    import_folder(store, folder, label_mode="vote")
    out = tmp_path / "export"
    export_dataset(store, out)
    token = "hf_dataset_secret_123"
    with FakeHub() as hub:
        push_dataset(out, "me/emotion-labels", token=token, endpoint=hub.url)
        repo = hub.repos["me/emotion-labels"]
        sent = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert repo.private
        assert repo.files == sent
        assert all(r.authorization == f"Bearer {token}" for r in hub.requests if r.method == "POST")
    assert token not in caplog.text
