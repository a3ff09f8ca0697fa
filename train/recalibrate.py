"""Recalibrate a challenger after retraining: per-branch temperatures and the fusion gate, refitted on a
calibration split that is neither its training data nor the promotion gate's held-out slice.

The calibration set of a branch = the corrections of the calibration slice (train.corrections.partition) that
have that modality, alone when there are at least `min_items` of them (the users' own data), else together with
a fixed hold-back of base-corpus replay examples (taken out of the replay pool before training, so never trained
on). Temperatures: train.calibrate.fit_temperature. Fusion: train.fit_gate.fit on the
calibrated branch probabilities of multimodal calibration corrections. A branch (or the fusion) with fewer than
`min_items` examples keeps the champion's value, and the report says so. ECE/NLL before and after are reported
on the calibration set and, for information only, on the gate's held-out corrections.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backend.labels import MODALITIES
from backend.model import EmotionModel
from train.calibrate import fit_temperature
from train.corrections import CorrectionItem, one_hot
from train.metrics import expected_calibration_error
from train.replay import ReplayPool

log = logging.getLogger(__name__)


@dataclass
class CalibrationConfig:
    min_items: int = 30
    fit_fusion: bool = True


def hold_back(pool: ReplayPool, per_branch: int, seed: int) -> tuple[ReplayPool, list[CorrectionItem]]:
    """(the pool without the hold-back, the hold-back as items): per_branch random examples of each loaded
    modality, fixed by seed. The returned pool is what training replays."""
    from train.fit_speech import load_clips

    rng = np.random.default_rng([seed, 7])
    if per_branch <= 0:
        return pool, []

    def pick(size: int) -> set[int]:
        return set(rng.choice(size, size=min(per_branch, size // 2), replace=False).tolist()) if size else set()

    items: list[CorrectionItem] = []
    speech_keep = pick(len(pool.speech))
    examples = [pool.speech[i] for i in sorted(speech_keep)]
    for i, (ex, wave) in enumerate(zip(examples, load_clips(examples))):
        items.append(CorrectionItem(f"calib:speech:{i}", one_hot(ex.label), audio=wave))
    text_keep = pick(len(pool.text))
    items += [CorrectionItem(f"calib:text:{i}", one_hot(pool.text[i][1]), text=pool.text[i][0]) for i in text_keep]
    face_keep = pick(pool.size("face"))
    if face_keep:
        crops, labels = pool.face
        items += [CorrectionItem(f"calib:face:{i}", one_hot(int(labels[i])), faces=crops[i : i + 1]) for i in face_keep]
    rest = ReplayPool(
        speech=[e for i, e in enumerate(pool.speech) if i not in speech_keep],
        text=[t for i, t in enumerate(pool.text) if i not in text_keep],
        face=None if pool.face is None else _without(pool.face, face_keep),
    )
    return rest, items


def _without(face: tuple[np.ndarray, np.ndarray], drop: set[int]) -> tuple[np.ndarray, np.ndarray]:
    keep = np.array([i for i in range(len(face[1])) if i not in drop], dtype=np.int64)
    return face[0][keep], face[1][keep]


def branch_logits(model: EmotionModel, items: list[CorrectionItem], branch: str) -> torch.Tensor:
    """(N, 7) float32 CPU logits of one branch for items that have that modality (face: mean over crops)."""
    from backend.branches import face_eval_logits, speech_forward_batched, text_forward

    if not items:
        return torch.empty(0, 7)
    with torch.inference_mode():
        if branch == "speech":
            return speech_forward_batched(model, [it.audio for it in items]).float()
        if branch == "text":
            texts = [it.text for it in items]
            return torch.cat(
                [text_forward(model, texts[a : a + 64])[0].float().cpu() for a in range(0, len(texts), 64)]
            )
        crops = np.concatenate([it.faces for it in items])
        logits = face_eval_logits(model, crops)
        ends = np.cumsum([len(it.faces) for it in items])
        return torch.stack([part.mean(0) for part in torch.tensor_split(logits, ends[:-1].tolist())])


def scores(probs: torch.Tensor, y: torch.Tensor) -> dict:
    """ECE (15 bins) and NLL of probabilities (N, 7) against labels (N,)."""
    if not len(y):
        return {"n": 0}
    nll = F.nll_loss(probs.clamp_min(1e-8).log(), y).item()
    return {"n": len(y), "ece": expected_calibration_error(probs.numpy(), y.numpy()), "nll": nll}


def refit_temperature(model: EmotionModel, branch: str, fit: list, held: list, min_items: int) -> dict:
    """Refit one branch's temperature on `fit` items; ECE/NLL before and after on fit and held items."""
    gate, index = model.heads.gate, MODALITIES.index(branch)
    old = float(gate.log_temperature[index].exp())
    logits, y = branch_logits(model, fit, branch), torch.tensor([it.label for it in fit], dtype=torch.long)
    held_logits, held_y = branch_logits(model, held, branch), torch.tensor([it.label for it in held], dtype=torch.long)
    report = {"n_fit": len(fit), "temperature_before": old, "refit": len(fit) >= min_items}
    new = fit_temperature(logits, y) if report["refit"] else old
    for name, t in (("before", old), ("after", new)):
        report[f"calibration_{name}"] = scores(torch.softmax(logits / t, -1), y)
        report[f"held_out_{name}"] = scores(torch.softmax(held_logits / t, -1), held_y)
    report["temperature_after"] = new
    with torch.no_grad():
        gate.log_temperature[index] = math.log(new)
    return report


def calibrated_rows(model: EmotionModel, items: list[CorrectionItem]) -> tuple[np.ndarray, np.ndarray]:
    """probs (N, 3, 7) in MODALITIES order (uniform where a modality is absent) and present (N, 3) bool."""
    gate = model.heads.gate
    probs = np.full((len(items), len(MODALITIES), 7), 1.0 / 7, dtype=np.float32)
    present = np.array([[m in it.modalities for m in MODALITIES] for it in items], dtype=bool)
    for j, m in enumerate(MODALITIES):
        rows = np.flatnonzero(present[:, j])
        if rows.size:
            logits = branch_logits(model, [items[i] for i in rows], m).to(model.device)
            with torch.no_grad():
                probs[rows, j] = gate.calibrated(logits, m).float().cpu().numpy()
    return probs, present


def fused_scores(model: EmotionModel, probs: np.ndarray, present: np.ndarray, y: np.ndarray) -> dict:
    gate = model.heads.gate
    with torch.no_grad():
        fused, _ = gate.fuse(torch.from_numpy(probs).to(model.device), torch.from_numpy(present).to(model.device))
    return scores(fused.float().cpu(), torch.from_numpy(y))


def refit_fusion(model: EmotionModel, fit: list[CorrectionItem], min_items: int) -> dict:
    """Refit the fusion gate's reliability parameters with train.fit_gate.fit_gate on the multimodal
    calibration corrections (replay examples have one modality, so they never count here)."""
    rows = [it for it in fit if len(it.modalities) >= 2]
    report = {"n_fit": len(rows), "refit": len(rows) >= min_items}
    if not rows:
        return report
    from train.fit_gate import fit_gate
    from train.fusion_combos import Combos

    probs, present = calibrated_rows(model, rows)
    y = np.array([it.label for it in rows], dtype=np.int64)
    kind = np.array(["corrections:" + "+".join(it.modalities) for it in rows])
    report["before"] = fused_scores(model, probs, present, y)
    if report["refit"]:
        gate = model.heads.gate
        with torch.inference_mode(False), torch.enable_grad():
            gate.bias.data, gate.slope.data = gate.bias.data.clone(), gate.slope.data.clone()
            fit_gate(gate, Combos(probs, present, y, kind, np.arange(len(rows))))
        report["after"] = fused_scores(model, probs, present, y)
    return report


def calibration_rows(calib: list[CorrectionItem], branch: str, min_items: int) -> tuple[list[CorrectionItem], str]:
    """The branch's calibration rows: the users' corrections alone when there are enough of them (the data the
    app serves), else those plus the replay hold-back (ids 'calib:...'), which is base-corpus data."""
    rows = [it for it in calib if branch in it.modalities]
    own = [it for it in rows if not it.clip_id.startswith("calib:")]
    if len(own) >= min_items or len(own) == len(rows):
        return own, "corrections"
    return rows, "corrections + replay hold-back"


def recalibrate(
    model: EmotionModel,
    calib: list[CorrectionItem],
    held: list[CorrectionItem],
    branches: tuple[str, ...],
    cfg: CalibrationConfig | None = None,
) -> dict:
    """Refit in place the temperatures of `branches` and the fusion gate; returns the report for the run summary."""
    cfg = cfg or CalibrationConfig()
    model.eval()
    report: dict = {"min_items": cfg.min_items, "branches": {}}
    for branch in branches:
        fit, source = calibration_rows(calib, branch, cfg.min_items)
        held_b = [it for it in held if branch in it.modalities]
        report["branches"][branch] = {"fit_on": source, **refit_temperature(model, branch, fit, held_b, cfg.min_items)}
        b = report["branches"][branch]
        log.info(
            "%s: temperature %.3f -> %.3f on %d items; ECE %.3f -> %.3f",
            branch,
            b["temperature_before"],
            b["temperature_after"],
            b["n_fit"],
            b["calibration_before"].get("ece", float("nan")),
            b["calibration_after"].get("ece", float("nan")),
        )
    if cfg.fit_fusion:
        report["fusion"] = refit_fusion(
            model, [it for it in calib if not it.clip_id.startswith("calib:")], cfg.min_items
        )
    return report
