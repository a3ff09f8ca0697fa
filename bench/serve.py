"""Serving under load: start `python app.py` on a fresh store, drive it with N concurrent gradio_client clients.

Each client (its own session) repeats: /predict on a RAVDESS clip, then /next_item + /vote as an annotator.
The store is seeded first with consented clips (predict + correct) so there is something to vote on.

    python bench/serve.py --clients 1,8,32 --rounds 3 --out runs/bench/serve.json [--concurrency 2 --queue 64]

Prints p50/p95 latency per endpoint and client count, requests/s and errors (queue full, timeouts, exceptions).

Two more scenarios (issue 16), each printed beside the same requests on an unloaded app:

    python bench/serve.py --scenario crowd --annotators 20 --predictors 4 --seconds 90 --think 2 --asr
    python bench/serve.py --scenario hol --long-minutes 10 --asr

crowd: annotators vote (one /vote a `think` seconds after the last answer) while clients predict 4 s clips back
to back; vote latency with and without the predicting clients, and of one annotator alone. hol (head of line): text-only and 4 s clip
requests sent one after another while a long clip is analysed, against the same requests alone.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
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


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def client(url: str, per_call_tls: bool = False, **kwargs):
    """A gradio_client Client whose HTTP calls share one TLS context.

    gradio_client opens a fresh httpx client for every call (post, event stream, file download, heartbeat),
    and each builds a TLS context from certifi's CA bundle even for an http:// URL: ~170 ms of CPU per vote on
    this 2-core box, against ~35 ms for the app's own work, so 20 simulated annotators spent most of the
    server's cores on themselves (`--per-call-tls` keeps that, for comparison). Browsers keep their
    connections and run elsewhere; with the shared context a vote costs the client ~9 ms."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=True if per_call_tls else _tls_context(), **kwargs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process `pid` has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def drive(url: str, clips: list[Path], n_clients: int, rounds: int, timeout: float, per_call_tls: bool = False) -> dict:
    """n_clients threads, each with its own Client; returns latencies per endpoint and errors."""
    from gradio_client import handle_file

    lat: dict[str, list[float]] = {"predict": [], "vote": []}
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            session = client(url, per_call_tls)
        except Exception as exc:
            with lock:
                errors.append(f"connect: {type(exc).__name__}: {exc}"[:200])
            return
        for r in range(rounds):
            clip = clips[(i * rounds + r) % len(clips)]
            for name, fn in (
                ("predict", lambda clip=clip: session.predict(audio=handle_file(str(clip)), api_name="/predict")),
                (
                    "vote",
                    lambda: (
                        session.predict(name=f"bench{i}", api_name="/next_item"),
                        session.predict(labels=["sad"], unsure=False, note="", api_name="/vote"),
                    ),
                ),
            ):
                try:
                    seconds = timed(fn, timeout)
                    with lock:
                        lat[name].append(seconds)
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


TEXT = "I am so happy and grateful today, this is wonderful news!"


def timed(fn: Callable[[], object], timeout: float) -> float:
    """Seconds fn() took; TimeoutError after `timeout` (the call is left running in a daemon thread)."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            box.append(exc)

    start = time.perf_counter()
    job = threading.Thread(target=run, daemon=True)
    job.start()
    job.join(timeout)
    if job.is_alive():
        raise TimeoutError(f"no answer in {timeout} s")
    if box:
        raise box[0]
    return time.perf_counter() - start


def figures(values: list[float]) -> dict:
    """n, p50, p95, max in seconds."""
    v = np.array(values) if values else np.array([np.nan])
    return {
        "n": len(values),
        "p50_s": round(float(np.median(v)), 3),
        "p95_s": round(float(np.percentile(v, 95)), 3),
        "max_s": round(float(v.max()), 3),
    }


def crowd(
    url: str,
    clips: list[Path],
    annotators: int,
    predictors: int,
    seconds: float,
    think: float,
    tag: str = "",
    per_process: int = 5,
    per_call_tls: bool = False,
    server_pid: int | None = None,
) -> dict:
    """Annotators voting and clients predicting for `seconds`; latencies per endpoint. `tag` keeps the annotator
    names of different phases apart (a name seen before needs its key).

    The simulated clients run in several processes, `per_process` clients each (0: all in this one). In one
    process, 20 gradio_client sessions kept a core busy under one GIL (75-105% CPU against the app's 15-27%,
    `python bench/serve.py --scenario crowd --annotators 20 --predictors 0`), so the bench timed its own queue for
    the GIL. Browsers do not share a GIL; separate processes come closer (they still share this box's cores).
    Processes get 5 s to start, then every client runs until the same wall-clock end, so a phase lasts up to
    `seconds` + 5 and counts a few more votes; latencies are per request either way.
    CPU seconds used by the simulated clients (`load_cpu_s`) and by the app (`server_cpu_s`, with `server_pid`)
    come with the latencies: on a 2-core box both share the cores."""
    import resource
    from concurrent.futures import ProcessPoolExecutor

    roles = [("annotator", i) for i in range(annotators)] + [("predictor", i) for i in range(predictors)]
    size = per_process or max(1, len(roles))
    groups = [roles[k : k + size] for k in range(0, len(roles), size)]
    stop = time.time() + seconds + 5.0 * bool(per_process)  # wall clock: shared by processes; 5 s to start them
    lat: dict[str, list[float]] = {"vote": [], "predict": []}
    errors: list[str] = []

    def used() -> float:  # this process and its finished children (the client processes, once the pool is shut)
        return sum(
            getattr(resource.getrusage(who), f)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for f in ("ru_utime", "ru_stime")
        )

    load0, server0, wall0 = used(), cpu_seconds(server_pid) if server_pid else 0.0, time.perf_counter()
    if not groups:
        parts = []
    elif not per_process:
        parts = [crowd_clients(url, clips, groups[0], predictors, stop, think, tag, per_call_tls)]
    else:
        with ProcessPoolExecutor(len(groups)) as pool:
            jobs = [
                pool.submit(crowd_clients, url, clips, g, predictors, stop, think, tag, per_call_tls) for g in groups
            ]
            parts = [job.result() for job in jobs]
    wall = time.perf_counter() - wall0
    cpu = {"wall_s": round(wall, 1), "load_cpu_s": round(used() - load0, 1)}
    if server_pid:
        cpu["server_cpu_s"] = round(cpu_seconds(server_pid) - server0, 1)
    for part in parts:
        for name in lat:
            lat[name] += part["lat"][name]
        errors += part["errors"]
    return {
        "annotators": annotators,
        "predictors": predictors,
        "think_s": think,
        "seconds": seconds,
        "client_processes": len(groups) if per_process else 1,
        "per_call_tls": per_call_tls,
        **cpu,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        **{name: figures(values) for name, values in lat.items()},
    }


def crowd_clients(
    url: str,
    clips: list[Path],
    roles: list[tuple[str, int]],
    predictors: int,
    stop: float,
    think: float,
    tag: str,
    per_call_tls: bool = False,
) -> dict:
    """One process's share of crowd(): a thread per client until the wall-clock time `stop`; its latencies."""
    from gradio_client import handle_file

    lat: dict[str, list[float]] = {"vote": [], "predict": []}
    errors: list[str] = []
    lock = threading.Lock()

    def record(name: str, fn: Callable[[], object], timeout: float = 120.0) -> None:
        try:
            took = timed(fn, timeout)
            with lock:
                lat[name].append(took)
        except Exception as exc:
            with lock:
                errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])

    def annotator(i: int) -> None:
        try:
            session = client(url, per_call_tls)
            session.predict(name=f"bench{tag}{i}", api_name="/next_item")
        except Exception as exc:
            with lock:
                errors.append(f"start: {type(exc).__name__}: {exc}"[:200])
            return
        while time.time() < stop:
            time.sleep(think)
            label = ["sad", "happy", "angry"][len(lat["vote"]) % 3]
            record("vote", lambda label=label: session.predict(labels=[label], unsure=False, note="", api_name="/vote"))

    def predictor(i: int) -> None:
        session = client(url, per_call_tls)
        k = i
        while time.time() < stop:
            clip = clips[k % len(clips)]
            record("predict", lambda clip=clip: session.predict(audio=handle_file(str(clip)), api_name="/predict"))
            k += predictors

    threads = [threading.Thread(target=annotator if role == "annotator" else predictor, args=(i,)) for role, i in roles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "errors": errors}


def long_clip(clips: list[Path], minutes: float, folder: Path) -> Path:
    """A `minutes`-long wav of RAVDESS clips one after another (16-bit PCM)."""
    import soundfile as sf

    parts, total, k = [], 0, 0
    while total < minutes * 60 * 16_000:
        audio, _ = sf.read(str(clips[k % len(clips)]), dtype="float32")
        parts.append(audio)
        total += len(audio)
        k += 1
    path = folder / f"long-{minutes:g}min.wav"
    sf.write(str(path), np.concatenate(parts)[: int(minutes * 60 * 16_000)], 16_000, subtype="PCM_16")
    return path


def probe_requests(session, short: Path, rounds: int, until: Callable[[], bool] | None = None) -> dict:
    """Text-only and 4 s clip requests one after another: `rounds` of each, or while until() is false."""
    from gradio_client import handle_file

    lat: dict[str, list[float]] = {"text_only": [], "short_clip": []}
    for r in range(rounds):
        if until is not None and until():
            break
        lat["text_only"].append(timed(lambda r=r: session.predict(text=f"{TEXT} ({r})", api_name="/predict"), 120))
        lat["short_clip"].append(
            timed(lambda: session.predict(audio=handle_file(str(short)), api_name="/predict"), 120)
        )
    return lat


def head_of_line(
    url: str, clips: list[Path], minutes: float, rounds: int, folder: Path, per_call_tls: bool = False
) -> dict:
    """Short requests alone, then the same while a long clip is analysed; ratios of their medians."""
    from gradio_client import handle_file

    short = clips[0]
    session, long_session = client(url, per_call_tls), client(url, per_call_tls)
    probe_requests(session, short, 2)  # warm-up: first requests load engines and caches
    alone = probe_requests(session, short, rounds)
    path = long_clip(clips, minutes, folder)
    done: dict[str, float | str] = {}

    def analyse_long() -> None:
        try:
            done["seconds"] = timed(
                lambda: long_session.predict(audio=handle_file(str(path)), api_name="/predict"), 3600
            )
        except Exception as exc:
            done["error"] = f"{type(exc).__name__}: {exc}"[:300]

    job = threading.Thread(target=analyse_long)
    job.start()
    time.sleep(5.0)  # the long clip is uploaded and its analysis under way
    loaded = probe_requests(session, short, 10_000, until=lambda: bool(done))
    job.join()
    report: dict = {"long_clip_minutes": minutes, "long_clip": done}
    for name in alone:
        report[name] = {"alone": figures(alone[name]), "during_long_clip": figures(loaded[name])}
        report[name]["ratio_p50"] = round(report[name]["during_long_clip"]["p50_s"] / report[name]["alone"]["p50_s"], 2)
        report[name]["ratio_p95"] = round(report[name]["during_long_clip"]["p95_s"] / report[name]["alone"]["p95_s"], 2)
    return report


def run_scenario(args: argparse.Namespace, url: str, clips: list[Path], folder: Path, server_pid: int) -> dict:
    tls = args.per_call_tls
    if args.scenario == "crowd":
        phase = functools.partial(
            crowd,
            url,
            clips,
            seconds=args.seconds,
            think=args.think,
            per_process=args.clients_per_process,
            per_call_tls=tls,
            server_pid=server_pid,
        )
        loaded = phase(annotators=args.annotators, predictors=args.predictors, tag="a")
        alone = phase(annotators=args.annotators, predictors=0, tag="b")
        one = phase(annotators=1, predictors=0, tag="c")  # the floor: one vote at a time, nothing else
        predict_alone = phase(annotators=0, predictors=args.predictors, tag="")
        return {
            "with_predictors": loaded,
            "annotators_alone": alone,
            "one_annotator": one,
            "predictors_alone": predict_alone,
        }
    if args.scenario == "hol":
        return head_of_line(url, clips, args.long_minutes, args.rounds, folder, tls)
    return {"runs": [drive(url, clips, int(n), args.rounds, args.timeout, tls) for n in args.clients.split(",")]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--rounds", type=int, default=3, help="predict + vote rounds per client")
    p.add_argument("--concurrency", type=int, default=2, help="EMO_CONCURRENCY (the queue's concurrency limit)")
    p.add_argument("--queue", type=int, default=64, help="EMO_QUEUE_SIZE (the queue's max size)")
    p.add_argument("--asr", action="store_true", help="transcribe (the app's default); off: speech branch only")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as an error")
    p.add_argument("--scenario", choices=["mixed", "crowd", "hol"], default="mixed")
    p.add_argument("--annotators", type=int, default=20, help="crowd: annotators voting")
    p.add_argument("--predictors", type=int, default=4, help="crowd: clients predicting 4 s clips back to back")
    p.add_argument("--seconds", type=float, default=90.0, help="crowd: how long each phase runs")
    p.add_argument("--think", type=float, default=2.0, help="crowd: seconds an annotator takes between votes")
    p.add_argument(
        "--clients-per-process",
        type=int,
        default=5,
        help="crowd: simulated clients per load process (0: all in one process, as before: its GIL was the bottleneck)",
    )
    p.add_argument(
        "--per-call-tls",
        action="store_true",
        help="the clients build a TLS context per HTTP call, as gradio_client does by default (sessions 1-5's load)",
    )
    p.add_argument("--long-minutes", type=float, default=10.0, help="hol: length of the long clip")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    clips = [ex.path for ex in ravdess(Path(args.data) / "ravdess-speech-16k", [17, 18])]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp), clips if args.scenario == "crowd" else clips[:16])  # crowd: enough to vote on for minutes
        proc = start_app(Path(tmp), port, args)
        try:
            t0 = time.perf_counter()
            wait_up(url, proc)
            started = time.perf_counter() - t0
            results = run_scenario(args, url, clips, Path(tmp), proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report = {
        "concurrency": args.concurrency,
        "queue": args.queue,
        "asr": args.asr,
        "startup_s": round(started, 1),
        "scenario": args.scenario,
        "per_call_tls": args.per_call_tls,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        **results,
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
