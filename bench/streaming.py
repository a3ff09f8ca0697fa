"""Live-voice latency: from a microphone chunk arriving at the server to its reading being ready.

Feeds a multi-emotion recording (RAVDESS clips with silences between, resampled to 48 kHz stereo int16 as a
browser sends it) through the app's own stream handler (`app.live_push`: decode to 16 kHz, Silero VAD, the
windowed speech-only reading through the Predictor, the live view's HTML), chunk by chunk, paced in real time.
Gradio's own transport (chunk upload, wav parsing, the SSE message) is not in the figures.

    python bench/streaming.py                                    # CPU, the default grid
    python bench/streaming.py --chunks 0.5 --windows 2 --hops 0.5 --repeat 3
    EMO_DEVICE=cuda python bench/streaming.py --repeat 3         # a GPU machine with the project installed

The lent offline GPU machine has no Gradio: `--no-app` runs the same backend calls without app.py. Pack its
part here, then carry .stash/p1, .stash/a (train/pack_for_device.py) and .stash/live one call each:

    mkdir -p .stash/live && pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 -d .stash/live silero-vad onnxruntime soundfile cffi pycparser
    python bench/streaming.py --pack .stash/live                 # the three clips, under .stash/live/data
    # on the device: bash bench/device_bench.sh stash p1; ... stash a; ... stash live; bash bench/device_bench.sh live

Prints one JSON object: per (chunk, window, hop): n readings, p50/p95 ms of chunks that gave a reading and of all
chunks, the real-time factor (processing / audio seconds), readings per second of speech, and the share of
readings whose label is the clip's emotion.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import emit

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


def pack(folder: Path) -> dict:
    """The bench's clips under folder/data (for an offline machine whose EMO_SHARED_DATA points there)."""
    for rel, _ in CLIPS:
        target = folder / "data" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / rel, target)
    return {"packed": [rel for rel, _ in CLIPS], "into": str(folder / "data")}


def as_browser(audio16: np.ndarray) -> np.ndarray:
    """16 kHz mono float -> 48 kHz stereo int16 (n, 2), as gr.Audio(streaming=True) hands a chunk over."""
    up = torchaudio.functional.resample(torch.from_numpy(audio16), 16_000, BROWSER_RATE).numpy()
    pcm = (np.clip(up, -1, 1) * 32767).astype(np.int16)
    return np.stack([pcm, pcm], axis=1)


class Handler:
    """One chunk in, (the reading's JSON, the stream) out: the app's `live_push`, or the same backend calls
    without Gradio (`--no-app`, for machines without gradio: decode, VAD + reading, the live view's HTML)."""

    def __init__(self, use_app: bool, model: str | None, speech_backbone: str | None = None) -> None:
        from backend.predictor import load_predictor
        from backend.settings import load_settings

        self.app = None
        if use_app:
            import app  # the app's handler, settings and cached predictor

            self.app = app
            self.base = app.get_settings()
            self.predictor = app.get_predictor()
        elif speech_backbone:  # a GPU box that carries only Whisper: the model's speech branch alone
            from backend.model import load_speech_branch
            from backend.predictor import Predictor, pick_device

            self.base = load_settings(asr=False)
            device = pick_device(self.base.device)
            branch = load_speech_branch(model or "models/default", device, speech_backbone)
            self.predictor = Predictor(branch, self.base)
        else:
            self.base = load_settings()
            self.predictor = load_predictor(model, settings=self.base)
        self.settings = self.base

    def configure(self, window: float, hop: float, threads: int) -> None:
        self.settings = dataclasses.replace(
            self.base, live_window_seconds=window, live_hop_seconds=hop, live_threads=threads
        )
        if self.app is not None:
            self.app.get_settings = lambda s=self.settings: s  # the handler reads the live_* settings
            self.app.live_reader.cache_clear()

    def push(self, chunk: tuple[int, np.ndarray], stream):
        if self.app is not None:
            *_, info, stream = self.app.live_push(chunk, stream)
            return info, stream
        from backend import live_view, streaming

        arrived = time.perf_counter()
        if stream is None:
            threshold = streaming.model_threshold(self.predictor)
            stream = streaming.LiveStream(streaming.LiveConfig.from_settings(self.settings, threshold))
        audio = streaming.to_16k(chunk[0], chunk[1], self.settings)
        update = stream.push(audio, reader(self.predictor, self.settings.live_threads), arrived=arrived)
        live_view.now_html(update), live_view.timeline_html(update)
        return update.to_dict(), stream

    def end(self, stream) -> None:
        if self.app is not None:
            self.app.live_end(stream)
        else:
            stream.finish(reader(self.predictor, self.settings.live_threads))


def server_round_trips(browser: np.ndarray, chunk_s: float, repeat: int) -> dict:
    """The launched app driven by gradio_client's /live_push, paced in real time: what an API client sees per
    chunk (wav upload, queue, handler, SSE reply) on top of the handler's own time."""
    import tempfile

    from gradio_client import Client, handle_file

    import app

    demo = app.build_demo()
    _, url, _ = demo.launch(
        server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **app.launch_options(app.get_settings())
    )
    step = int(chunk_s * BROWSER_RATE)
    folder = Path(tempfile.mkdtemp(prefix="live-bench-"))
    paths = []
    for k, a in enumerate(range(0, len(browser), step)):
        paths.append(folder / f"{k:04d}.wav")
        sf.write(paths[-1], browser[a : a + step], BROWSER_RATE, subtype="PCM_16")
    read_ms, all_ms = [], []
    try:
        for _ in range(repeat):
            client = Client(url, verbose=False)  # a new session: a new stream
            started = time.perf_counter()
            for k, path in enumerate(paths):
                time.sleep(max(0.0, started + (k + 1) * chunk_s - time.perf_counter()))
                t0 = time.perf_counter()
                *_, info = client.predict(chunk=handle_file(str(path)), api_name="/live_push")
                all_ms.append((time.perf_counter() - t0) * 1000)
                if info["new_reading"]:
                    read_ms.append(all_ms[-1])
            client.predict(api_name="/live_end")
    finally:
        demo.close()
        shutil.rmtree(folder, ignore_errors=True)
    pct = lambda x, q: round(float(np.percentile(x, q)), 1) if len(x) else None  # noqa: E731
    return {
        "chunk_s": chunk_s,
        "n_readings": len(read_ms),
        "reading_p50_ms": pct(read_ms, 50),
        "reading_p95_ms": pct(read_ms, 95),
        "n_chunks": len(all_ms),
        "chunk_p50_ms": pct(all_ms, 50),
        "chunk_p95_ms": pct(all_ms, 95),
    }


@functools.cache
def reader(predictor, threads: int = 0):
    from backend.streaming import speech_reader

    return speech_reader(predictor, threads)


def run_once(handler: Handler, browser: np.ndarray, spans: list[tuple], chunk_s: float, realtime: bool) -> dict:
    """One pass of the recording, chunk by chunk; returns per-chunk timings and the readings."""
    step = int(chunk_s * BROWSER_RATE)
    stream, timings, read_ms, labels = None, [], [], []
    started = time.perf_counter()
    for a in range(0, len(browser), step):
        if realtime:  # the chunk "arrives" when its last sample has been spoken
            due = started + (a + step) / BROWSER_RATE
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        info, stream = handler.push((BROWSER_RATE, browser[a : a + step]), stream)
        ms = (time.perf_counter() - t0) * 1000
        timings.append(ms)
        if info["new_reading"]:
            read_ms.append(ms)
            end = stream.latest.end
            truth = next((e for s, t, e in spans if s - 0.2 <= end <= t + 0.6), None)
            labels.append((truth, stream.latest.label))
    handler.end(stream)  # closes the last segment (the app also hands the utterance on)
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
    parser.add_argument("--windows", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--hops", type=float, nargs="+", default=[0.5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="live_threads (0: the process's)")
    parser.add_argument("--repeat", type=int, default=2, help="passes of the recording per configuration")
    parser.add_argument("--no-realtime", action="store_true", help="push chunks back to back (compute only)")
    parser.add_argument("--no-app", action="store_true", help="backend calls without importing Gradio / app.py")
    parser.add_argument("--model", default=None, help="model folder or Hub id (--no-app; default: the registry's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--speech-backbone", default=None, help="--no-app: speech branch only, over this Whisper")
    parser.add_argument("--server", action="store_true", help="also: launched app + gradio_client round trips")
    parser.add_argument("--accuracy", action="store_true", help="reading accuracy per window on dev actors 17-20")
    parser.add_argument("--pack", type=Path, default=None, help="copy the clips under DIR/data and stop")
    args = parser.parse_args(argv)
    if args.pack:
        return pack(args.pack)
    if args.accuracy:
        return emit(accuracy(args.windows, args.hops[0], args.model), args.out)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    handler = Handler(not args.no_app, args.model, args.speech_backbone)
    audio, spans = make_recording()
    browser = as_browser(audio)
    handler.push((BROWSER_RATE, browser[: BROWSER_RATE * 3]), None)  # warm-up: VAD session, first forward
    configs = [(c, w, h, t) for c in args.chunks for w in args.windows for h in args.hops for t in args.threads]
    runs: dict[tuple, list[dict]] = {cfg: [] for cfg in configs}
    for _ in range(args.repeat):  # round robin, so a burst of load on the shared box hits every config alike
        for chunk, window, hop, threads in configs:
            handler.configure(window, hop, threads)
            runs[(chunk, window, hop, threads)].append(run_once(handler, browser, spans, chunk, not args.no_realtime))
    results = [
        {"chunk_s": c, "window_s": w, "hop_s": h, "threads": t, **summarize(runs[(c, w, h, t)], len(audio) / 16e3)}
        for c, w, h, t in configs
    ]
    predictor = handler.predictor
    client = None
    if args.server:
        handler.configure(args.windows[0], args.hops[0], args.threads[0])
        client = server_round_trips(browser, args.chunks[0], args.repeat)
    report = {
        "device": str(predictor.device),
        "gpu": torch.cuda.get_device_name() if predictor.device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "handler": "backend only" if args.no_app else "app.live_push",
        "model_version": predictor.model_version,
        "recording_s": round(len(audio) / 16_000, 2),
        "clips": [{"start_s": round(a, 2), "end_s": round(b, 2), "emotion": e} for a, b, e in spans],
        "realtime_paced": not args.no_realtime,
        "results": results,
        "client_round_trip": client,
    }
    return emit(report, args.out)


def accuracy(windows: list[float], hop: float, model: str | None) -> dict:
    """Each strong-intensity RAVDESS clip of dev actors 17-20 alone, 0.5 s chunks back to back: how often a live
    reading (and a segment's mean) names the clip's emotion, per window length. Not timed."""
    from backend.predictor import load_predictor
    from backend.settings import load_settings
    from backend.streaming import LiveConfig, LiveStream

    emotions = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fearful", "07": "disgust"}
    emotions["08"] = "surprised"
    files = sorted(f for a in range(17, 21) for f in (SHARED / "ravdess-speech-16k" / f"Actor_{a:02d}").glob("*.flac"))
    files = [f for f in files if f.name.split("-")[2] in emotions and f.name.split("-")[3] == "02"]
    read = reader(load_predictor(model, settings=load_settings()), 1)
    rows = []
    for window in windows:
        hits, segs, first, sure = [], [], [], []
        for f in files:
            truth = emotions[f.name.split("-")[2]]
            audio, _ = sf.read(f, dtype="float32")
            stream = LiveStream(LiveConfig(window_s=window, hop_s=hop))
            for a in range(0, len(audio), 8000):
                stream.push(audio[a : a + 8000], read)
            stream.finish(read)
            labels = [r.label for seg in stream.segments for r in seg.readings]
            sure += [(r.label == truth, r.sure) for seg in stream.segments for r in seg.readings]
            hits += [x == truth for x in labels]
            first += [labels[0] == truth] if labels else []
            probs = [seg.probs for seg in stream.segments]
            segs += [max(p, key=p.get) == truth for p in probs]
        rows.append(
            {
                "window_s": window,
                "clips": len(files),
                "readings": len(hits),
                "reading_accuracy": round(float(np.mean(hits)), 3),
                "first_reading_accuracy": round(float(np.mean(first)), 3),
                "sure_share": round(float(np.mean([ok for _, ok in sure])), 3),  # readings over the threshold
                "sure_accuracy": round(float(np.mean([hit for hit, ok in sure if ok] or [0])), 3),
                "segment_accuracy": round(float(np.mean(segs)), 3),
            }
        )
        log.warning("%s", rows[-1])
    return {"hop_s": hop, "results": rows}


if __name__ == "__main__":
    main()
