"""Calibrate the speech branch on a dev mix of corpora and recording conditions, and pick the "not sure" threshold.

Dev mix: RAVDESS actors 17-20 and ASED dev speakers, each clean and under a few fixed conditions
(train.conditions). Writes the speech temperature and `uncertain_threshold` into the model folder (--write) and
prints JSON: ECE before/after on the whole mix, cross-corpus ECE (temperature fitted on one corpus, ECE measured
on the other), and the coverage/accuracy curve the threshold is read from. Selection on dev only.

    python -m train.speech_calibration --model models/default --codecs runs/codecs [--write]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from backend.labels import MODALITIES
from backend.model import load_speech_branch
from backend.model_config import WEIGHTS_NAME, EmotionConfig
from train import conditions
from train.calibrate import fit_temperature
from train.corpora import ASED_DEV_SPEAKERS, SPEECH_DEV_ACTORS, ased, ravdess, shared_data_dir
from train.fit_speech import dev_embeddings, load_clips
from train.metrics import expected_calibration_error

log = logging.getLogger(__name__)

MIX_CONDITIONS = ("clean", "noise_babble_10db", "telephone_8k", "opus_16kbps")
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.2, 0.9, 0.05))


def dev_mix(model, data: Path, codecs: Path | None) -> dict[str, np.ndarray]:
    """Raw (uncalibrated) speech logits of every dev clip under every mix condition, with labels and corpus."""
    sets = {
        "ravdess": ravdess(data / "ravdess-speech-16k", SPEECH_DEV_ACTORS),
        "ased": ased(data / "ased-speech-16k", ASED_DEV_SPEAKERS),
    }
    logits, labels, corpus, cond = [], [], [], []
    for name, examples in sets.items():
        clean = load_clips(examples)
        for c in MIX_CONDITIONS:
            if c in conditions.CODEC_CONDITIONS and codecs is None:
                continue
            clips = conditions.degrade(c, clean, [e.path for e in examples], codecs, data)
            logits.append(dev_embeddings(model, clips)[0])
            labels += [e.label for e in examples]
            corpus += [name] * len(examples)
            cond += [c] * len(examples)
            log.info("%s %s: %d clips", name, c, len(examples))
    return {
        "logits": np.concatenate(logits),
        "labels": np.array(labels),
        "corpus": np.array(corpus),
        "condition": np.array(cond),
    }


def _probs(logits: np.ndarray, t: float) -> np.ndarray:
    return torch.from_numpy(logits).float().div(t).softmax(-1).numpy()


def coverage_curve(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """For each threshold: share of clips answered (top prob >= t), their accuracy, and the rejected ones'."""
    top, right = probs.max(1), probs.argmax(1) == labels
    rows = []
    for t in THRESHOLDS:
        keep = top >= t
        rows.append(
            {
                "threshold": t,
                "coverage": float(keep.mean()),
                "accuracy_answered": float(right[keep].mean()) if keep.any() else None,
                "accuracy_not_sure": float(right[~keep].mean()) if (~keep).any() else None,
            }
        )
    return rows


def pick_threshold(probs: np.ndarray, labels: np.ndarray, band: float = 0.1) -> float:
    """The highest threshold t whose clips just under it (top probability in [t - band, t)) are more often wrong
    than right: "not sure" then means what it says."""
    top, right = probs.max(1), probs.argmax(1) == labels
    chosen = THRESHOLDS[0]
    for t in THRESHOLDS:
        under = (top >= t - band) & (top < t)
        if under.any() and right[under].mean() < 0.5:
            chosen = t
    return float(chosen)


def calibrate(mix: dict[str, np.ndarray]) -> dict:
    logits, labels, corpus = mix["logits"], mix["labels"], mix["corpus"]
    t = fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels))
    report: dict = {
        "n": len(labels),
        "conditions": sorted(set(mix["condition"].tolist())),
        "temperature": t,
        "ece_before": float(expected_calibration_error(_probs(logits, 1.0), labels)),
        "ece_after": float(expected_calibration_error(_probs(logits, t), labels)),
        "cross_corpus": {},
    }
    for fit_on in ("ravdess", "ased"):
        other = corpus != fit_on
        t_one = fit_temperature(torch.from_numpy(logits[~other]), torch.from_numpy(labels[~other]))
        report["cross_corpus"][f"fit_{fit_on}_score_other"] = {
            "temperature": t_one,
            "n": int(other.sum()),
            "ece": float(expected_calibration_error(_probs(logits[other], t_one), labels[other])),
        }
    for name in ("ravdess", "ased"):
        m = corpus == name
        report[f"ece_after_{name}"] = float(expected_calibration_error(_probs(logits[m], t), labels[m]))
    report["curve"] = coverage_curve(_probs(logits, t), labels)
    report["uncertain_threshold"] = pick_threshold(_probs(logits, t), labels)
    return report


def write(folder: Path, report: dict) -> None:
    """Speech temperature into the weights, the threshold into config.json, the report beside them."""
    tensors = load_file(str(folder / WEIGHTS_NAME))
    log_t = tensors["heads.gate.log_temperature"].float().clone()
    log_t[MODALITIES.index("speech")] = math.log(report["temperature"])
    tensors["heads.gate.log_temperature"] = log_t.to(tensors["heads.gate.log_temperature"].dtype)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    config = EmotionConfig.load(folder)
    config.uncertain_threshold = report["uncertain_threshold"]
    config.save(folder)
    (folder / "speech_calibration.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m train.speech_calibration", description=__doc__)
    p.add_argument("--model", default="models/default")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--codecs", default=None, help="codec copies (python -m train.codec_views); else no codec rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache-logits", default=None, help="npz: reuse (or write) the dev-mix logits")
    p.add_argument("--speech-backbone", default=None, help="override the model's (e.g. a packed copy on a GPU box)")
    p.add_argument("--write", action="store_true", help="store temperature and threshold in the model folder")
    args = p.parse_args(argv)
    cached = Path(args.cache_logits) if args.cache_logits else None
    if cached and cached.is_file():
        mix = dict(np.load(cached))
    else:
        model = load_speech_branch(args.model, args.device, args.speech_backbone)
        mix = dev_mix(model, Path(args.data), Path(args.codecs) if args.codecs else None)
        if cached:
            np.savez_compressed(cached, **mix)
    report = calibrate(mix)
    if args.write:
        write(Path(args.model), report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
