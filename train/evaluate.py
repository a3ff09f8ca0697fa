"""Evaluate a model on a labelled set and write a JSON report plus a confusion-matrix PNG.

    python -m train.evaluate --data DIR --out report.json [--model PATH_OR_ID]
    python -m train.evaluate --dataset ravdess --out ravdess_dev.json          # actors 17-20
    python -m train.evaluate --dataset goemotions --split dev --limit 500 --out ge.json
    python -m train.evaluate --dataset ased --adapt speaker --out ased_dev.json      # ASED dev speakers
    python -m train.evaluate --dataset ravdess --classes neutral,happy,sad,angry,fearful --out loco.json

--adapt speaker|folder standardises speech per speaker (or over the whole set, e.g. an imported folder) with
unlabelled statistics (backend.adapt). --classes scores only those classes, argmax over them alone: the
leave-one-corpus-out protocol over the classes both corpora share.

DIR is a Hugging Face style folder (metadata.csv with file_name,label or text,label). --dataset
reads a shared corpus directly, on its dev split unless --split train is asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from backend.adapt import SpeakerStats
from backend.errors import ModelError
from backend.labels import LABEL_TO_ID, LABELS
from backend.types import Sample
from train import corpora
from train.corpora import Example
from train.metrics import classification_report, expected_calibration_error, plot_confusion

log = logging.getLogger(__name__)

DATASETS = ("ravdess", "ased", "goemotions", "meld", "fer2013")
ADAPT = ("none", "speaker", "folder")


def load_model(model: str | None):
    """The predictor for a model path or Hub id (None: the default). Imported late: it loads torch."""
    from backend.predictor import load_predictor

    return load_predictor(model)


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 at SAMPLE_RATE via backend.media (imported late: it loads torch)."""
    from backend.errors import MediaError
    from backend.media import load_audio

    try:
        return load_audio(path)
    except MediaError as exc:
        raise corpora.CorpusError(f"{path}: {exc}") from None


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) via backend.media."""
    from backend.errors import MediaError
    from backend.media import load_image

    try:
        return load_image(path)
    except MediaError as exc:
        raise corpora.CorpusError(f"{path}: {exc}") from None


def to_sample(example: Example) -> Sample:
    """Decode one example into the predictor's input; only the example's own modality is set."""
    name = example.path.name if example.path else None
    if example.modality == "text":
        return Sample(text=example.text, source_name=name)
    if example.modality == "speech":
        return Sample(audio=read_audio(example.path), source_name=name)
    if example.modality == "face":
        image = example.image if example.image is not None else read_image(example.path)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return Sample(frames=[image], source_name=name)
    raise ValueError(f"unknown modality {example.modality!r}")


def _is_crop(example: Example) -> bool:
    return example.modality == "face" and bool(example.meta.get("face_crop"))


def _batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Index batches that never mix modalities (or face crops with whole images)."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault((ex.modality, _is_crop(ex)), []).append(i)
    return [idx[k : k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def speaker_groups(examples: Sequence[Example], adapt: str) -> list[str | None]:
    """The group whose unlabelled statistics adapt each speech example: its speaker, or the whole set."""
    if adapt == "none":
        return [None] * len(examples)
    return [(ex.speaker or "unknown") if adapt == "speaker" else "folder" for ex in examples]


def gather_speaker_stats(examples: Sequence[Example], predictor, groups: list[str | None], batch_size: int) -> dict:
    """First pass of --adapt: every speech clip's embedding into its group's statistics (labels unused)."""
    stats: dict[str, SpeakerStats] = {}
    for batch in _batches(examples, batch_size):
        if examples[batch[0]].modality != "speech":
            continue
        speakers = [stats.setdefault(groups[i], SpeakerStats()) if groups[i] else None for i in batch]
        predictor.predict_batch([to_sample(examples[i]) for i in batch], speakers=speakers)
    return stats


def predict_all(
    examples: Sequence[Example],
    predictor,
    batch_size: int = 16,
    progress: bool = True,
    adapt: str = "none",
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Fused label ids (N,), fused probabilities (N, C) and each branch's probabilities (N, C).

    Branch rows are NaN where the prediction has no result for that branch (e.g. no face found). adapt:
    speech read after per-speaker / whole-set standardisation (two passes: statistics, then predictions).
    """
    n, k = len(examples), len(LABELS)
    preds = np.zeros(n, dtype=np.int64)
    probs = np.zeros((n, k), dtype=np.float64)
    branches: dict[str, np.ndarray] = {}
    groups = speaker_groups(examples, adapt)
    stats = gather_speaker_stats(examples, predictor, groups, batch_size) if adapt != "none" else {}
    with tqdm(total=n, disable=not progress, unit="ex", desc="evaluate") as bar:
        for batch in _batches(examples, batch_size):
            samples = [to_sample(examples[i]) for i in batch]
            if _is_crop(examples[batch[0]]):
                out = predictor.predict_batch(samples, faces_are_crops=True)
            elif stats:
                speakers = [stats.get(groups[i]) if groups[i] else None for i in batch]
                out = predictor.predict_batch(samples, speakers=speakers, update_speakers=False)
            else:
                out = predictor.predict_batch(samples)
            if len(out) != len(batch):
                raise RuntimeError(f"predictor returned {len(out)} predictions for {len(batch)} samples")
            for i, prediction in zip(batch, out):
                preds[i] = LABEL_TO_ID[prediction.label]
                probs[i] = _vector(prediction.probs)
                for name, result in (getattr(prediction, "modalities", None) or {}).items():
                    branches.setdefault(name, np.full((n, k), np.nan))[i] = _vector(result.probs)
            bar.update(len(batch))
    return preds, probs, branches


def _vector(probs: dict[str, float]) -> np.ndarray:
    return np.array([probs.get(name, 0.0) for name in LABELS], dtype=np.float64)


def branch_summaries(y_true: np.ndarray, branches: dict[str, np.ndarray]) -> dict[str, dict]:
    """Headline scores of each branch alone, over the examples where it gave a result.

    Tells how much fusion adds, e.g. RAVDESS speech vs. the text of its transcript.
    """
    out = {}
    for name, probs in sorted(branches.items()):
        seen = ~np.isnan(probs[:, 0])
        r = classification_report(y_true[seen], probs[seen].argmax(axis=1), LABELS)
        out[name] = {key: r[key] for key in ("n", "accuracy", "uar", "macro_f1", "weighted_f1")}
        out[name]["ece"] = expected_calibration_error(probs[seen], y_true[seen])
    return out


def evaluate(
    examples: Sequence[Example],
    predictor,
    batch_size: int = 16,
    progress: bool = True,
    dataset: dict | None = None,
    adapt: str = "none",
    classes: Sequence[str] | None = None,
) -> dict:
    """Run predictor over examples; the classification report plus model version, ECE and wall time.

    classes: score only examples of these classes, with the argmax taken over them alone (leave-one-corpus-out
    over shared classes); adapt: see predict_all.
    """
    if classes:
        examples = [ex for ex in examples if ex.label_name in set(classes)]
    if not examples:
        raise ValueError("nothing to evaluate: the set is empty")
    start = time.perf_counter()
    preds, probs, branches = predict_all(examples, predictor, batch_size=batch_size, progress=progress, adapt=adapt)
    if classes:
        allowed = np.array([name in set(classes) for name in LABELS])
        probs = np.where(allowed, probs, 0.0)
        probs = probs / probs.sum(axis=1, keepdims=True).clip(min=1e-12)
        preds = probs.argmax(axis=1)
        branches = {
            m: np.where(allowed, b, 0.0) / np.where(allowed, b, 0.0).sum(1, keepdims=True) for m, b in branches.items()
        }
    wall = time.perf_counter() - start
    y_true = np.array([ex.label for ex in examples], dtype=np.int64)
    report = classification_report(y_true, preds, LABELS)
    modalities = sorted({ex.modality for ex in examples})
    report.update(
        {
            "ece": expected_calibration_error(probs, y_true),
            "branches": branch_summaries(y_true, branches),
            "model_version": str(getattr(predictor, "model_version", "unknown")),
            "modality": modalities[0] if len(modalities) == 1 else "mixed",
            "modalities": modalities,
            "dataset": dataset or {},
            "adapt": adapt,
            "classes": list(classes) if classes else list(LABELS),
            "wall_seconds": wall,
            "examples_per_second": len(examples) / wall if wall > 0 else None,
        }
    )
    return report


def parse_actors(text: str) -> list[int]:
    """'17-20' or '1,3,5-7' -> actor numbers."""
    actors: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        actors.extend(range(int(lo), int(hi or lo) + 1))
    return actors


def _corpus_file(root: Path | None, default_dir: str, name: str) -> Path:
    """root may be the file itself or the folder holding the split files."""
    root = Path(root) if root else corpora.SHARED_DATA / default_dir
    return root if root.is_file() else root / name


def load_dataset(args: argparse.Namespace) -> tuple[list[Example], dict]:
    """The examples the command line asks for, and a description of them for the report."""
    if args.data:
        return corpora.folder(args.data), {"name": "folder", "path": str(args.data)}
    split, name = args.split, args.dataset
    info: dict = {"name": name, "split": split}
    if name == "ravdess":
        default = corpora.SPEECH_DEV_ACTORS if split == "dev" else corpora.SPEECH_TRAIN_ACTORS
        actors = parse_actors(args.actors) if args.actors else list(default)
        root = Path(args.root) if args.root else corpora.SHARED_DATA / "ravdess-speech-16k"
        examples = corpora.ravdess(root, actors)
        info.update(actors=actors, split=split if not args.actors else "custom")
    elif name == "ased":
        speakers = corpora.ASED_DEV_SPEAKERS if split == "dev" else corpora.ASED_TRAIN_SPEAKERS
        root = Path(args.root) if args.root else corpora.SHARED_DATA / "ased-speech-16k"
        examples = corpora.ased(root, speakers)
        info.update(speakers=list(speakers))
    elif name == "goemotions":
        root = _corpus_file(args.root, "text/goemotions-ekman", f"{split}.tsv")
        examples = corpora.goemotions(root, single_label_only=args.single_label)
        info.update(single_label_only=args.single_label)
    elif name == "meld":
        root = _corpus_file(args.root, "text/meld", f"{split}_sent_emo.csv")
        examples = corpora.meld(root)
    else:
        root = _corpus_file(args.root, "faces", f"fer2013_{'val' if split == 'dev' else 'train'}.npz")
        examples = corpora.fer2013(root)
    info["path"] = str(root)
    return examples, info


def subsample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A fixed random subset of `limit` examples (same seed, same subset), kept in corpus order."""
    if not limit or limit >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False))
    return [examples[i] for i in keep]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder with metadata.csv (file_name,label or text,label)")
    source.add_argument("--dataset", choices=DATASETS, help="a shared corpus, read directly")
    parser.add_argument("--root", type=Path, help="corpus folder or file (default: under $EMO_SHARED_DATA)")
    parser.add_argument("--split", choices=("dev", "train"), default="dev", help="default: dev")
    parser.add_argument("--actors", help="RAVDESS actors, e.g. 17-20 or 1,3,5 (overrides --split)")
    parser.add_argument("--single-label", action="store_true", help="GoEmotions: drop multi-label rows")
    parser.add_argument("--face-crops", action="store_true", help="--data images are cropped faces")
    parser.add_argument("--limit", type=int, help="evaluate a fixed random subset of N examples")
    parser.add_argument("--adapt", choices=ADAPT, default="none", help="unlabelled speech standardisation")
    parser.add_argument("--classes", help="comma-separated labels: score only these (argmax over them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--model", help="model folder or Hub id (default: the promoted default model)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True, help="report JSON; the PNG is written beside it")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point; returns the report it wrote."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.actors and args.dataset != "ravdess":
        parser.error("--actors only applies to --dataset ravdess")
    try:
        examples, info = load_dataset(args)
    except corpora.CorpusError as exc:
        parser.error(str(exc))  # a message to act on, not a traceback
    if args.face_crops:
        for ex in examples:
            if ex.modality == "face":
                ex.meta["face_crop"] = True
    examples = subsample(examples, args.limit, args.seed)
    info.update(limit=args.limit, seed=args.seed if args.limit else None)
    try:
        predictor = load_model(args.model)
    except ModelError as exc:
        parser.exit(1, f"error: {exc}\n")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if classes and set(classes) - set(LABELS):
        parser.error(f"--classes must be among {', '.join(LABELS)}")
    report = evaluate(
        examples,
        predictor,
        args.batch_size,
        progress=not args.no_progress,
        dataset=info,
        adapt=args.adapt,
        classes=classes,
    )
    report["model"] = args.model
    write_report(report, args.out)
    log.info(
        "n=%d accuracy=%.4f uar=%.4f macro_f1=%.4f -> %s",
        report["n"],
        report["accuracy"],
        report["uar"],
        report["macro_f1"],
        args.out,
    )
    return report


def confusion_png_path(out: Path) -> Path:
    """report.json -> report_confusion.png"""
    return out.with_name(f"{out.stem}_confusion.png")


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """The JSON report and its confusion-matrix PNG beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    title = f"{report['dataset'].get('name', '')} {report['dataset'].get('split', '')} - {report['model_version']}"
    png = plot_confusion(report, confusion_png_path(out), title=title.strip())
    return out, png


if __name__ == "__main__":
    main()
