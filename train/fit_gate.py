"""Fit the fusion gate on label-conditioned combinations of the shared dev corpora; report on disjoint rows.

Each branch's calibrated probabilities come from the real model once (train.fusion_data caches them per model
under runs/fusion_cache/); combinations of them (train.fusion_combos: agreeing, neutral words, the clips' own
Whisper transcripts, conflicts, missing modalities) are built from RAVDESS actors 17-18 and one half of the
texts and faces for fitting, actors 19-20 and the other half for reporting.

    python -m train.fit_gate --model models/default --write     # fit, report, store in the model folder
    python -m train.fit_gate --model models/default --compare   # fit every candidate rule, compare (JSON)
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

from backend.heads import FusionGate
from backend.labels import MODALITIES
from backend.model_config import WEIGHTS_NAME
from train.fusion_combos import Combos, build_combos
from train.fusion_data import load_cache
from train.fusion_rules import GateRule, candidates, fit_rule

log = logging.getLogger(__name__)

GATE_KEYS = ("bias", "slope")
RULE = "product of calibrated experts: prod_m p_m ** w_m, w_m = exp(bias_m + slope_m * confidence_m)"


def tensors(combos: Combos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(combos.probs).float(), torch.from_numpy(combos.present), torch.from_numpy(combos.y)


def kind_group(kind: str) -> str:
    """'agree:speech+text' -> 'agree' (the family a kind belongs to)."""
    return kind.split(":")[0]


def per_kind_accuracy(fused: np.ndarray, combos: Combos) -> dict[str, float]:
    """Accuracy of fused (N, 7) on each kind and on each family of kinds."""
    hit = fused.argmax(-1) == combos.y
    out = {k: float(hit[combos.kind == k].mean()) for k in sorted(set(combos.kind))}
    families = {kind_group(k) for k in combos.kind}
    family = np.array([kind_group(k) for k in combos.kind])
    out |= {f + ":*": float(hit[family == f].mean()) for f in sorted(families)}
    out["all"] = float(hit.mean())
    return out


def evaluate_rule(rule, combos: Combos) -> dict:
    probs, present, y = tensors(combos)
    with torch.no_grad():
        fused, _ = rule(probs, present)
    nll = float(torch.nn.functional.nll_loss(fused.clamp_min(1e-8).log(), y))
    return {"nll": round(nll, 4), "accuracy": per_kind_accuracy(fused.numpy(), combos)}


def compare(fit: Combos, report: Combos, shipped: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """Fit every candidate rule on `fit`, evaluate on `report`."""
    probs, present, y = tensors(fit)
    out = {}
    for name, rule in candidates(shipped).items():
        fit_rule(rule, probs, present, y)
        out[name] = evaluate_rule(rule, report)
        log.info("%-40s nll %.3f acc %.3f", name, out[name]["nll"], out[name]["accuracy"]["all"])
    return out


def fit_gate(gate: FusionGate, combos: Combos) -> FusionGate:
    """Fit the gate's reliability parameters (bias, slope) on paired combinations (two or more modalities)."""
    paired = combos.select(combos.present.sum(1) >= 2)
    if not len(paired):
        log.warning("no combination with two or more modalities: the gate is left as it is")
        return gate
    probs, present, y = tensors(paired)
    fit_rule(GateRule(gate), probs, present, y)
    return gate


def shipped_slope_gate(folder: Path, gate: FusionGate) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(bias, slope) of a folder whose gate was fitted as the v1 slope gate (its gate_fit.json names no rule)."""
    report = Path(folder) / "gate_fit.json"
    if report.exists() and "rule" in json.loads(report.read_text()):
        return None
    return gate.bias.detach().clone(), gate.slope.detach().clone()


def load_gate(folder: Path) -> FusionGate:
    """The gate (reliabilities and temperatures) of a model folder, without loading any backbone."""
    weights = load_file(str(Path(folder) / WEIGHTS_NAME))
    gate = FusionGate()
    gate.load_state_dict({k.removeprefix("heads.gate."): v.float() for k, v in weights.items() if "heads.gate." in k})
    return gate


def write_gate(folder: Path, gate: FusionGate, report: dict) -> None:
    """Store the gate's parameters in model.safetensors (fp16 like the rest) and the report in gate_fit.json."""
    weights = load_file(str(folder / WEIGHTS_NAME))
    dtype = weights["heads.gate.bias"].dtype
    for key in GATE_KEYS:
        weights[f"heads.gate.{key}"] = getattr(gate, key).detach().to(dtype).clone()
    save_file(weights, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / "gate_fit.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(
        prog="python -m train.fit_gate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--draws", type=int, default=4, help="combinations of each kind per anchor clip")
    p.add_argument("--compare", action="store_true", help="fit and compare every candidate rule")
    p.add_argument("--refresh", action="store_true", help="recompute the cached branch probabilities")
    p.add_argument("--write", action="store_true", help="store the fitted gate in the model folder")
    args = p.parse_args(argv)
    folder = Path(args.model)
    cache = load_cache(folder, refresh=args.refresh)
    fit, report = build_combos(cache, "fit", args.draws, seed=0), build_combos(cache, "report", args.draws, seed=1)
    gate = load_gate(folder)
    result: dict = {"model": str(folder), "n_fit": len(fit), "n_report": len(report), "draws": args.draws}
    if args.compare:
        result["rules"] = compare(fit, report, shipped_slope_gate(folder, gate))
    result["before"] = evaluate_rule(GateRule(gate), report)
    fit_gate(gate, fit)
    result["after"] = evaluate_rule(GateRule(gate), report)
    result |= {key: [round(v, 4) for v in getattr(gate, key).tolist()] for key in GATE_KEYS}  # fit_default reads these
    result |= {"rule": RULE, "modalities": list(MODALITIES)}
    if args.write:
        write_gate(folder, gate, result)
        log.info("wrote the gate to %s", folder / WEIGHTS_NAME)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
