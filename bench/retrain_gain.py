"""Does retraining on a new user's corrections help? A simulated crowd labels the clips of two RAVDESS dev actors
(speakers the base model never trained on) through the store; the retraining job runs as in production; then
champion and challenger are compared on that user's held-out clips (their true labels) and on the dev sets
(the other dev actors, GoEmotions dev, FER2013 val), where the gate allows no loss beyond its tolerance.

    python bench/retrain_gain.py --model models/default --out runs/gain                    # full run (GPU)
    python bench/retrain_gain.py --model models/default --out /tmp/gain --limit 8 --epochs 1  # CPU smoke check

Caveat: the "new user" (RAVDESS actors 17-18) was used to select v1's checkpoint and fit its gate slope, so the
champion's baseline here is inflated and one seed of ~25 held-out clips cannot show a gain; bench/adapt_ased.py is
the honest adaptation bench (a corpus v1 never saw, unseen scoring speakers, several seeds, a learning curve).

Prints one JSON object (figures, the gate's decision, timings). The crowd: three annotators who give the true
label with probabilities 0.9, 0.8 and 0.6 (else a random other label), and a share of the user's clips marked
gold, from which the store estimates each annotator's reliability.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.branches import speech_forward_batched
from backend.labels import LABEL_TO_ID, LABELS
from backend.media import encode_wav
from backend.model import EmotionModel
from backend.predictor import Predictor
from backend.settings import DEFAULT_MODEL_DIR, load_settings
from backend.types import Sample
from labeling.store import Store
from train.corpora import RAVDESS_STATEMENTS, ravdess, shared_data_dir
from train.corrections import in_holdout
from train.evaluate import parse_actors
from train.fit_speech import load_clips
from train.metrics import classification_report
from train.retrain import RetrainConfig, run

CROWD = (("crowd:1", 0.9), ("crowd:2", 0.8), ("crowd:3", 0.6))


def user_clips(data: Path, actors: list[int], limit: int) -> list:
    """All (or the first `limit`, spread over emotions by file order) clips of each user actor."""
    out = []
    for actor in actors:
        clips = ravdess(data / "ravdess-speech-16k", [actor])
        out += clips[:: max(1, len(clips) // limit)][:limit] if limit else clips
    return out


def phone_channel(audio: list[np.ndarray], snr_db: float, seed: int) -> list[np.ndarray]:
    """A new user's recording condition the base model never saw: 8 kHz telephone band plus noise."""
    import torchaudio.functional as AF

    rng = np.random.default_rng(seed)
    out = []
    for wave in audio:
        narrow = AF.resample(AF.resample(torch.from_numpy(wave), 16_000, 8_000), 8_000, 16_000).numpy()[: len(wave)]
        noise = rng.standard_normal(len(narrow)).astype(np.float32)
        power = float(np.mean(narrow**2)) or 1e-10
        out.append((narrow + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32))
    return out


def statement_of(example) -> str:
    """The sentence spoken in a RAVDESS clip (what a user would type beside it, or ASR would hear)."""
    return RAVDESS_STATEMENTS[example.meta["statement"]]


def fill_store(
    db: Path,
    clips: list,
    audio: list[np.ndarray],
    champion: EmotionModel,
    gold: float,
    seed: int,
    texts: list[str] | None = None,
) -> dict:
    """The clips as the app keeps them (with the text typed beside each, if texts), the champion's prediction
    (the hard negative), crowd votes, gold marks."""
    rng = np.random.default_rng(seed)
    predictor = Predictor(champion, load_settings(asr=False))
    texts = texts or [None] * len(audio)
    samples = [Sample(audio=w, text=t) for w, t in zip(audio, texts)]
    probs = [p.probs for p in predictor.predict_chunked(samples)]
    ids = {}
    with Store.open(db, k=3, gold_rate=0.0) as store:
        for ex, wave, text, prob in zip(clips, audio, texts, probs):
            data = encode_wav(wave)
            modalities = ["speech", "text"] if text else ["speech"]
            clip = store.add_clip(
                data, ext=".wav", modalities=modalities, duration=len(wave) / 16_000, consent=True, text=text
            )
            ids[clip] = ex.label
            store.add_prediction(clip, champion.version, prob)
            if rng.random() < gold:
                store.add_gold(clip, LABELS[ex.label])
            for annotator, accuracy in CROWD:
                wrong = [i for i in range(len(LABELS)) if i != ex.label]
                store.vote(clip, annotator, LABELS[ex.label if rng.random() < accuracy else int(rng.choice(wrong))])
    return ids


def score(model: EmotionModel, audio: list[np.ndarray], labels: np.ndarray, texts: list[str] | None = None) -> dict:
    """Figures against the true labels ({"n": 0} for an empty slice): the speech branch alone, or with texts
    the fused prediction (speech + text through the gate), as the app would answer."""
    if not audio:
        return {"n": 0, "accuracy": float("nan"), "uar": float("nan"), "macro_f1": float("nan")}
    with torch.inference_mode():
        if texts is None:
            pred = speech_forward_batched(model.eval(), audio).argmax(-1).numpy()
        else:
            predictor = Predictor(model.eval(), load_settings(asr=False))
            samples = [Sample(audio=w, text=t) for w, t in zip(audio, texts)]
            pred = np.array([LABEL_TO_ID[p.label] for p in predictor.predict_chunked(samples)])
    report = classification_report(labels, pred, LABELS)
    return {k: report[k] for k in ("n", "accuracy", "uar", "macro_f1")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="the champion (folder or Hub id)")
    p.add_argument("--out", required=True, help="work folder (store, run, registry); must not exist")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--actors", default="17,18", help="the new user: RAVDESS dev actors")
    p.add_argument("--dev-actors", default="19,20", help="speech dev set for the gate (the other dev actors)")
    p.add_argument("--limit", type=int, default=0, help="clips per user actor (0 = all 60)")
    p.add_argument("--gold", type=float, default=0.1, help="share of the user's clips marked gold")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--replay-limit", type=int, default=0)
    p.add_argument("--text-dev-size", type=int, default=1000)
    p.add_argument("--face-dev-size", type=int, default=1000)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--channel",
        choices=["clean", "phone"],
        default="clean",
        help="phone: the user records through an 8 kHz line with noise (a condition unseen in training)",
    )
    p.add_argument("--snr-db", type=float, default=10.0, help="noise level of the phone channel")
    p.add_argument(
        "--with-text",
        action="store_true",
        help="each clip comes with its sentence typed beside it (speech + text): scores are fused, the gate trains",
    )
    return p.parse_args(argv)


def dev_deltas(decision: dict) -> dict:
    """Champion and challenger on each dev set the gate judged, with the changes."""
    out = {}
    for name, new in decision["challenger"].items():
        if name == "corrections_holdout" or not new:
            continue
        old = decision["champion"][name]
        out[name] = {
            "champion": old,
            "challenger": new,
            "delta_accuracy": new["accuracy"] - old["accuracy"],
            "delta_macro_f1": new["macro_f1"] - old["macro_f1"],
        }
    return out


def retrain(args: argparse.Namespace, out: Path) -> tuple[RetrainConfig, dict]:
    config = RetrainConfig(
        db=str(out / "studio.db"),
        out=str(out / "run"),
        base_model=args.model,
        data=args.data,
        data_dir=str(out / "data"),
        epochs=args.epochs,
        replay_limit=args.replay_limit,
        speech_dev_actors=args.dev_actors,
        text_dev_size=args.text_dev_size,
        face_dev_size=args.face_dev_size,
        cpu=args.cpu,
        seed=args.seed,
    )
    return config, run(config)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    out, start = Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=False)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    settings = load_settings()
    champion = EmotionModel.from_pretrained(args.model, cache=settings.cache, device=device)
    clips = user_clips(Path(args.data), parse_actors(args.actors), args.limit)
    audio = load_clips(clips)
    if args.channel == "phone":
        audio = phone_channel(audio, args.snr_db, args.seed)
    texts = [statement_of(ex) for ex in clips] if args.with_text else None
    ids = fill_store(out / "studio.db", clips, audio, champion, args.gold, args.seed, texts)
    prepared = time.perf_counter()
    config, result = retrain(args, out)
    retrained = time.perf_counter()
    held = [i for i, clip in enumerate(ids) if in_holdout(clip, config.holdout)]  # never trained on, trusted or not
    labels = np.array([clips[i].label for i in held])
    challenger = EmotionModel.from_pretrained(Path(config.out) / "challenger", cache=settings.cache, device=device)
    held_texts = [texts[i] for i in held] if texts else None
    before, after = (score(m, [audio[i] for i in held], labels, held_texts) for m in (champion, challenger))
    decision = result["decision"]
    report = {
        "model": args.model,
        "champion_version": champion.version,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "user_actors": args.actors,
        "channel": args.channel if args.channel == "clean" else f"phone, {args.snr_db:g} dB SNR",
        "dev_actors": args.dev_actors,
        "user_clips": len(ids),
        "with_text": bool(texts),
        "scored": "fused speech + text" if texts else "speech branch",
        "gate_trained": result.get("gate_trained"),
        "gold": args.gold,
        "train_corrections": result["train"]["items"],
        "held_out_clips": len(held),
        "crowd": dict(CROWD),
        "user_heldout_true_labels": {
            "champion": before,
            "challenger": after,
            "gain_accuracy": after["accuracy"] - before["accuracy"],
            "gain_macro_f1": after["macro_f1"] - before["macro_f1"],
        },
        "dev": dev_deltas(decision),
        "gate": {
            "promote": decision["promote"],
            "reason": decision["reason"],
            "version": decision["version"],
            "corrections_holdout": {k: decision[k]["corrections_holdout"] for k in ("champion", "challenger")},
        },
        "train_steps": result["step"],
        "epochs": args.epochs,
        "seconds": {
            "prepare": round(prepared - start, 1),
            "retrain_and_gate": round(retrained - prepared, 1),
            "train_only": result["seconds"],
            "total": round(time.perf_counter() - start, 1),
        },
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
