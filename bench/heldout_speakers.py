"""One look at the ASED test speakers (never used for any choice): v2's speech branch beside a baseline model.

Prints JSON: UAR (7-way and over the five classes ASED has), with per-speaker adaptation, and the paired
difference to the baseline (bootstrap 95% interval, exact McNemar). Run once, at the end; never tune on it.

    python bench/heldout_speakers.py --baseline /path/to/v1 [--model models/default]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.adapt import group_stats
from backend.branches import shifted_speech_logits
from backend.labels import LABELS
from backend.model import load_speech_branch
from bench.report import emit
from train import corpora
from train.fit_speech import SHARED_LABELS, dev_embeddings, load_clips, shared_uar
from train.gate_stats import mcnemar_exact, paired_bootstrap
from train.metrics import classification_report


def score(folder: str, clips: list[np.ndarray], labels: np.ndarray, speakers: list[str]) -> tuple[dict, np.ndarray]:
    model = load_speech_branch(folder)
    logits, emb = dev_embeddings(model, clips)
    out = {"version": model.version, "uar_7way": classification_report(labels, logits.argmax(1))["uar"]}
    out["uar_shared"] = shared_uar(logits, labels)
    reference = model.heads.speech_head.reference_mean.float().numpy()
    if reference.any():
        stats = group_stats(emb, speakers)
        shift = np.stack([stats[s].shift(reference) for s in speakers])
        with torch.inference_mode():
            adapted = shifted_speech_logits(model, torch.from_numpy(emb), torch.from_numpy(shift)).numpy()
        out["uar_shared_speaker_adapted"] = shared_uar(adapted, labels)
    allowed = np.array([name in SHARED_LABELS for name in LABELS])
    return out, np.where(allowed, logits, -np.inf).argmax(1)


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/default")
    p.add_argument("--baseline", required=True, help="a model folder to compare with (e.g. v1)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    examples = corpora.ased(speakers=corpora.ASED_TEST_SPEAKERS)
    clips, labels = load_clips(examples), np.array([e.label for e in examples])
    speakers = [e.speaker for e in examples]
    report: dict = {"set": "ASED test speakers", "n": len(examples), "speakers": len(set(speakers))}
    report["baseline"], base = score(args.baseline, clips, labels, speakers)
    report["model"], new = score(args.model, clips, labels, speakers)
    deltas = paired_bootstrap(labels, base, new, metric="uar")
    right_b, right_n = base == labels, new == labels
    report["uar_shared_gain"] = {
        "mean": float(deltas.mean()),
        "ci95": [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))],
        "mcnemar": mcnemar_exact(int((right_b & ~right_n).sum()), int((~right_b & right_n).sum())),
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
