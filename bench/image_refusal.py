"""Seconds and memory to refuse an oversized image through the running app (issue 17).

A 12000x12000 greyscale PNG (~168 KB, 144 Mpx; the limit is 40 Mpx) is sent with gradio_client to an app
served in this process: once alone, then `--at-once` copies at the same time. Reports each wall time (client
start and upload included), the refusal message and the growth of this process's peak RSS (the server's).

    python bench/image_refusal.py [--at-once 6]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import free_port  # noqa: E402


def refuse(url: str, path: Path) -> tuple[float, str]:
    """(seconds, first words of the answer) for one analysis of the image."""
    from gradio_client import Client, handle_file

    started = time.perf_counter()
    try:
        Client(url, verbose=False).predict(image=handle_file(str(path)), api_name="/predict")
        answer = "accepted"
    except Exception as error:
        answer = str(error)[:60]
    return time.perf_counter() - started, answer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--at-once", type=int, default=6)
    args = p.parse_args(argv)
    os.environ.update(EMO_DATA_DIR=tempfile.mkdtemp(), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    from PIL import Image

    import app

    path = Path(tempfile.mkdtemp()) / "huge.png"
    Image.new("L", (12_000, 12_000), 128).save(path, compress_level=9)
    app.get_predictor()
    demo = app.build_demo()
    _, url, _ = demo.launch(
        server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.launch_options(app.get_settings())
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    alone = refuse(url, path)
    with futures.ThreadPoolExecutor(args.at_once) as pool:
        started = time.perf_counter()
        many = list(pool.map(lambda _: refuse(url, path), range(args.at_once)))
        wall = time.perf_counter() - started
    demo.close()
    report = {
        "png_bytes": path.stat().st_size,
        "alone_s": round(alone[0], 2),
        "at_once": args.at_once,
        "at_once_wall_s": round(wall, 2),
        "answer": alone[1],
        "peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024),
        "answers_alike": len({m[1] for m in many}) == 1,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
