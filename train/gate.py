"""The promotion gate: a challenger replaces the champion only if it does better on held-out corrections and is
no worse than `tolerance` (absolute) on any fixed dev set, for every gated metric.

Dev sets are fixed subsets (same seed, same examples) of the splits no training ever sees: RAVDESS dev actors
17-20 (speech branch), GoEmotions-ekman dev single-label (text branch), FER2013 val (face branch). The held-out
corrections are scored through the predictor (fusion of every modality the clip has; no ASR) against their
trusted labels. Why a poisoned batch fails here: its challenger learns the poison, so it loses on the
corrections other annotators agree on (untrusted single-vote clips are never judged on) and collapses on the
dev sets, and either alone rejects it.

    python -m train.gate --db data/studio.db --champion models/v3 --challenger runs/x/challenger [--record]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.branches import face_eval_logits, speech_forward_batched, text_forward
from backend.labels import LABEL_TO_ID, LABELS
from backend.model import EmotionModel
from backend.settings import Settings, load_settings
from labeling.store import Store, now_iso
from train.corpora import SPEECH_DEV_ACTORS, fer2013_arrays, goemotions, ravdess, shared_data_dir
from train.corrections import CorrectionItem
from train.evaluate import parse_actors, subsample
from train.fit_speech import load_clips
from train.metrics import classification_report

log = logging.getLogger(__name__)

DEV_NAMES = {"speech": "ravdess_dev", "text": "goemotions_dev", "face": "fer2013_val"}
CORRECTIONS = "corrections_holdout"
HEADLINE = ("n", "accuracy", "uar", "macro_f1")


@dataclass
class GateConfig:
    """Sizes: 0 = the whole split, < 0 = leave that dev set out. Tolerance and gain are absolute."""

    data: Path = field(default_factory=shared_data_dir)
    speech_actors: tuple[int, ...] = tuple(SPEECH_DEV_ACTORS)
    speech_size: int = 0
    text_size: int = 1000
    face_size: int = 1000
    tolerance: float = 0.02
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    primary: str = "accuracy"
    min_gain: float = 0.0
    seed: int = 0


@dataclass
class DevSets:
    """Decoded inputs and label ids of each dev set: speech clips, texts, face crops (N, 48, 48)."""

    speech: tuple[list[np.ndarray], np.ndarray] | None = None
    text: tuple[list[str], np.ndarray] | None = None
    face: tuple[np.ndarray, np.ndarray] | None = None
    speech_split: str = "dev actors 17-20"


def load_dev_sets(cfg: GateConfig) -> DevSets:
    """The same fixed subsets on every call with the same config."""
    from backend.face import normalize_face

    data, dev = Path(cfg.data), DevSets()
    if cfg.speech_size >= 0:
        clips = subsample(ravdess(data / "ravdess-speech-16k", cfg.speech_actors), cfg.speech_size, cfg.seed)
        dev.speech = (load_clips(clips), np.array([e.label for e in clips]))
        dev.speech_split = "actors " + ",".join(str(a) for a in cfg.speech_actors)
    if cfg.text_size >= 0:
        texts = goemotions(data / "text" / "goemotions-ekman" / "dev.tsv", single_label_only=True)
        texts = subsample(texts, cfg.text_size, cfg.seed)
        dev.text = ([e.text for e in texts], np.array([e.label for e in texts]))
    if cfg.face_size >= 0:
        images, labels = fer2013_arrays(data / "faces" / "fer2013_val.npz")
        keep = np.array(subsample(list(range(len(images))), cfg.face_size, cfg.seed))
        dev.face = (np.stack([normalize_face(images[i]) for i in keep]).astype(np.float32), labels[keep])
    return dev


def headline(y_true: np.ndarray, y_pred: np.ndarray, modality: str, split: str) -> dict:
    report = classification_report(y_true, y_pred, LABELS)
    return {**{k: report[k] for k in HEADLINE}, "modality": modality, "split": split}


def evaluate_dev(model: EmotionModel, dev: DevSets) -> dict[str, dict]:
    """Each branch alone on its own dev set."""
    model.eval()
    out = {}
    with torch.inference_mode():
        if dev.speech is not None:
            logits = speech_forward_batched(model, dev.speech[0])
            out[DEV_NAMES["speech"]] = headline(dev.speech[1], logits.argmax(-1).numpy(), "speech", dev.speech_split)
        if dev.text is not None:
            texts = dev.text[0]
            logits = torch.cat(
                [text_forward(model, texts[a : a + 64])[0].float().cpu() for a in range(0, len(texts), 64)]
            )
            out[DEV_NAMES["text"]] = headline(dev.text[1], logits.argmax(-1).numpy(), "text", "dev (single-label)")
        if dev.face is not None:
            logits = face_eval_logits(model, dev.face[0])
            out[DEV_NAMES["face"]] = headline(dev.face[1], logits.argmax(-1).numpy(), "face", "val")
    return out


def evaluate_corrections(
    model: EmotionModel, items: list[CorrectionItem], settings: Settings | None = None
) -> dict | None:
    """Fused predictions through the app's predictor (ASR off: both models get the same inputs) vs trusted labels."""
    if not items:
        return None
    from backend.predictor import Predictor

    predictor = Predictor(model, dataclasses.replace(settings or load_settings(), asr=False))
    preds = [LABEL_TO_ID[p.label] for p in predictor.predict_chunked([it.sample() for it in items])]
    combos = ["+".join(it.modalities) for it in items]  # e.g. "speech+text" for audio with typed text
    main = max(sorted(set(combos)), key=combos.count)
    return headline(np.array([it.label for it in items]), np.array(preds), main, "held-out corrections")


def evaluate(model: EmotionModel, dev: DevSets, held: list[CorrectionItem], settings: Settings | None = None) -> dict:
    """All figures the gate compares: every dev set plus the held-out corrections (None when there are none)."""
    return {**evaluate_dev(model, dev), CORRECTIONS: evaluate_corrections(model, held, settings)}


def decide(champion: dict, challenger: dict, cfg: GateConfig) -> dict:
    """Compare the figures of evaluate(); the decision dict names every check and why it promotes or not."""
    checks = []
    for name in sorted(k for k in champion if k != CORRECTIONS):
        for metric in cfg.metrics:
            a, b = float(champion[name][metric]), float(challenger[name][metric])
            checks.append(
                {
                    "set": name,
                    "metric": metric,
                    "champion": a,
                    "challenger": b,
                    "delta": b - a,
                    "ok": b - a >= -cfg.tolerance - 1e-9,
                }
            )
    reasons = []
    old, new = champion.get(CORRECTIONS), challenger.get(CORRECTIONS)
    if not old or not new:
        reasons.append("no trusted held-out corrections to judge on (gold clips or clips with agreeing votes)")
    elif new[cfg.primary] - old[cfg.primary] <= cfg.min_gain:
        reasons.append(
            f"not better on held-out corrections: {cfg.primary} {new[cfg.primary]:.3f} vs champion "
            f"{old[cfg.primary]:.3f} (n={new['n']})"
        )
    failed = [c for c in checks if not c["ok"]]
    if failed:
        reasons.append(
            f"worse than the champion by more than {cfg.tolerance:g} on "
            + "; ".join(f"{c['set']} {c['metric']} {c['challenger']:.3f} vs {c['champion']:.3f}" for c in failed)
        )
    promote = not reasons
    if promote:
        verdict = "better" if new[cfg.primary] > old[cfg.primary] else f"no worse than min_gain {cfg.min_gain:g}"
        reasons.append(
            f"{verdict} on held-out corrections ({cfg.primary} {new[cfg.primary]:.3f} vs {old[cfg.primary]:.3f}, "
            f"n={new['n']}) and within {cfg.tolerance:g} of the champion on every dev set"
        )
    return {
        "promote": promote,
        "reason": "; ".join(reasons),
        "champion": champion,
        "challenger": challenger,
        "checks": checks,
        "tolerance": cfg.tolerance,
        "min_gain": cfg.min_gain,
        "primary": cfg.primary,
    }


def record_run(
    store: Store,
    decision: dict,
    *,
    started: str,
    base_version: str,
    candidate_version: str,
    n_corrections: int,
    extra: dict | None = None,
) -> int:
    """One row of the store's training_runs table with the decision and every figure behind it."""
    metrics = {k: decision[k] for k in ("champion", "challenger", "checks", "tolerance", "min_gain", "primary")}
    return store.record_training_run(
        {
            "started": started,
            "finished": now_iso(),
            "base_version": base_version,
            "candidate_version": candidate_version,
            "n_corrections": n_corrections,
            "metrics": {**metrics, **(extra or {})},
            "decision": "promoted" if decision["promote"] else "rejected",
            "reason": decision["reason"],
        }
    )


def gate_config(args: argparse.Namespace | object) -> GateConfig:
    """From the fields train.retrain's config and this CLI share (data, speech_dev_actors, *_dev_size, ...)."""
    return GateConfig(
        data=Path(args.data),
        speech_actors=tuple(parse_actors(args.speech_dev_actors)),
        speech_size=args.speech_dev_size,
        text_size=args.text_dev_size,
        face_size=args.face_dev_size,
        tolerance=args.tolerance,
        min_gain=args.min_gain,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Judge two model folders on the dev sets and a store's held-out corrections; print the decision."""
    from train.corrections import load_corrections, split

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m train.gate", description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--champion", required=True)
    p.add_argument("--challenger", required=True)
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--speech-dev-actors", default="17-20")
    p.add_argument("--speech-dev-size", type=int, default=0)
    p.add_argument("--text-dev-size", type=int, default=1000)
    p.add_argument("--face-dev-size", type=int, default=1000)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--min-gain", type=float, default=0.0)
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--min-eval-votes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", action="store_true", help="record the decision in the store's training runs")
    args = p.parse_args(argv)
    settings = load_settings()
    started = now_iso()
    with Store.open(args.db) as store:
        _, held = split(load_corrections(store, min_eval_votes=args.min_eval_votes, settings=settings), args.holdout)
        cfg = gate_config(args)
        dev = load_dev_sets(cfg)
        champion, challenger = (
            EmotionModel.from_pretrained(m, cache=settings.cache) for m in (args.champion, args.challenger)
        )
        decision = decide(evaluate(champion, dev, held, settings), evaluate(challenger, dev, held, settings), cfg)
        if args.record:
            record_run(
                store,
                decision,
                started=started,
                base_version=champion.version,
                candidate_version=challenger.version,
                n_corrections=0,
            )
    print(json.dumps(decision))
    return decision


if __name__ == "__main__":
    main()
