"""Fixed recording conditions for the robustness table: the same degraded dev clips on every run and model.

Each condition maps clean 16 kHz dev clips to degraded ones with a fixed seed (training draws its own at random,
train.augment.real_conditions). Codec rows read the copies train.codec_views made with FFmpeg.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from backend.speech import pad_on_host
from train import augment, codec_views

Clips = list[np.ndarray]

CONDITIONS = (
    "clean",
    "noise_pink_10db",
    "noise_babble_10db",
    "noise_white_0db",
    "telephone_8k",
    "opus_16kbps",
    "mp3_24kbps",
    "reverb_rt60_0.6s",
    "quiet_-30db",
    "clipped_+18db",
)


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], seed: int) -> Callable[[Clips], Clips]:
    def run(clips: Clips) -> Clips:
        torch.manual_seed(seed)
        wave, lengths = pad_on_host(clips)
        out = fn(wave, lengths).numpy()
        return [row[:n].astype(np.float32) for row, n in zip(out, lengths.tolist())]

    return run


def _const(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), value)


WAVE_CONDITIONS: dict[str, Callable[[Clips], Clips]] = {
    "clean": lambda clips: clips,
    "noise_pink_10db": _batched(lambda w, n: augment.background_noise(w, n, _const(len(n), 10.0), "pink"), 1),
    "noise_babble_10db": _batched(lambda w, n: augment.background_noise(w, n, _const(len(n), 10.0), "babble"), 2),
    "noise_white_0db": _batched(lambda w, n: augment.background_noise(w, n, _const(len(n), 0.0), "white"), 3),
    "telephone_8k": _batched(augment.telephone_band, 4),
    "reverb_rt60_0.6s": _batched(lambda w, n: augment.room_reverb(w, n, _const(len(n), 0.6)), 5),
    "quiet_-30db": _batched(
        lambda w, n: augment.gain_and_clip(w, _const(len(n), -30.0), torch.zeros(len(n), dtype=torch.bool)), 6
    ),
    "clipped_+18db": _batched(
        lambda w, n: augment.gain_and_clip(w, _const(len(n), 18.0), torch.ones(len(n), dtype=torch.bool)), 7
    ),
}
CODEC_CONDITIONS = {"opus_16kbps": ("opus", 16), "mp3_24kbps": ("mp3", 24)}


def read_codec_copy(path: Path, length: int) -> np.ndarray:
    """Decode a codec copy (libsndfile) and cut or zero-pad it to the clean clip's length (encoder delay aside)."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 16_000, f"{path.name}: expected 16 kHz, got {rate}"
    audio = audio.mean(axis=1)[:length]
    return np.pad(audio, (0, length - len(audio)))


def degrade(
    name: str, clips: Clips, paths: list[Path] | None = None, codecs: Path | None = None, data_root: Path | None = None
) -> Clips:
    """Clips under one condition of CONDITIONS; codec rows need each clip's source path, the codec folder and
    the data root the paths sit under."""
    if name in WAVE_CONDITIONS:
        return WAVE_CONDITIONS[name](clips)
    if name not in CODEC_CONDITIONS:
        raise KeyError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}")
    if paths is None or codecs is None or data_root is None:
        raise ValueError(f"{name} needs the clips' paths, the codec folder and the data root")
    codec, kbps = CODEC_CONDITIONS[name]
    return [
        read_codec_copy(codec_views.view_path(codecs, p, data_root, codec, kbps), len(c)) for p, c in zip(paths, clips)
    ]
