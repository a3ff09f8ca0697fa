"""Where the audio branch's call spends the time its forward does not (issue 16): each step of a call on 256 and
64 x 4 s clips, synchronised, beside the plain encoder's call, and the top CPU ops of three branch calls (CUDA).

    python bench/branch_steps.py MODEL_DIR [OUT.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.branches import speech_embed_batched  # noqa: E402
from backend.fast_speech import FastSpeech  # noqa: E402
from backend.model import EmotionModel  # noqa: E402
from backend.speech import HOP_LENGTH, pad_on_host, padded_frames, valid_frames  # noqa: E402
from bench.inference import OursBranch, OursSpeech, PlainEncoder, make_clips  # noqa: E402
from bench.report import emit  # noqa: E402


def ms(fn, reps: int = 15) -> float:
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - t0))
    return round(float(np.median(out)), 3)


def steps(model: EmotionModel, fast: FastSpeech, branch: OursBranch, plain: PlainEncoder, batch: int) -> dict:
    """Each step of one call on batch x 4 s clips, synchronised, ms (median of 15)."""
    device = model.device
    clips = make_clips(batch, 4.0, seed=7)
    host, lengths = pad_on_host(clips, pin=True)
    wave, dev_lengths = host.to(device), lengths.to(device)
    frames = padded_frames(wave.shape[1])
    padded = torch.nn.functional.pad(wave, (0, frames * HOP_LENGTH - wave.shape[1]))
    valid = valid_frames(lengths, frames)
    row = {
        "pad_on_host": ms(lambda: pad_on_host(clips, pin=True)),
        "pad_on_host_unpinned": ms(lambda: pad_on_host(clips, pin=False)),
        "h2d": ms(lambda: host.to(device, non_blocking=True)),
        "front": ms(lambda: fast._front(padded, dev_lengths)),
        "packed_all": ms(lambda: fast._packed(padded, dev_lengths, valid)),
        "fast_call": ms(lambda: fast(wave, dev_lengths, host_lengths=lengths)),
        "fast_embed": ms(lambda: fast.embed(clips)),
        "embed_batched": ms(lambda: speech_embed_batched(model, clips, fast=fast)),
        "branch_call": ms(lambda: branch(clips)),
        "plain_forward": ms(lambda: plain.forward(wave)),
        "plain_call": ms(lambda: plain(clips)),
    }
    print(batch, row, file=sys.stderr, flush=True)
    return row


def main() -> None:
    device = torch.device("cuda")
    model = EmotionModel.from_pretrained(Path(sys.argv[1]), device=device)
    ours = OursSpeech(model)
    branch, plain = OursBranch(ours), PlainEncoder(model)
    fast = ours.predictor.fast_speech
    report = {f"{batch}x4s": steps(model, fast, branch, plain, batch) for batch in (256, 64)}
    from torch.profiler import ProfilerActivity, profile

    clips = make_clips(256, 4.0, seed=7)
    branch(clips)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            branch(clips)
        torch.cuda.synchronize()
    events = prof.key_averages()
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    report["top_self_cpu_ms_3calls"] = [[e.key[:70], e.count, round(e.self_cpu_time_total / 1000, 2)] for e in rows]
    rows = sorted(events, key=lambda e: e.cpu_time_total, reverse=True)[:25]
    report["top_total_cpu_ms_3calls"] = [[e.key[:70], e.count, round(e.cpu_time_total / 1000, 2)] for e in rows]
    emit(report, sys.argv[2] if len(sys.argv) > 2 else None)


if __name__ == "__main__":
    main()
