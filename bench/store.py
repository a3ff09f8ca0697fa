"""Label-store write throughput: votes per second with 1, 8 and 50 writer threads; prints JSON.

    python bench/store.py                      # both durability settings, default sizes
    python bench/store.py --votes 2000 --synchronous FULL

Each run uses a fresh database in a temporary folder, one annotator per (thread, round) and a
vote per clip, so every call is a committed BEGIN IMMEDIATE transaction. FULL (the store's
default) fsyncs the WAL at every commit; NORMAL skips that fsync (safe against a process crash,
not against power loss). Also times the queue (next_item + vote) with 1 and 8 threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labels import LABELS
from labeling import Store

N_CLIPS = 200


def _run_threads(n_threads: int, work) -> float:
    barrier = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []

    def target(t: int) -> None:
        barrier.wait()
        try:
            work(t)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=target, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def bench_votes(n_threads: int, total: int, synchronous: str) -> float:
    """Votes per second with n_threads writers sharing one Store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db", k=3, gold_rate=0.0, synchronous=synchronous)
        clips = [store.add_clip(f"clip{i}".encode(), modalities=["speech"]) for i in range(N_CLIPS)]
        per_thread = max(1, total // n_threads)

        def work(t: int) -> None:
            for i in range(per_thread):
                store.vote(clips[i % N_CLIPS], f"t{t}-{i // N_CLIPS}", [LABELS[i % len(LABELS)]])

        seconds = _run_threads(n_threads, work)
        assert store.db["votes"].count == per_thread * n_threads
        store.close()
    return per_thread * n_threads / seconds


def bench_queue(n_threads: int, total: int, synchronous: str) -> float:
    """(next_item + vote) pairs per second over a queue of clips with predictions."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db", k=3, gold_rate=0.1, synchronous=synchronous)
        for i in range(N_CLIPS * 5):
            clip = store.add_clip(f"clip{i}".encode(), modalities=["speech"], consent=True)
            store.add_prediction(clip, "v1", {LABELS[i % 7]: 0.5 + (i % 10) / 20, LABELS[(i + 1) % 7]: 0.5})
            if i % 20 == 0:
                store.add_gold(clip, LABELS[i % 7])
        per_thread = max(1, total // n_threads)
        done = [0] * n_threads

        def work(t: int) -> None:
            for _ in range(per_thread):
                item = store.next_item(f"q{t}")
                if item is None:
                    return
                store.vote(item["id"], f"q{t}", ["happy"])
                done[t] += 1

        seconds = _run_threads(n_threads, work)
        store.close()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--votes", type=int, default=0, help="votes per run (default: 600 FULL, 5000 NORMAL)")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], action="append")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 50])
    args = parser.parse_args()
    report: dict = {"python": platform.python_version(), "machine": platform.machine(), "votes_per_s": {}}
    for sync in args.synchronous or ["FULL", "NORMAL"]:
        total = args.votes or (600 if sync == "FULL" else 5000)
        report["votes_per_s"][sync] = {str(n): round(bench_votes(n, total, sync), 1) for n in args.threads}
        report.setdefault("queue_items_per_s", {})[sync] = {
            str(n): round(bench_queue(n, total // 5, sync), 1) for n in (1, 8)
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
