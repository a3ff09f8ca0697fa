"""Command line: predict emotion for media files (and/or text), one JSON object per input.

python -m backend.predict clip.wav face.jpg video.mp4 [--text "..."] [--model PATH_OR_ID] [--json]
python -m backend.predict --batch DIR_OR_TABLE --out results.parquet [--model ...]   (resumable; all GPUs with
    accelerate launch --num_processes N -m backend.predict --batch ... ; see backend.batch_predict)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.errors import MediaError, ModelError
from backend.media import load_sample
from backend.predictor import load_predictor
from backend.settings import load_settings
from backend.types import Prediction

AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".webm", ".opus", ".aac"}
VIDEO_EXT = {".mp4", ".mov", ".mkv", ".avi"}


def sample_for(path: Path | None, text: str | None, settings) -> object:
    """Route a file by extension (the decoders still check the content) and attach optional text."""
    if path is None:
        return load_sample(text=text, settings=settings)
    ext = path.suffix.lower()
    if ext in VIDEO_EXT:
        return load_sample(video=str(path), text=text, settings=settings)
    if ext in AUDIO_EXT:
        return load_sample(audio=str(path), text=text, settings=settings)
    return load_sample(image=str(path), text=text, settings=settings)


def summary_line(name: str, p: Prediction) -> str:
    parts = ", ".join(f"{m} {r.label} ({r.weight:.2f})" for m, r in p.modalities.items())
    text = f" | transcript: {p.transcript}" if p.transcript else ""
    return f"{name}: {p.label} {p.confidence:.0%} [{parts}]{text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help="audio, image or video files")
    parser.add_argument("--text", default=None, help="text to analyse (alone, or with each file)")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: EMO_MODEL / shipped model)")
    parser.add_argument("--json", action="store_true", help="print full JSON objects instead of a summary line")
    parser.add_argument("--batch", type=Path, default=None, help="folder of media files or a csv/parquet/jsonl table")
    parser.add_argument("--out", type=Path, default=None, help="--batch: results parquet (parts kept beside it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="--batch: decoding processes per GPU process")
    parser.add_argument(
        "--adapt", action="store_true", help="--batch: adapt speech to each folder's voices (unlabelled statistics)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.batch is not None:
        return batch_main(args, parser)
    if not args.files and not args.text:
        parser.error("give at least one file or --text")
    settings = load_settings()
    try:
        predictor = load_predictor(args.model, settings)
    except ModelError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    failures = 0
    for path in args.files or [None]:
        name = str(path) if path else "text"
        try:
            prediction = predictor.predict(sample_for(path, args.text, settings))
        except (MediaError, ValueError) as exc:
            failures += 1
            print(json.dumps({"input": name, "error": str(exc)}))
            continue
        if args.json:
            print(json.dumps({"input": name, **prediction.to_dict()}))
        else:
            print(summary_line(name, prediction))
    return 1 if failures else 0


def batch_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from backend.batch_predict import run_batch

    if args.out is None or args.files or args.text:
        parser.error("--batch takes --out and no files or --text")
    try:
        summary = run_batch(
            args.batch, args.out, args.model, load_settings(), args.batch_size, args.workers, adapt=args.adapt
        )
    except (ModelError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
