"""Retrain when enough new labels arrived: once (cron), or in a loop; never two runs at the same time.

    python -m train.schedule --db data/studio.db --once                  # from cron
    python -m train.schedule --db data/studio.db --every 1h --min-new 50 # a loop, e.g. beside the app
    python -m train.schedule --db data/studio.db --once --push me/emo --command "accelerate launch -m train.retrain"

cron, hourly:  0 * * * *  cd /srv/studio && python -m train.schedule --db data/studio.db --once >> data/retrain/schedule.log 2>&1

A tick counts the clips whose aggregated label changed (a vote arrived) since the last recorded training run;
at --min-new or more it runs the retraining command (default `python -m train.retrain`) with --db, --out and
--no-lock while holding the store's retraining lock (labeling.runlock: a file beside the database), so a tick,
another scheduler, a CLI run or a run started from the app never overlap. The run's output goes to
<db folder>/retrain/<time>.log, where the app's Model tab shows it. Arguments after `--` are passed on to the retraining command.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from labeling import runlock
from labeling.store import Store

log = logging.getLogger(__name__)

RETRAIN_DIR = runlock.RETRAIN_DIR  # beside the database: logs, runs and the lock (the app's Model tab reads these logs)
LOCK_FILE = runlock.LOCK_FILE
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def retrain_dir(db: str | Path) -> Path:
    return runlock.retrain_dir(db)


def retrain_lock(db: str | Path) -> FileLock:
    """The one lock every retraining run on this store holds (labeling.runlock's file: train.retrain unless told
    --no-lock, a tick, and a run the app started all take it)."""
    return FileLock(str(runlock.lock_path(db)))


def parse_every(text: str) -> float:
    """'90s', '30m', '1h', '1d' or plain seconds -> seconds (> 0)."""
    match = _DURATION.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 1h or 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def last_run_started(store: Store) -> str | None:
    row = store.db.execute("SELECT MAX(started) FROM training_runs").fetchone()
    return row[0] if row else None


def new_labels(store: Store, min_votes: int = 1) -> int:
    """Clips with at least min_votes votes whose latest vote is newer than the last training run's start."""
    since = last_run_started(store) or ""
    row = store.db.execute(
        """SELECT COUNT(*) FROM (SELECT clip_id, COUNT(*) AS n, MAX(created) AS last FROM votes GROUP BY clip_id)
           WHERE n >= ? AND last > ?""",
        [min_votes, since],
    ).fetchone()
    return int(row[0])


def retrain_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [*shlex.split(args.command), "--db", str(args.db), "--out", str(out), "--no-lock", *args.retrain_args]


def run_once(args: argparse.Namespace) -> dict:
    """One tick: skip if a run holds the lock or too few new labels; else run retraining and wait for it."""
    lock = retrain_lock(args.db)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return {"ran": False, "reason": "another retraining run holds the lock"}
    try:
        with Store.open(args.db) as store:
            pending = new_labels(store, args.min_votes)
        if pending < args.min_new:
            return {"ran": False, "reason": f"{pending} new labels since the last run; waiting for {args.min_new}"}
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = retrain_dir(args.db)
        command = retrain_command(args, folder / "runs" / stamp)
        log.info("%d new labels: running %s", pending, shlex.join(command[:3]))
        with open(folder / f"{stamp}.log", "ab") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        return {
            "ran": True,
            "new_labels": pending,
            "returncode": code,
            "out": str(folder / "runs" / stamp),
            "log": str(folder / f"{stamp}.log"),
        }
    finally:
        lock.release()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.schedule", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--db", required=True, type=Path, help="the labelling store (SQLite file)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="one tick, then exit (cron)")
    when.add_argument("--every", type=parse_every, help="loop: a tick every 90s / 30m / 1h / 1d")
    p.add_argument("--min-new", type=int, default=50, help="retrain when at least this many new labels arrived")
    p.add_argument("--min-votes", type=int, default=1, help="votes a clip needs for its label to count")
    p.add_argument("--ticks", type=int, default=0, help="with --every: stop after this many ticks (0 = never)")
    p.add_argument("--command", default=f"{shlex.quote(sys.executable)} -m train.retrain", help="retraining command")
    p.add_argument("retrain_args", nargs=argparse.REMAINDER, help="after --: passed on (e.g. -- --push me/emo)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.retrain_args = [a for a in args.retrain_args if a != "--"]
    tick = 0
    while True:
        result = run_once(args)
        print(json.dumps(result), flush=True)
        tick += 1
        if args.once or (args.ticks and tick >= args.ticks):
            return 0 if result.get("returncode", 0) == 0 else 1
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
