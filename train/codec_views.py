"""Low-bitrate codec copies of speech clips (Opus, MP3) made once with FFmpeg, for training and robustness dev sets.

The GPU machines have no FFmpeg, so codecs cannot run inside the training loop there: each clip gets its codec
copies here, once, and training swaps a clip for one of them at random (libsndfile decodes both).
Training clips get one copy at a bitrate drawn per clip (Opus 8-24 kbps or MP3 16-32 kbps); dev clips get the
fixed conditions the robustness table reports (Opus 16 kbps, MP3 24 kbps).

    python -m train.codec_views --out runs/codecs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from train import corpora

log = logging.getLogger(__name__)

TRAIN_CHOICES = (("opus", 8), ("opus", 12), ("opus", 16), ("opus", 24), ("mp3", 16), ("mp3", 24), ("mp3", 32))
DEV_CONDITIONS = (("opus", 16), ("mp3", 24))  # the robustness table's codec rows
SUFFIX = {"opus": ".ogg", "mp3": ".mp3"}
ENCODER_ARGS = {"opus": ["-c:a", "libopus", "-application", "voip"], "mp3": ["-c:a", "libmp3lame"]}


def view_name(codec: str, kbps: int) -> str:
    return f"{codec}{kbps}"


def view_path(out: Path, source: Path, data_root: Path, codec: str, kbps: int) -> Path:
    """Where the codec copy of `source` (a file under data_root) lives: out/<relative path>.<codec><kbps><suffix>."""
    rel = source.resolve().relative_to(data_root.resolve())
    return out / rel.parent / f"{rel.stem}.{view_name(codec, kbps)}{SUFFIX[codec]}"


def train_choice(source: Path) -> tuple[str, int]:
    """A stable per-clip codec and bitrate (hash of the file name), so reruns make the same copies."""
    digest = int(hashlib.sha256(source.name.encode()).hexdigest()[:8], 16)
    return TRAIN_CHOICES[digest % len(TRAIN_CHOICES)]


def encode(source: Path, targets: list[tuple[Path, str, int]]) -> None:
    """One FFmpeg process writes every codec copy of one clip (16 kHz mono kept)."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source)]
    for path, codec, kbps in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd += [*ENCODER_ARGS[codec], "-b:a", f"{kbps}k", "-ar", "16000", "-ac", "1", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def jobs(data_root: Path, out: Path) -> list[tuple[Path, list[tuple[Path, str, int]]]]:
    """Every speech clip of the train and dev splits with the copies it needs (test speakers get none: unused)."""
    todo = []
    splits = [
        (corpora.ravdess(data_root / "ravdess-speech-16k", corpora.SPEECH_TRAIN_ACTORS), False),
        (corpora.ravdess(data_root / "ravdess-speech-16k", corpora.SPEECH_DEV_ACTORS), True),
        (corpora.ased(data_root / "ased-speech-16k", corpora.ASED_TRAIN_SPEAKERS), False),
        (corpora.ased(data_root / "ased-speech-16k", corpora.ASED_DEV_SPEAKERS), True),
    ]
    for examples, dev in splits:
        for ex in examples:
            wanted = DEV_CONDITIONS if dev else (train_choice(ex.path),)
            targets = [(view_path(out, ex.path, data_root, c, k), c, k) for c, k in wanted]
            targets = [t for t in targets if not t[0].is_file()]
            if targets:
                todo.append((ex.path, targets))
    return todo


def build(data_root: Path, out: Path, workers: int = 4) -> dict[str, int]:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("FFmpeg is not installed (bash .ci/install installs it)")
    todo = jobs(data_root, out)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: encode(*job), todo))
    files = [f for f in out.rglob("*") if f.is_file()]
    return {"encoded_now": len(todo), "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(prog="python -m train.codec_views", description=__doc__)
    p.add_argument("--data", default=str(corpora.shared_data_dir()))
    p.add_argument("--out", default="runs/codecs")
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    print(json.dumps(build(Path(args.data), Path(args.out), args.workers)))


if __name__ == "__main__":
    main()
