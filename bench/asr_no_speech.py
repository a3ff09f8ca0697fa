"""Whisper's no-speech test on the app's transcription (backend.asr.no_speech), on and off, same engine and clips:
how many non-speech clips (synthetic noise, hum, clicks, music at three levels and lengths) still get words, and
whether any speech (RAVDESS dev actors, ASED dev speakers) loses its words or changes, with the time per clip.

    python bench/asr_no_speech.py [--ased 120] [--out bench/results/asr_no_speech.json]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import asr  # noqa: E402
from backend.media import load_audio  # noqa: E402
from backend.predictor import load_predictor  # noqa: E402
from backend.settings import load_settings  # noqa: E402
from backend.types import SAMPLE_RATE  # noqa: E402
from bench.asr import wer  # noqa: E402
from bench.report import emit  # noqa: E402
from train.corpora import ASED_DEV_SPEAKERS, SPEECH_DEV_ACTORS, ased, ravdess  # noqa: E402


def at_level(x: np.ndarray, level_db: float) -> np.ndarray:
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * 10 ** (level_db / 20)).astype(np.float32)


def non_speech(seed: int = 0) -> dict[str, np.ndarray]:
    """Sounds with no words: white / pink / brown noise, mains hum, clicks, a chord, a melody; 2, 4, 8 s; -45, -30,
    -20 dB RMS (63 clips; the app's checks, backend.media.prepare_audio, accept all of them)."""
    rng = np.random.default_rng(seed)

    def colored(n: int, alpha: float) -> np.ndarray:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        return np.fft.irfft(spectrum / np.maximum(np.arange(len(spectrum)), 1) ** (alpha / 2), n)

    def chord(n: int) -> np.ndarray:
        t = np.arange(n) / SAMPLE_RATE
        notes = [220, 277.2, 329.6, 440]
        return sum(
            np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (0.5 + 0.3 * i) * t))
            for i, f in enumerate(notes)
        )

    def melody(n: int) -> np.ndarray:
        x, step = np.zeros(n), SAMPLE_RATE // 4
        for s in range(0, n, step):
            f = [262, 294, 330, 349, 392, 440, 494, 523][rng.integers(8)]
            tt = np.arange(min(step, n - s)) / SAMPLE_RATE
            x[s : s + len(tt)] = np.sin(2 * np.pi * f * tt) * np.exp(-3 * tt) + 0.3 * np.sin(
                4 * np.pi * f * tt
            ) * np.exp(-4 * tt)
        return x

    def hum(n: int) -> np.ndarray:
        t = np.arange(n) / SAMPLE_RATE
        return sum(np.sin(2 * np.pi * 50 * h * t) / h for h in range(1, 8)) + 0.05 * rng.standard_normal(n)

    def clicks(n: int) -> np.ndarray:
        x = 0.01 * rng.standard_normal(n)
        x[rng.integers(0, n, 40)] = rng.uniform(-1, 1, 40)
        return x

    kinds = {
        "white": lambda n: rng.standard_normal(n),
        "pink": lambda n: colored(n, 1),
        "brown": lambda n: colored(n, 2),
        "chord": chord,
        "melody": melody,
        "hum": hum,
        "clicks": clicks,
    }
    return {
        f"{name}_{secs}s_{level}dB": at_level(make(secs * SAMPLE_RATE), level)
        for secs in (2, 4, 8)
        for name, make in kinds.items()
        for level in (-45, -30, -20)
    }


def transcribe_all(engine: asr.Ct2Whisper, clips: list[np.ndarray], gate: bool) -> tuple[list[str], list[float]]:
    """One clip per call, as the app transcribes; gate off = no_speech always False."""
    texts, times = [], []
    with mock.patch.object(asr, "no_speech", asr.no_speech if gate else (lambda result: False)):
        for clip in clips:
            t0 = time.perf_counter()
            texts.append(asr.ct2_transcribe(engine, [clip])[0])
            times.append(time.perf_counter() - t0)
    return texts, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ased", type=int, default=120, help="ASED dev clips (seeded sample)")
    parser.add_argument("--out")
    args = parser.parse_args()
    examples = ased(speakers=ASED_DEV_SPEAKERS)
    random.Random(0).shuffle(examples)
    sets = {
        "non_speech": list(non_speech().values()),
        "ravdess_dev": [load_audio(e.path) for e in ravdess(actors=SPEECH_DEV_ACTORS)],
        "ased_dev": [load_audio(e.path) for e in examples[: args.ased]],
    }
    predictor = load_predictor(settings=load_settings(asr=True))
    engine = asr.ct2_engine(predictor.model.speech, torch.device("cpu"))
    report: dict = {"engine": f"{engine.device}/{engine.compute_type}", "rule": [asr.NO_SPEECH_PROB, asr.LOGPROB_FLOOR]}
    for name, clips in sets.items():
        row: dict = {"n": len(clips)}
        texts = {}
        for rep in (1, 2):  # alternated, so the times are paired
            for gate in (False, True):
                texts[gate], times = transcribe_all(engine, clips, gate)
                row[f"{'on' if gate else 'off'}_{rep}"] = {
                    "with_words": sum(bool(t) for t in texts[gate]),
                    "mean_s": round(float(np.mean(times)), 4),
                    "p90_s": round(float(np.quantile(times, 0.9)), 4),
                }
        row["changed_vs_off"] = wer(texts[False], texts[True])
        row["still_words"] = [t for t in texts[True] if t][:20] if name == "non_speech" else None
        row["blanked_speech"] = (
            [a for a, b in zip(texts[False], texts[True]) if a and not b] if name != "non_speech" else None
        )
        report[name] = row
    emit(report, args.out)


if __name__ == "__main__":
    main()
