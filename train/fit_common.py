"""Pieces every branch trainer shares: the epoch loop's bookkeeping, best-state tracking, saving a branch."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from train.calibrate import fit_temperature
from train.metrics import classification_report, expected_calibration_error

log = logging.getLogger(__name__)


@dataclass
class BestTracker:
    """Keeps the state of the epoch with the best dev score (selection on dev only, never on test)."""

    metric: str
    best: float = -1.0
    epoch: int = -1
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def update(self, epoch: int, report: dict, state: dict[str, torch.Tensor], **extra: float) -> bool:
        score = float(report[self.metric])
        self.history.append({"epoch": epoch, **{k: report[k] for k in ("accuracy", "uar", "macro_f1")}, **extra})
        if score > self.best:
            self.best, self.epoch = score, epoch
            self.state = {k: v.detach().to("cpu").clone() for k, v in state.items()}
            return True
        return False


def dev_summary(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Classification report + temperature + ECE before/after calibration, from dev logits."""
    y = labels.cpu().numpy()
    pred = logits.argmax(-1).cpu().numpy()
    report = classification_report(y, pred)
    t = fit_temperature(logits, labels)
    probs = logits.float().softmax(-1).cpu().numpy()
    probs_t = (logits.float() / t).softmax(-1).cpu().numpy()
    report["temperature"] = t
    report["ece_before"] = float(expected_calibration_error(probs, y))
    report["ece_after"] = float(expected_calibration_error(probs_t, y))
    return report


def save_branch(out: Path, branch: str, tensors: dict[str, torch.Tensor], summary: dict) -> None:
    """<out>/<branch>.safetensors (heads/adapters of that branch) + <out>/<branch>.json (figures)."""
    out.mkdir(parents=True, exist_ok=True)
    half = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }  # fp16: half the size
    save_file(half, str(out / f"{branch}.safetensors"))
    (out / f"{branch}.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    log.info("saved %s branch to %s", branch, out)


def _jsonable(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def branch_tensors(model: torch.nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The trainable tensors of one branch (heads + adapters), by state-dict key prefix."""
    state = model.trainable_state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefixes)}


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
