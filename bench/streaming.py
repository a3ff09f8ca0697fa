"""Live-voice latency: from a microphone chunk arriving at the server to its reading being ready.

Feeds a multi-emotion recording (RAVDESS clips with silences between, resampled to 48 kHz stereo int16 as a
browser sends it) through the app's own stream handler (`app.live_push`: decode to 16 kHz, Silero VAD, the
windowed speech-only reading through the Predictor, the live view's HTML), chunk by chunk, paced in real time.
Gradio's own transport (chunk upload, wav parsing, the SSE message) is not in the figures.

    python bench/streaming.py                                    # CPU, the default grid
    python bench/streaming.py --chunks 0.5 --windows 2 --hops 0.5 --repeat 3
    EMO_DEVICE=cuda python bench/streaming.py --repeat 3         # GPU

Prints one JSON object: per (chunk, window, hop): n readings, p50/p95 ms of chunks that gave a reading and of all
chunks, the real-time factor (processing / audio seconds), readings per second of speech, and the share of
readings whose label is the clip's emotion.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench.streaming")

SHARED = Path(os.environ.get("EMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# Clips the default model reads correctly alone, whole and live (strong intensity, dev actors 19-20)
CLIPS = [
    ("ravdess-speech-16k/Actor_19/03-01-05-02-01-02-19.flac", "angry"),
    ("ravdess-speech-16k/Actor_20/03-01-04-02-02-02-20.flac", "sad"),
    ("ravdess-speech-16k/Actor_20/03-01-03-02-01-01-20.flac", "happy"),
]
SILENCE_S = 1.5  # between clips (and before the first)
BROWSER_RATE = 48_000  # Hz, what microphones record


def make_recording(shared: Path = SHARED, silence_s: float = SILENCE_S) -> tuple[np.ndarray, list[tuple]]:
    """16 kHz mono: silence, clip, silence, clip, ...; returns the audio and (start s, end s, emotion) per clip."""
    gap = np.zeros(int(silence_s * 16_000), dtype=np.float32)
    parts, spans, t = [gap], [], silence_s
    for rel, emotion in CLIPS:
        audio, rate = sf.read(shared / rel, dtype="float32")
        assert rate == 16_000, f"{rel}: expected 16 kHz, got {rate}"
        parts += [audio, gap]
        spans.append((t, t + len(audio) / 16_000, emotion))
        t += len(audio) / 16_000 + silence_s
    return np.concatenate(parts), spans


def as_browser(audio16: np.ndarray) -> np.ndarray:
    """16 kHz mono float -> 48 kHz stereo int16 (n, 2), as gr.Audio(streaming=True) hands a chunk over."""
    up = torchaudio.functional.resample(torch.from_numpy(audio16), 16_000, BROWSER_RATE).numpy()
    pcm = (np.clip(up, -1, 1) * 32767).astype(np.int16)
    return np.stack([pcm, pcm], axis=1)


def run_once(app, browser: np.ndarray, spans: list[tuple], chunk_s: float, realtime: bool) -> dict:
    """One pass of the recording through app.live_push; returns per-chunk timings and the readings."""
    step = int(chunk_s * BROWSER_RATE)
    stream, timings, read_ms, labels = None, [], [], []
    started = time.perf_counter()
    for k, a in enumerate(range(0, len(browser), step)):
        if realtime:  # the chunk "arrives" when its last sample has been spoken
            due = started + (a + step) / BROWSER_RATE
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        *_, info, stream = app.live_push((BROWSER_RATE, browser[a : a + step]), stream)
        ms = (time.perf_counter() - t0) * 1000
        timings.append(ms)
        if info["new_reading"]:
            read_ms.append(ms)
            end = stream.latest.end
            truth = next((e for s, t, e in spans if s - 0.2 <= end <= t + 0.6), None)
            labels.append((truth, stream.latest.label))
        del k
    app.live_end(stream)  # closes the last segment (and runs the full analysis's input path)
    speech = sum(seg.end - seg.start for seg in stream.segments)
    return {
        "all_ms": timings,
        "read_ms": read_ms,
        "labels": labels,
        "speech_s": speech,
        "segments": len(stream.segments),
    }


def summarize(runs: list[dict], audio_s: float) -> dict:
    read = np.concatenate([r["read_ms"] for r in runs]) if runs else np.zeros(0)
    every = np.concatenate([r["all_ms"] for r in runs])
    labels = [pair for r in runs for pair in r["labels"] if pair[0]]
    pct = lambda x, q: round(float(np.percentile(x, q)), 1) if len(x) else None  # noqa: E731
    return {
        "n_readings": len(read),
        "reading_p50_ms": pct(read, 50),
        "reading_p95_ms": pct(read, 95),
        "reading_max_ms": pct(read, 100),
        "n_chunks": len(every),
        "chunk_p50_ms": pct(every, 50),
        "chunk_p95_ms": pct(every, 95),
        "real_time_factor": round(float(every.sum() / 1000 / (audio_s * len(runs))), 3),
        "vad_speech_s": round(float(np.mean([r["speech_s"] for r in runs])), 2),
        "vad_segments": int(np.median([r["segments"] for r in runs])),
        "readings_per_speech_s": round(len(read) / sum(r["speech_s"] for r in runs), 2),
        "label_agreement": round(float(np.mean([t == p for t, p in labels])), 3) if labels else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=float, nargs="+", default=[0.25, 0.5], help="stream_every seconds")
    parser.add_argument("--windows", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--hops", type=float, nargs="+", default=[0.5])
    parser.add_argument("--repeat", type=int, default=2, help="passes of the recording per configuration")
    parser.add_argument("--no-realtime", action="store_true", help="push chunks back to back (compute only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import app  # the app's handlers, settings and cached predictor

    predictor = app.get_predictor()
    audio, spans = make_recording()
    browser = as_browser(audio)
    app.live_push((BROWSER_RATE, browser[: BROWSER_RATE * 3]), None)  # warm-up: VAD session, first forward
    results = []
    base = app.get_settings()
    for chunk in args.chunks:
        for window in args.windows:
            for hop in args.hops:
                settings = dataclasses.replace(base, live_window_seconds=window, live_hop_seconds=hop)
                app.get_settings = lambda s=settings: s  # the handler reads the live_* settings
                runs = [run_once(app, browser, spans, chunk, not args.no_realtime) for _ in range(args.repeat)]
                row = {"chunk_s": chunk, "window_s": window, "hop_s": hop, **summarize(runs, len(audio) / 16e3)}
                log.warning("%s", row)
                results.append(row)
    report = {
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "model_version": predictor.model_version,
        "recording_s": round(len(audio) / 16_000, 2),
        "clips": [{"start_s": round(a, 2), "end_s": round(b, 2), "emotion": e} for a, b, e in spans],
        "realtime_paced": not args.no_realtime,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
