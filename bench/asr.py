"""Transcription: CTranslate2 (new) against transformers `generate` (old), on the RAVDESS dev actors.

Word error rate of the new transcripts against the old ones (the app's output until now), then, in one run on
this machine and interleaved so load affects both alike: transcription alone old vs new, the predictor with
transcription old vs new (new: transcription beside the audio branch, and in turn), and the audio-only predictor,
on one ~4 s clip (and --typical more); with the WER, the new path's time per clip over all clips and how many it
decoded twice (a loop on the trimmed mel, redone on 30 s).

    python bench/asr.py --actors 17,18,19,20 --repeat 7 [--limit 40] [--typical 6] [--out runs/bench/asr.json]

Prints JSON (medians with min/max and n; seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import asr  # noqa: E402
from backend.media import load_sample  # noqa: E402
from backend.predictor import Predictor, load_predictor  # noqa: E402
from backend.settings import load_settings  # noqa: E402
from backend.types import SAMPLE_RATE  # noqa: E402
from bench.report import emit  # noqa: E402
from train.corpora import ravdess, shared_data_dir  # noqa: E402

log = logging.getLogger("bench.asr")


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (how WER is usually scored)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(refs: list[str], hyps: list[str]) -> dict:
    """Corpus WER of hyps against refs, plus the share of exactly equal transcripts."""
    errors = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps))
    total = sum(len(words(r)) for r in refs)
    return {
        "clips": len(refs),
        "ref_words": total,
        "word_errors": errors,
        "wer": round(errors / max(total, 1), 4),
        "identical_text": round(sum(r.strip() == h.strip() for r, h in zip(refs, hyps)) / max(len(refs), 1), 4),
    }


def stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median_s": round(statistics.median(values), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _LoopCounter(logging.Handler):
    """Counts backend.asr's "looped ... decoding them on 3000" records: the clips decoded a second time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "looped" in record.getMessage()


def compare_transcripts(predictor: Predictor, clips: list) -> tuple[dict, list[dict], dict]:
    """Old and new transcript of every clip, one clip per call as the app does; WER, the differing ones, and the
    new path's time per clip over all of them (its tail is the clips decoded twice)."""
    speech, engine = predictor.model.speech, asr.ct2_engine(predictor.model.speech, predictor.device)
    olds, news, seconds = [], [], []
    counter, asr_log = _LoopCounter(), logging.getLogger(asr.__name__)
    asr_log.addHandler(counter)
    level, asr_log.level = asr_log.level, logging.INFO
    try:
        for clip in clips:
            olds += asr.transformers_transcribe(speech, [clip])
            start = time.perf_counter()
            news += asr.ct2_transcribe(engine, [clip])
            seconds.append(time.perf_counter() - start)
    finally:
        asr_log.removeHandler(counter)
        asr_log.setLevel(level)
    differing = [{"old": o, "new": n} for o, n in zip(olds, news) if o.strip() != n.strip()]
    ordered = sorted(seconds)
    per_clip = {
        **stats(seconds),
        "mean_s": round(statistics.fmean(seconds), 4),
        "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 4),
        "decoded_twice": counter.count,
    }
    return wer(olds, news), differing, per_clip


class InlinePool:
    """An executor that runs what is submitted at once, in the caller's thread."""

    def submit(self, fn: Callable[..., object], *args: object, **kwargs: object) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def speed(predictor: Predictor, audio_only: Predictor, clip, repeat: int) -> dict:
    """Interleaved timings on one clip: each round runs every variant once."""
    speech, engine = predictor.model.speech, asr.ct2_engine(predictor.model.speech, predictor.device)
    sample = load_sample(audio=(SAMPLE_RATE, clip), settings=predictor.settings)
    variants: dict[str, Callable[[], object]] = {
        "transcribe_old": lambda: asr.transformers_transcribe(speech, [clip]),
        "transcribe_new": lambda: asr.ct2_transcribe(engine, [clip]),
        "predictor_asr_new": lambda: predictor.predict(sample),
        "audio_only_predictor": lambda: audio_only.predict(sample),
    }

    def old_predict() -> object:
        with mock.patch.object(asr, "ct2_engine", lambda *a, **k: None):
            return predictor.predict(sample)

    def sequential_predict() -> object:  # the transcription run in turn, not beside the audio branch
        with mock.patch.dict(predictor.__dict__, {"_asr_pool": InlinePool()}):  # shadows the cached pool
            return predictor.predict(sample)

    variants["predictor_asr_old"] = old_predict
    variants["predictor_asr_new_sequential"] = sequential_predict
    for fn in variants.values():  # warm-up: first calls allocate and load
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    out = {name: stats(values) for name, values in times.items()}
    base = out["audio_only_predictor"]["median_s"]
    out["ratio_predictor_asr_new_to_audio_only"] = round(out["predictor_asr_new"]["median_s"] / base, 2)
    out["ratio_predictor_asr_new_sequential_to_audio_only"] = round(
        out["predictor_asr_new_sequential"]["median_s"] / base, 2
    )
    out["ratio_predictor_asr_old_to_audio_only"] = round(out["predictor_asr_old"]["median_s"] / base, 2)
    out["speedup_transcribe"] = round(out["transcribe_old"]["median_s"] / out["transcribe_new"]["median_s"], 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--actors", default="17,18,19,20")
    p.add_argument("--limit", type=int, default=0, help="at most this many clips for the WER (0: all)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--skip-wer", action="store_true")
    p.add_argument("--typical", type=int, default=0, help="also time K dev clips of 3.3-3.9 s (most do not loop)")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import soundfile as sf

    examples = ravdess(Path(args.data) / "ravdess-speech-16k", [int(a) for a in args.actors.split(",")])
    clips = [sf.read(ex.path, dtype="float32")[0] for ex in examples]
    if args.limit:
        clips = clips[: args.limit]
    settings = load_settings(asr=True)
    predictor = load_predictor(settings=settings)
    audio_only = Predictor(predictor.model, dataclasses.replace(settings, asr=False))
    engine = asr.ct2_engine(predictor.model.speech, predictor.device)
    four = min(clips, key=lambda c: abs(len(c) / SAMPLE_RATE - 4.0))
    report: dict = {
        "cpu_count": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "engine": None if engine is None else f"ctranslate2 {engine.device}/{engine.compute_type}",
        "ct2_cuda": asr.ct2_cuda_status(),
        "mel_policy": {"margin_frames": asr.MARGIN_FRAMES, "min_frames": asr.MIN_FRAMES, "bucket": asr.FRAME_BUCKET},
        "clip_seconds": round(len(four) / SAMPLE_RATE, 2),
        "load_avg_before": os.getloadavg(),
    }
    report["speed"] = speed(predictor, audio_only, four, args.repeat)
    typical = [c for c in clips if 3.3 <= len(c) / SAMPLE_RATE <= 3.9][: args.typical]
    if typical:
        report["speed_typical_clips"] = [speed(predictor, audio_only, c, args.repeat) for c in typical]
    if not args.skip_wer:
        report["wer_new_vs_old"], differing, report["new_seconds_per_clip"] = compare_transcripts(predictor, clips)
        report["differing_examples"] = differing[:10]
    report["load_avg_after"] = os.getloadavg()
    return emit(report, args.out)


if __name__ == "__main__":
    main()
