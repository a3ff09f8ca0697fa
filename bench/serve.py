"""Serving under load: start `python app.py` on a fresh store, drive it with N concurrent gradio_client clients.

Each client (its own session) repeats: /predict on a RAVDESS clip, then /next_item + /vote as an annotator.
The store is seeded first with consented clips (predict + correct) so there is something to vote on.

    python bench/serve.py --clients 1,8,32 --rounds 3 --out runs/bench/serve.json [--concurrency 2 --queue 64]

Prints p50/p95 latency per endpoint and client count, requests/s and errors (queue full, timeouts, exceptions).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.corpora import ravdess, shared_data_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(data_dir: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {
        **os.environ,
        "EMO_DATA_DIR": str(data_dir),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "EMO_CONCURRENCY": str(args.concurrency),
        "EMO_QUEUE_SIZE": str(args.queue),
        "EMO_RATE_LIMIT_PER_MINUTE": "1000000",
        "EMO_RATE_LIMIT_PER_IP_PER_MINUTE": "1000000",
        "EMO_VOTES_PER_CLIP": "100000",  # every client always finds a clip to vote on  # the bench measures the queue, not the per-session limit
        "EMO_ASR": "1" if args.asr else "0",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = open(data_dir / "app.log", "w")  # noqa: SIM115 - the app's process writes to it until it ends
    return subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError("the app exited while starting; see app.log")
        try:
            urllib.request.urlopen(url + "/config", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the app did not start in time")


def seed(data_dir: Path, clips: list[Path]) -> None:
    """Consented clips straight into the store (as the app keeps them), so annotators have something to vote on."""
    from labeling.store import Store

    with Store.open(data_dir / "studio.db", data_dir / "media", k=100_000, gold_rate=0.0) as store:
        for clip in clips:
            store.add_clip(clip.read_bytes(), ext=clip.suffix, modalities=["speech"], duration=3.5, consent=True)


def drive(url: str, clips: list[Path], n_clients: int, rounds: int, timeout: float) -> dict:
    """n_clients threads, each with its own Client; returns latencies per endpoint and errors."""
    from gradio_client import Client, handle_file

    lat: dict[str, list[float]] = {"predict": [], "vote": []}
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as exc:
            with lock:
                errors.append(f"connect: {type(exc).__name__}: {exc}"[:200])
            return
        for r in range(rounds):
            clip = clips[(i * rounds + r) % len(clips)]
            for name, call in (
                ("predict", lambda clip=clip: client.predict(audio=handle_file(str(clip)), api_name="/predict")),
                (
                    "vote",
                    lambda: (
                        client.predict(name=f"bench{i}", api_name="/next_item"),
                        client.predict(labels=["sad"], unsure=False, note="", api_name="/vote"),
                    ),
                ),
            ):
                t0 = time.perf_counter()
                try:
                    box: list[BaseException] = []

                    def run_call(call=call, box=box) -> None:
                        try:
                            call()
                        except BaseException as exc:
                            box.append(exc)

                    job = threading.Thread(target=run_call, daemon=True)
                    job.start()
                    job.join(timeout)
                    if job.is_alive():
                        raise TimeoutError(f"no answer in {timeout} s")
                    if box:
                        raise box[0]
                    with lock:
                        lat[name].append(time.perf_counter() - t0)
                except Exception as exc:
                    with lock:
                        errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    out: dict = {
        "clients": n_clients,
        "rounds": rounds,
        "wall_s": round(wall, 1),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }
    for name, values in lat.items():
        v = np.array(values) if values else np.array([np.nan])
        out[name] = {
            "n": len(values),
            "p50_s": float(np.median(v)),
            "p95_s": float(np.percentile(v, 95)),
            "per_s": len(values) / wall,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--rounds", type=int, default=3, help="predict + vote rounds per client")
    p.add_argument("--concurrency", type=int, default=2, help="EMO_CONCURRENCY (the queue's concurrency limit)")
    p.add_argument("--queue", type=int, default=64, help="EMO_QUEUE_SIZE (the queue's max size)")
    p.add_argument("--asr", action="store_true", help="transcribe (the app's default); off: speech branch only")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as an error")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    clips = [ex.path for ex in ravdess(Path(args.data) / "ravdess-speech-16k", [17, 18])]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp), clips[:16])
        proc = start_app(Path(tmp), port, args)
        try:
            t0 = time.perf_counter()
            wait_up(url, proc)
            started = time.perf_counter() - t0
            runs = [drive(url, clips, int(n), args.rounds, args.timeout) for n in args.clients.split(",")]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report = {
        "concurrency": args.concurrency,
        "queue": args.queue,
        "asr": args.asr,
        "startup_s": round(started, 1),
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
