"""The schedule: new-label counting since the last run, the threshold, the file lock (two schedulers at once run
retraining once), the loop, and a real tick that runs train.retrain end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from labeling.store import Store, now_iso
from tests.retrain_helpers import add_text, cli_args, fill_store, small_config
from train.schedule import build_parser, main, new_labels, parse_every, retrain_lock, run_once

REPO = Path(__file__).resolve().parents[1]
FAKE_RETRAIN = """
import json, os, pathlib, sys, time
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
with pathlib.Path(os.environ["FAKE_MARK"]).open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    with Store.open(tmp_path / "studio.db") as store:
        for i in range(3):
            store.vote(add_text(store, f"clip number {i}"), "ann", "happy")
    return tmp_path / "studio.db"


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch) -> Path:
    script = tmp_path / "fake_retrain.py"
    script.write_text(FAKE_RETRAIN)
    monkeypatch.setenv("FAKE_MARK", str(tmp_path / "calls.jsonl"))
    return script


def args_for(db: Path, *extra: str):
    args = build_parser().parse_args(["--db", str(db), "--once", *extra])
    args.retrain_args = [a for a in args.retrain_args if a != "--"]
    return args


def test_parse_every() -> None:
    assert [parse_every(t) for t in ("90s", "30m", "1h", "1d", "2.5")] == [90, 1800, 3600, 86400, 2.5]
    for bad in ("0", "abc", "-1h", "1w"):
        with pytest.raises(ValueError):
            parse_every(bad)


def test_new_labels_count_since_the_last_run(db: Path) -> None:
    with Store.open(db) as store:
        assert new_labels(store) == 3 and new_labels(store, min_votes=2) == 0
        store.record_training_run({"started": now_iso(), "decision": "rejected", "reason": "test"})
        assert new_labels(store) == 0
        clip = store.votes()[0]["clip_id"]
        store.vote(clip, "second", "sad")
        assert new_labels(store) == 1 and new_labels(store, min_votes=2) == 1


def test_a_tick_runs_retraining_only_at_the_threshold(db: Path, fake: Path, tmp_path: Path) -> None:
    command = f"{sys.executable} {fake}"
    waiting = run_once(args_for(db, "--min-new", "4", "--command", command))
    assert waiting == {"ran": False, "reason": "3 new labels since the last run; waiting for 4"}
    assert not (tmp_path / "calls.jsonl").exists()
    ran = run_once(args_for(db, "--min-new", "3", "--command", command, "--", "--push", "me/emo"))
    assert ran["ran"] and ran["returncode"] == 0 and ran["new_labels"] == 3
    (call,) = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert call[:2] == ["--db", str(db)] and call[3] == ran["out"] and call[4:] == ["--no-lock", "--push", "me/emo"]
    assert Path(ran["log"]).parent == tmp_path / "retrain"  # where the app's Model tab reads retraining logs


def test_a_held_lock_skips_the_tick(db: Path, fake: Path, tmp_path: Path) -> None:
    result = {}
    with retrain_lock(db):
        worker = threading.Thread(
            target=lambda: result.update(
                run_once(args_for(db, "--min-new", "1", "--command", f"{sys.executable} {fake}"))
            )
        )
        worker.start()
        worker.join(timeout=30)
    assert result == {"ran": False, "reason": "another retraining run holds the lock"}


def test_a_tick_and_a_cli_run_refuse_while_the_app_started_run_holds_the_lock(tmp_path: Path, fake: Path) -> None:
    from backend.settings import load_settings
    from labeling import service
    from train.retrain import RetrainConfig, RetrainError, retrain_lock_held

    db = tmp_path / "elsewhere" / "studio.db"  # outside the app's data dir
    with Store.open(db) as store:
        store.vote(add_text(store, "a clip"), "ann", "happy")
    settings = load_settings(data_dir=tmp_path / "data", db_path=db)
    job = service.start_retraining(settings, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tick = run_once(args_for(db, "--min-new", "1", "--command", f"{sys.executable} {fake}"))
        assert tick == {"ran": False, "reason": "another retraining run holds the lock"}
        with (
            pytest.raises(RetrainError, match="Another retraining run"),
            retrain_lock_held(RetrainConfig(db=str(db)), True),
        ):
            pass
    finally:
        os.kill(job.pid, signal.SIGTERM)
        os.waitpid(job.pid, 0)
    assert not (tmp_path / "calls.jsonl").exists()
    after = run_once(args_for(db, "--min-new", "1", "--command", f"{sys.executable} {fake}"))
    assert after["ran"] and after["returncode"] == 0  # the app's run ended: the lock is free again


def test_two_schedulers_at_once_retrain_once(db: Path, fake: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_SLEEP": "4"}
    command = [
        "-m",
        "train.schedule",
        "--db",
        str(db),
        "--once",
        "--min-new",
        "1",
        "--command",
        f"{sys.executable} {fake}",
    ]
    procs = [
        subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(r["ran"] for r in results) == [False, True]
    assert next(r for r in results if not r["ran"])["reason"] == "another retraining run holds the lock"
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 1


def test_the_loop_ticks_every_interval(db: Path, capsys) -> None:
    assert main(["--db", str(db), "--every", "0.1s", "--ticks", "2", "--min-new", "100"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and not any(line["ran"] for line in lines)


def test_a_real_tick_retrains_and_resets_the_count(
    tmp_path, monkeypatch, shared_data, tiny_model_dir, tiny_backbones
) -> None:
    db = tmp_path / "studio.db"
    fill_store(db, shared_data, per_actor=4, n_texts=8)
    config = small_config(tmp_path, db, tiny_model_dir, tiny_backbones["cache"], shared_data, epochs=1, min_gain=-1.0)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = run_once(args_for(db, "--min-new", "10", "--", *cli_args(config, exclude=("db", "out", "lock"))))
    assert result["ran"] and result["returncode"] == 0, Path(result["log"]).read_text()[-3000:]
    with Store.open(db) as store:
        (run,) = store.training_runs()
        assert run["decision"] == "promoted" and new_labels(store) == 0
    assert (Path(result["out"]) / "challenger" / "config.json").exists()
    assert run_once(args_for(db, "--min-new", "10"))["ran"] is False


def test_the_workflow_runs_the_schedule_hourly() -> None:
    import shlex

    import yaml

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())
    assert workflow[True]["schedule"][0]["cron"].split()[1:] == ["*", "*", "*", "*"]  # every hour
    assert workflow["concurrency"] == {"group": "retrain", "cancel-in-progress": False}
    (step,) = [s for s in workflow["jobs"]["retrain"]["steps"] if "train.schedule" in s.get("run", "")]
    line = next(line for line in step["run"].splitlines() if "train.schedule" in line)
    argv = shlex.split(line.replace('"${extra[@]}"', "-- --push me/emo"))[3:]
    args = build_parser().parse_args([a.replace("$EMO_DATA_DIR", "/data").replace("$MIN_NEW", "50") for a in argv])
    assert (
        args.once
        and args.min_new == 50
        and str(args.db) == "/data/studio.db"
        and args.retrain_args[-2:] == ["--push", "me/emo"]
    )
