"""Stores filled with real RAVDESS clips and GoEmotions texts through the store's own API, for retraining tests."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from backend.labels import LABELS
from backend.media import encode_wav
from labeling.store import Store
from train.corpora import Example, goemotions, ravdess
from train.fit_speech import load_clips
from train.retrain import RetrainConfig


def ravdess_examples(shared: Path, actors: list[int], per_actor: int, seed: int = 0) -> list[Example]:
    """A fixed choice of clips per actor, spread over the emotions."""
    rng = np.random.default_rng(seed)
    out = []
    for actor in actors:
        clips = ravdess(shared / "ravdess-speech-16k", [actor])
        out += [clips[i] for i in sorted(rng.choice(len(clips), size=per_actor, replace=False))]
    return out


def text_examples(shared: Path, n: int, seed: int = 0) -> list[Example]:
    texts = goemotions(shared / "text" / "goemotions-ekman" / "train.tsv", single_label_only=True)
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def add_speech(store: Store, example: Example, uploader: str | None = None, text: str | None = None) -> str:
    """The clip as the app keeps it: 16 kHz 16-bit wav, with consent (and the text typed with it, if any)."""
    audio = load_clips([example])[0]
    return store.add_clip(
        encode_wav(audio),
        ext=".wav",
        modalities=["speech", "text"] if text else ["speech"],
        duration=len(audio) / 16_000,
        consent=True,
        text=text,
        uploader=uploader,
    )


def add_text(store: Store, text: str, uploader: str | None = None) -> str:
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return store.add_clip(None, sha256=sha, ext=".txt", modalities=["text"], consent=True, text=text, uploader=uploader)


def add_prediction(store: Store, clip_id: str, label: str, version: str = "tiny-test") -> None:
    """A confident prediction of `label` (the hard negative when a vote disagrees)."""
    probs = {name: 0.05 for name in LABELS}
    probs[label] = 0.7
    store.add_prediction(clip_id, version, probs)


def wrong_label(true_label: int, rng: np.random.Generator) -> str:
    return LABELS[int(rng.choice([i for i in range(len(LABELS)) if i != true_label]))]


def fill_store(
    db: Path,
    shared: Path,
    *,
    actors: tuple[int, ...] = (1, 2),
    per_actor: int = 8,
    n_texts: int = 16,
    annotators: tuple[str, ...] = ("ann:a", "ann:b"),
    seed: int = 0,
) -> dict[str, int]:
    """Speech clips and texts, each with a wrong model prediction and votes of the true label by `annotators`.

    Returns clip id -> true label id.
    """
    rng = np.random.default_rng(seed)
    truth: dict[str, int] = {}
    with Store.open(db, k=3, gold_rate=0.0) as store:
        for ex in ravdess_examples(shared, list(actors), per_actor, seed):
            truth[add_speech(store, ex)] = ex.label
        for ex in text_examples(shared, n_texts, seed):
            truth[add_text(store, ex.text)] = ex.label
        for clip_id, label in truth.items():
            add_prediction(store, clip_id, wrong_label(label, rng))
            for annotator in annotators:
                store.vote(clip_id, annotator, LABELS[label])
    return truth


def small_config(tmp: Path, db: Path, model_dir: Path, cache: str, shared: Path, **overrides) -> RetrainConfig:
    """A CPU-fast run: tiny model, small replay subsets and dev sets."""
    values = dict(
        db=str(db),
        out=str(tmp / "run"),
        base_model=str(model_dir),
        data=str(shared),
        data_dir=str(tmp / "data"),
        cache=cache,
        epochs=2,
        batch_size=4,
        replay_per_batch=2,
        replay_limit=24,
        checkpoint_every=0,
        log_every=1,
        max_seconds=4.0,
        queue_size=8,
        speech_dev_size=14,
        text_dev_size=40,
        face_dev_size=40,
        holdout=0.25,
        tolerance=1.0,
        min_holdout=1,  # tiny stores: the gate's minimum n would block every promotion
        calibration=0.0,  # the tests' step counts assume every non-held-out correction trains
        calib_replay=8,
        cpu=True,
    )
    values.update(overrides)
    return RetrainConfig(**values)


def cli_args(config: RetrainConfig, exclude: tuple[str, ...] = ()) -> list[str]:
    """The command line that gives the same RetrainConfig (for subprocess runs), leaving out `exclude` fields."""
    args = []
    for name, value in dataclasses.asdict(config).items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args += [flag, str(value)]
    return args


def fill_paired(db: Path, shared: Path) -> None:
    """RAVDESS clips, each with a GoEmotions sentence of another emotion typed beside it; the crowd votes the
    clip's true (spoken) emotion, so the gate should learn to trust speech over this text."""
    rng = np.random.default_rng(0)
    texts = text_examples(shared, 80)
    with Store.open(db, k=3, gold_rate=0.0) as store:
        for ex in ravdess_examples(shared, [1, 2], 8):
            other = next(t for t in texts if t.label != ex.label)
            texts.remove(other)
            clip = add_speech(store, ex, text=other.text)
            add_prediction(store, clip, wrong_label(ex.label, rng))
            for annotator in ("ann:a", "ann:b"):
                store.vote(clip, annotator, LABELS[ex.label])
