"""Votes under load, counted: are any lost, doubled, or reported failed although stored? (issue 17)

Starts `python app.py` on a fresh store (bench/serve.py's helpers), then three phases of `--seconds` each:
one annotator alone (the unloaded figure), `--annotators` at once, then as many while `--predictors` clients
analyse 4 s clips back to back.
Every vote goes out as an API client should send it (README, "Labelling from a script"): with its clip id
and a fresh vote_key, and after a timeout or error the same call again (up to `--attempts`). Afterwards
the store is read back and compared with what the clients were told:

    lost: acknowledged votes that are not stored;  duplicated: stored votes no key accounts for (a retry
    that landed on another clip) or keys stored twice;  failed_but_stored: votes the client finally gave
    up on although the store has them.

    python bench/crowd_votes.py --annotators 50 --predictors 4 --seconds 60 --think 2 --timeout 10
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from bench.serve import client as bench_client  # noqa: E402
from bench.serve import figures, free_port, seed, start_app, timed, wait_up  # noqa: E402
from train.corpora import ravdess, shared_data_dir  # noqa: E402

LABELS3 = ("sad", "happy", "angry")


class Ledger:
    """What the clients were told, per (annotator, vote_key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: set[tuple[str, str]] = set()
        self.failed: set[tuple[str, str]] = set()
        self.retries = 0
        self.latency: list[float] = []  # first attempt to acknowledgement, retries included


def annotator(url: str, name: str, stop: float, think: float, timeout: float, attempts: int, book: Ledger) -> None:
    client = bench_client(url)
    clip_id = None
    for attempt in range(attempts):  # Start is safe to repeat too: it hands out the clip already held
        try:
            *_, clip_id, _note = client.predict(name=name, api_name="/next_item")
            break
        except Exception:
            time.sleep(min(2**attempt, 8))
    n = 0
    while time.perf_counter() < stop and clip_id:
        time.sleep(think)
        key = uuid.uuid4().hex
        ask = {"labels": [LABELS3[n % 3]], "unsure": False, "note": "", "clip_id": clip_id, "vote_key": key}
        started, answer = time.perf_counter(), None
        for attempt in range(attempts):
            box: list = []  # this attempt's answer (a timed-out attempt may still finish into its own box)
            try:
                timed(lambda box=box, ask=ask: box.append(client.predict(**ask, api_name="/vote")), timeout)
                answer = box[0]
                break
            except Exception:  # a timeout, a dropped connection, 'busy, try again': the same call again
                with book.lock:
                    book.retries += 1
                time.sleep(min(2**attempt, 8))
        with book.lock:
            if answer is None:
                book.failed.add((f"name:{name}", key))
            else:
                book.acked.add((f"name:{name}", key))
                book.latency.append(time.perf_counter() - started)
        if answer is None:
            return
        clip_id = answer[-2]
        n += 1


def predictor(url: str, clips: list[Path], stop: float, k: int, step: int, errors: list[str]) -> None:
    from gradio_client import handle_file

    client = bench_client(url)
    while time.perf_counter() < stop:
        try:
            client.predict(audio=handle_file(str(clips[k % len(clips)])), api_name="/predict")
        except Exception as exc:
            errors.append(type(exc).__name__)
        k += step


def phase(
    url: str, clips: list[Path], args: argparse.Namespace, annotators: int, predictors: int, tag: str
) -> tuple[Ledger, list]:
    book, errors = Ledger(), []
    stop = time.perf_counter() + args.seconds
    threads = [
        threading.Thread(target=annotator, args=(url, f"{tag}{i}", stop, args.think, args.timeout, args.attempts, book))
        for i in range(annotators)
    ]
    threads += [
        threading.Thread(target=predictor, args=(url, clips, stop, i, predictors, errors)) for i in range(predictors)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return book, errors


def audit(db: Path, book: Ledger, tag: str) -> dict:
    """Compare the ledger with the store once every call has finished."""
    with sqlite3.connect(db) as conn:
        keys = conn.execute(
            "SELECT annotator_id, request_id FROM vote_requests WHERE annotator_id LIKE ?", [f"name:{tag}%"]
        ).fetchall()
        votes = conn.execute("SELECT COUNT(*) FROM votes WHERE annotator_id LIKE ?", [f"name:{tag}%"]).fetchone()[0]
        keyed = conn.execute(
            """SELECT COUNT(*) FROM votes v WHERE v.annotator_id LIKE ? AND EXISTS (SELECT 1 FROM vote_requests r
               WHERE r.annotator_id = v.annotator_id AND r.clip_id = v.clip_id)""",
            [f"name:{tag}%"],
        ).fetchone()[0]
    stored = set(keys)
    return {
        "votes_acknowledged": len(book.acked),
        "votes_given_up": len(book.failed),
        "votes_stored": votes,
        "retries": book.retries,
        "lost": len(book.acked - stored),
        "duplicated": (votes - keyed) + (len(keys) - len(stored)),
        "failed_but_stored": len(book.failed & stored),
        "vote": figures(book.latency),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotators", type=int, default=50)
    p.add_argument("--predictors", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    p.add_argument("--think", type=float, default=2.0, help="seconds an annotator takes between votes")
    p.add_argument("--timeout", type=float, default=10.0, help="client-side seconds before a vote is sent again")
    p.add_argument("--attempts", type=int, default=6)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--queue", type=int, default=64)
    p.add_argument("--asr", action="store_true")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    clips = [ex.path for ex in ravdess(Path(args.data) / "ravdess-speech-16k", [17, 18])]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    report: dict = {"annotators": args.annotators, "predictors": args.predictors, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp), clips)
        proc = start_app(Path(tmp), port, args)
        try:
            wait_up(url, proc)
            phases = (("unloaded", 1, 0), ("crowd", args.annotators, 0), ("loaded", args.annotators, args.predictors))
            for tag, annotators, predictors in phases:
                book, errors = phase(url, clips, args, annotators, predictors, tag)
                time.sleep(args.timeout + 5)  # calls a client stopped waiting for finish on the server
                report[tag] = audit(Path(tmp) / "studio.db", book, tag) | {"predict_errors": len(errors)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report["load_avg"] = os.getloadavg()
    return emit(report, args.out)


if __name__ == "__main__":
    main()
