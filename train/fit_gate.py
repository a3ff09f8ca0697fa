"""Fit the fusion gate on paired speech + transcript examples (RAVDESS dev actors), report on other actors.

Until users' multimodal corrections exist, RAVDESS is the only paired data: its audio and the Whisper
transcript of it. Fitting on actors 17-18 and reporting on 19-20 keeps the figure honest.

    python -m train.fit_gate --model models/default --fit-actors 17,18 --report-actors 19,20 --write
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from backend.labels import LABELS
from backend.model import EmotionModel
from backend.model_config import WEIGHTS_NAME
from backend.predictor import Predictor
from backend.settings import load_settings
from train import corpora
from train.evaluate import to_sample
from train.metrics import classification_report

log = logging.getLogger(__name__)


def branch_probs(predictor: Predictor, actors: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Calibrated speech and text (from ASR) probabilities for every clip of the given actors."""
    examples = corpora.ravdess(corpora.shared_data_dir() / "ravdess-speech-16k", actors=actors)
    samples = [to_sample(e) for e in examples]
    preds = predictor.predict_chunked(samples)
    probs = {m: torch.tensor([[p.modalities[m].probs[k] for k in LABELS] for p in preds]) for m in ("speech", "text")}
    return probs, torch.tensor([e.label for e in examples])


def fused_accuracy(gate: torch.nn.Module, probs: dict[str, torch.Tensor], y: torch.Tensor) -> dict:
    with torch.no_grad():
        fused, weights = gate(probs)
    report = classification_report(y.numpy(), fused.argmax(-1).numpy())
    return {
        "accuracy": report["accuracy"],
        "uar": report["uar"],
        "macro_f1": report["macro_f1"],
        "mean_weights": {m: float(w.mean()) for m, w in weights.items()},
    }


def fit(gate: torch.nn.Module, probs: dict[str, torch.Tensor], y: torch.Tensor, slopes: tuple[str, ...] = ()) -> None:
    """slopes: learn only how much these modalities' confidence counts (priors stay equal). RAVDESS sentences
    are neutral by design, so learning the text prior or slope here would teach the gate to ignore words."""
    from backend.labels import MODALITIES

    mask = torch.tensor([float(m in slopes) for m in MODALITIES]) if slopes else None
    params = [gate.slope] if slopes else [gate.bias, gate.slope]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        fused, _ = gate(probs)
        loss = torch.nn.functional.nll_loss(fused.clamp_min(1e-8).log(), y) + 1e-3 * sum(p.pow(2).sum() for p in params)
        loss.backward()
        if mask is not None:
            gate.slope.grad.mul_(mask)
        return loss

    opt.step(closure)


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(
        prog="python -m train.fit_gate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--fit-actors", default="17,18")
    p.add_argument("--report-actors", default="19,20")
    p.add_argument("--write", action="store_true", help="store the fitted gate in the model folder")
    p.add_argument("--slopes", default="", help="comma list: fit only these modalities' confidence slopes")
    args = p.parse_args(argv)
    settings = load_settings(asr=True)
    model = EmotionModel.from_pretrained(args.model, cache=settings.cache)
    predictor = Predictor(model, settings)
    fit_probs, fit_y = branch_probs(predictor, [int(a) for a in args.fit_actors.split(",")])
    rep_probs, rep_y = branch_probs(predictor, [int(a) for a in args.report_actors.split(",")])
    gate = model.heads.gate
    before = fused_accuracy(gate, rep_probs, rep_y)
    speech_only = fused_accuracy(gate, {"speech": rep_probs["speech"]}, rep_y)
    with torch.inference_mode(False), torch.enable_grad():
        gate.bias.data, gate.slope.data = gate.bias.data.clone(), gate.slope.data.clone()
        fit(gate, fit_probs, fit_y, slopes=tuple(m for m in args.slopes.split(",") if m))
    after = fused_accuracy(gate, rep_probs, rep_y)
    result = {
        "fit_actors": args.fit_actors,
        "report_actors": args.report_actors,
        "speech_only": speech_only,
        "fused_before": before,
        "fused_after": after,
        "bias": gate.bias.tolist(),
        "slope": gate.slope.tolist(),
    }
    if args.write:
        folder = Path(args.model)
        tensors = load_file(str(folder / WEIGHTS_NAME))
        tensors["heads.gate.bias"] = gate.bias.detach().half().clone()
        tensors["heads.gate.slope"] = gate.slope.detach().half().clone()
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / "gate_fit.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
