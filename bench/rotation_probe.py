"""Diagnostic (GPU): one big batch's call time when inputs rotate between sets (as bench/inference.py's rows do)
vs the same input repeated (as --stages does), the packed big-batch path beside the padded one, with a profile of
two rotated calls. Written after a torch.compile'd packed path ran 3x slower on rotated 4 s inputs than on a
repeated one (not explained; the compile was dropped). Prints JSON.

    python bench/rotation_probe.py --model MODEL [--batch 256 --seconds 4 --also-seconds 30]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.branches import speech_embed_batched
from backend.fast_speech import FastSpeech
from backend.model import EmotionModel
from backend.settings import load_settings
from bench.inference import make_clips


def timed(fn, reps: int) -> list[float]:
    out = []
    for i in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(i)
        torch.cuda.synchronize()
        out.append(round(1000 * (time.perf_counter() - t0), 2))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--also-seconds", type=float, default=30.0, help="a second length, rotated only")
    args = p.parse_args()
    model = EmotionModel.from_pretrained(args.model, cache=load_settings().cache, device="cuda").eval()
    pool = make_clips(2 * args.batch, args.seconds, seed=4)
    sets = [pool[: args.batch], pool[args.batch :]]
    other = make_clips(2 * args.batch, args.also_seconds, seed=5)
    report = {}
    for name, pack in (("packed", True), ("padded", False)):
        fast = FastSpeech(model, pack=pack)
        with torch.inference_mode():
            run = lambda i, fast=fast: speech_embed_batched(model, sets[i % 2], fast=fast)  # noqa: E731
            same = lambda i, fast=fast: speech_embed_batched(model, sets[0], fast=fast)  # noqa: E731
            first = timed(run, 2)
            rotated, repeated = timed(run, 8), timed(same, 8)
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            ) as prof:
                run(1)
                run(0)
                torch.cuda.synchronize()
        events = prof.key_averages()
        top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
        report[name] = {
            "first_two_ms": first,
            "rotated_ms": rotated,
            "repeated_ms": repeated,
            "top_self_cpu_ms": [(e.key, e.count, round(e.self_cpu_time_total / 1000, 2)) for e in top_cpu],
        }
        with torch.inference_mode():
            run2 = lambda i, fast=fast: speech_embed_batched(model, other[i % 2 :: 2], fast=fast)  # noqa: E731
            timed(run2, 2)
            report[name][f"rotated_{args.also_seconds:g}s_ms"] = timed(run2, 6)
        print(json.dumps(report[name]), flush=True)


if __name__ == "__main__":
    main()
