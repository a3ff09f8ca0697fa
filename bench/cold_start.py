"""Cold start: seconds from `python3 app.py` to the first HTTP 200 on its page, warm cache and empty cache.

"warm": the cache (EMO_CACHE) already holds the Whisper conversion (and whatever else the app caches);
"empty": a fresh cache folder, so the Whisper wheels are converted again during the start.

    python bench/cold_start.py --repeat 3 --modes warm,empty [--drop-lexicon-cache] [--out runs/bench/cold_start.json]

--drop-lexicon-cache: the warm cache keeps the Whisper conversion only (the lexicon's cached embeddings are
removed before each start), as on a Space whose cache holds the conversion but not the lexicon.

Prints JSON: per mode the runs, median, min and max, and the app's own log lines about what took the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from bench.serve import free_port  # noqa: E402

TIMED_LOG_WORDS = ("loaded in", "embedded", "lexicon", "convert", "Running on")


def start(cache: Path, data: Path, port: int, log_path: Path) -> subprocess.Popen:
    """`python3 app.py` with its own cache, store and port (offline)."""
    env = {
        **os.environ,
        "EMO_CACHE": str(cache),
        "EMO_DATA_DIR": str(data),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def time_to_page(url: str, proc: subprocess.Popen, started: float, timeout: float) -> float:
    """Seconds from `started` to the first 200 answer on the page."""
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError("the app exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no page in {timeout} s")


def one_start(cache: Path, timeout: float, drop_lexicon: bool = False) -> dict:
    """Start the app once on `cache`, time it to its page, stop it; the log lines that say where time went."""
    if drop_lexicon:
        shutil.rmtree(cache / "lexicon", ignore_errors=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        log_path = Path(data) / "app.log"
        started = time.perf_counter()
        proc = start(cache, Path(data), port, log_path)
        try:
            seconds = time_to_page(f"http://127.0.0.1:{port}/", proc, started, timeout)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        lines = [ln.strip() for ln in log_path.read_text().splitlines() if any(w in ln for w in TIMED_LOG_WORDS)]
    return {"seconds": round(seconds, 2), "log": lines[:8]}


def _commit() -> str:
    """The git commit of the code under test (the app started from ROOT)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def summary(runs: list[dict]) -> dict:
    values = [r["seconds"] for r in runs]
    return {
        "n": len(values),
        "median_s": round(statistics.median(values), 2),
        "min_s": min(values),
        "max_s": max(values),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", default="warm,empty", help="comma-separated: warm, empty")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--drop-lexicon-cache", action="store_true", help="warm: keep only the Whisper conversion")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report: dict = {"cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(), "commit": _commit()}
    with tempfile.TemporaryDirectory() as warm_cache:
        modes = args.modes.split(",")
        if "warm" in modes:
            one_start(Path(warm_cache), args.timeout)  # fills the cache; not counted
            drop = args.drop_lexicon_cache
            report["warm"] = summary([one_start(Path(warm_cache), args.timeout, drop) for _ in range(args.repeat)])
        if "empty" in modes:
            runs = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as empty:
                    runs.append(one_start(Path(empty), args.timeout))
            report["empty"] = summary(runs)
    report["load_avg_after"] = os.getloadavg()
    return emit(report, args.out)


if __name__ == "__main__":
    main()
