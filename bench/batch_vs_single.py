"""Does a clip get the same speech probabilities alone as inside mixed batches? Prints JSON.

Real speech (RAVDESS actor 19 joined and cut to 0.5-30 s), the model's speech branch, the predictor's precision
(float32 on CPU, bf16 autocast on CUDA). Used by tests/test_batch_equals_single.py and run on the GPU with

    python bench/batch_vs_single.py --device cuda [--model models/default] [--speech-backbone PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.model import load_speech_branch
from backend.settings import DEFAULT_MODEL_DIR
from train import corpora
from train.fit_speech import load_clips

SECONDS = (0.5, 1.0, 2.3, 4.0, 7.5, 13.0, 21.0, 30.0)


def real_clips(data: Path) -> list[np.ndarray]:
    source = np.concatenate(load_clips(corpora.ravdess(data / "ravdess-speech-16k", actors=[19])[:12]))
    return [source[int(i * 8_000) : int(i * 8_000) + int(s * 16_000)] for i, s in enumerate(SECONDS)]


def speech_probs(model, batch: list[np.ndarray]) -> np.ndarray:
    from backend.branches import speech_forward_batched

    cuda = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        logits = speech_forward_batched(model, batch)
    return model.heads.gate.calibrated(logits.float().to(model.device), "speech").float().cpu().numpy()


def max_batch_vs_single(model, clips: list[np.ndarray], orders: int = 3) -> float:
    """Largest |p(batch) - p(alone)| over clips, classes, random batch orders and the shortest+longest pair."""
    alone = np.concatenate([speech_probs(model, [c]) for c in clips])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(orders):
        order = rng.permutation(len(clips))
        worst = max(worst, float(np.abs(speech_probs(model, [clips[i] for i in order]) - alone[order]).max()))
    pair = speech_probs(model, [clips[0], clips[-1]])
    return max(worst, float(np.abs(pair - alone[[0, -1]]).max()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--speech-backbone", default=None)
    p.add_argument("--data", default=str(corpora.shared_data_dir()))
    args = p.parse_args()
    model = load_speech_branch(Path(args.model), args.device, args.speech_backbone)
    diff = max_batch_vs_single(model, real_clips(Path(args.data)))
    precision = "bf16 autocast" if args.device.startswith("cuda") else "float32"
    print(json.dumps({"device": args.device, "precision": precision, "seconds": SECONDS, "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
