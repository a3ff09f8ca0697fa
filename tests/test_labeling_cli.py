"""`python -m labeling stats|import|export|delete`: JSON out, errors as exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from huggingface_hub import HfApi

from labeling import Store
from labeling.__main__ import main

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO.parent / "shared" / "data" / "ravdess-speech-16k" / "Actor_02"


@pytest.fixture
def db(tmp_path):
    return tmp_path / "data" / "studio.db"


def cli(capsys, db: Path, *args: str) -> tuple[int, dict]:
    code = main(["--db", str(db), *args])
    captured = capsys.readouterr()
    text = captured.out if code == 0 else captured.err.strip().splitlines()[-1]  # after any progress bars
    return code, json.loads(text)


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    files = sorted(RAVDESS.glob("03-01-0[3-5]-01-01-01-*.flac"))
    assert len(files) == 3, f"expected RAVDESS files in {RAVDESS}"
    with (folder / "metadata.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label"])
        for src, label in zip(files, ["happy", "sad", "angry"], strict=True):
            shutil.copy(src, folder / src.name)
            writer.writerow([src.name, label])
    return folder


def test_stats_on_a_fresh_database(capsys, db):
    code, report = cli(capsys, db, "stats")
    assert code == 0 and report["clips"] == 0 and report["votes"] == 0
    assert db.exists()


def test_import_then_stats_with_agreement(capsys, db, tmp_path):
    code, report = cli(capsys, db, "import", str(make_folder(tmp_path)), "--labels", "vote")
    assert code == 0 and report == {"rows": 3, "labelled": 3}
    code, report = cli(capsys, db, "stats", "--agreement")
    assert code == 0 and report["clips"] == 3 and report["votes"] == 3
    assert report["agreement"]["annotators"]["import"]["votes"] == 3


def test_import_a_saved_dataset(capsys, db, tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["yay", "boo"], "label": ["joy", "sadness"]}).save_to_disk(str(saved))
    code, report = cli(capsys, db, "import", str(saved))
    assert code == 0 and report == {"rows": 2, "labelled": 2}
    with Store.open(db) as store:
        assert store.stats()["gold_clips"] == 2


def test_import_of_something_else_fails_cleanly(capsys, db, tmp_path):
    code, report = cli(capsys, db, "import", str(tmp_path))
    assert code == 1 and "metadata.csv" in report["error"]


def test_export_writes_parquet(capsys, db, tmp_path):
    cli(capsys, db, "import", str(make_folder(tmp_path)), "--labels", "vote")
    out = tmp_path / "export"
    code, report = cli(capsys, db, "export", str(out))
    assert code == 0 and report["rows"] == 3
    assert len(list((out / "data").glob("*.parquet"))) == 1


def test_export_push_uses_hf_token_and_never_prints_it(capsys, db, tmp_path, monkeypatch):
    cli(capsys, db, "import", str(make_folder(tmp_path)))
    api = mock.create_autospec(HfApi, instance=True)
    api.upload_folder.return_value = mock.Mock(commit_url="https://hub.example/c/1")
    monkeypatch.setattr("huggingface_hub.HfApi", mock.Mock(return_value=api))
    monkeypatch.setenv("HF_TOKEN", "hf_cli_secret")
    code = main(["--db", str(db), "export", str(tmp_path / "out"), "--push", "me/labels"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["commit"] == "https://hub.example/c/1"
    assert api.create_repo.call_args.kwargs["private"] is True
    assert "hf_cli_secret" not in captured.out + captured.err


def test_export_push_without_token_fails(capsys, db, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, report = cli(capsys, db, "export", str(tmp_path / "out"), "--push", "me/labels")
    assert code == 1 and "HF_TOKEN" in report["error"]
    assert not (tmp_path / "out").exists()  # checked before any work


def test_delete_clip_and_annotator(capsys, db):
    with Store.open(db) as store:
        clip = store.add_clip(b"x", modalities=["speech"], consent=True)
        store.vote(clip, "alice", ["happy"])
        other = store.add_clip(b"y", modalities=["speech"], consent=True)
        store.vote(other, "bob", ["sad"])
    code, report = cli(capsys, db, "delete", "--clip", clip)
    assert code == 0 and report["clips"] == 1 and report["votes"] == 1 and report["files"] == 1
    code, report = cli(capsys, db, "delete", "--annotator", "bob")
    assert code == 0 and report["annotators"] == 1 and report["votes"] == 1
    code, report = cli(capsys, db, "delete", "--clip", clip)
    assert code == 1 and "not in the store" in report["error"]


def test_delete_needs_a_target(capsys, db):
    with pytest.raises(SystemExit) as exc:
        main(["--db", str(db), "delete"])
    assert exc.value.code != 0


def test_undocumented_subcommand_fails(db):
    with pytest.raises(SystemExit) as exc:
        main(["--db", str(db), "frobnicate"])
    assert exc.value.code != 0
    result = subprocess.run(
        [sys.executable, "-m", "labeling", "--db", str(db), "frobnicate"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode != 0 and "invalid choice" in result.stderr


def test_module_entry_point_prints_json(db):
    result = subprocess.run(
        [sys.executable, "-m", "labeling", "--db", str(db), "stats"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["annotators"] == 0
