"""Recalibration of a challenger: the calibration slice is disjoint from training and the gate's held-out slice,
the slices rotate, the replay hold-back leaves the replay pool, and a refit temperature lowers the fitted NLL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backend.labels import MODALITIES
from backend.model import EmotionModel
from tests.retrain_helpers import text_examples
from train.corrections import CorrectionItem, one_hot, partition
from train.recalibrate import CalibrationConfig, hold_back, recalibrate
from train.replay import ReplayPool


def items(n: int, trusted: bool = True) -> list[CorrectionItem]:
    return [CorrectionItem(f"{i:064x}", one_hot(i % 7), text=f"text {i}", trusted=trusted) for i in range(n)]


def test_slices_are_disjoint_grow_and_rotate() -> None:
    pool = items(2000)
    parts = partition(pool, 0.2, 0.15, rotation=0)
    ids = [{it.clip_id for it in s} for s in (parts.train, parts.calib, parts.held)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 2000
    assert abs(len(parts.held) / 2000 - 0.2) < 0.03 and abs(len(parts.calib) / 2000 - 0.15) < 0.03
    bigger = partition(items(4000), 0.2, 0.15, rotation=0)
    assert {it.clip_id for it in parts.held} <= {it.clip_id for it in bigger.held}  # grows, never reshuffles
    other = partition(pool, 0.2, 0.15, rotation=1)
    overlap = len(ids[2] & {it.clip_id for it in other.held}) / len(ids[2])
    assert overlap < 0.35  # a new rotation draws a new slice (about 20% overlap by chance)
    untrusted = partition(items(500, trusted=False), 0.2, 0.15)
    assert not untrusted.held and len(untrusted.train) + len(untrusted.calib) < 500  # never judged, never trained


def test_hold_back_takes_examples_out_of_the_replay_pool(shared_data: Path) -> None:
    texts = [(e.text, e.label) for e in text_examples(shared_data, 60)]
    pool = ReplayPool(text=texts)
    rest, calib = hold_back(pool, 20, seed=0)
    held_texts = {it.text for it in calib}
    assert len(calib) == 20 and len(rest.text) == 40 and not held_texts & {t for t, _ in rest.text}
    assert hold_back(pool, 20, seed=0)[1][0].text == calib[0].text  # fixed by the seed


def test_recalibrate_refits_the_temperature_and_reports_ece(tiny_model_dir, tiny_backbones, shared_data) -> None:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    text_index = MODALITIES.index("text")
    with torch.no_grad():
        model.heads.gate.log_temperature[text_index] = float(np.log(0.05))  # badly overconfident
    fit = [CorrectionItem(f"c{i}", one_hot(e.label), text=e.text) for i, e in enumerate(text_examples(shared_data, 60))]
    held = [
        CorrectionItem(f"h{i}", one_hot(e.label), text=e.text) for i, e in enumerate(text_examples(shared_data, 20, 1))
    ]
    report = recalibrate(model, fit, held, ("text",), CalibrationConfig(min_items=30))
    text = report["branches"]["text"]
    assert text["refit"] and text["n_fit"] == 60 and abs(text["temperature_before"] - 0.05) < 1e-4
    assert text["calibration_after"]["nll"] < text["calibration_before"]["nll"]
    assert {"ece", "nll", "n"} <= set(text["held_out_after"]) and text["held_out_after"]["n"] == 20
    assert abs(float(model.heads.gate.log_temperature[text_index].exp()) - text["temperature_after"]) < 1e-4
    few = recalibrate(model, fit[:10], held, ("text",), CalibrationConfig(min_items=30))["branches"]["text"]
    assert not few["refit"] and few["temperature_after"] == few["temperature_before"]  # too few: kept
    assert report["fusion"] == {"n_fit": 0, "refit": False}  # no multimodal corrections


def test_fusion_is_refit_on_multimodal_calibration_corrections(tiny_model_dir, tiny_backbones, shared_data) -> None:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    rng = np.random.default_rng(0)
    texts = text_examples(shared_data, 32)
    fit = [
        CorrectionItem(
            f"m{i}", one_hot(e.label), audio=rng.standard_normal(16_000).astype(np.float32) * 0.1, text=e.text
        )
        for i, e in enumerate(texts)
    ]
    before = (model.heads.gate.bias.detach().clone(), model.heads.gate.slope.detach().clone())
    report = recalibrate(model, fit, [], ("speech", "text"), CalibrationConfig(min_items=30))
    fusion = report["fusion"]
    assert fusion["refit"] and fusion["n_fit"] == 32 and fusion["after"]["nll"] <= fusion["before"]["nll"] + 1e-6
    moved = not torch.equal(before[0], model.heads.gate.bias) or not torch.equal(before[1], model.heads.gate.slope)
    assert moved


def test_users_corrections_alone_calibrate_when_there_are_enough() -> None:
    from train.recalibrate import calibration_rows

    own = items(40)
    replay = [CorrectionItem(f"calib:text:{i}", one_hot(0), text="x") for i in range(100)]
    rows, source = calibration_rows(own + replay, "text", 30)
    assert source == "corrections" and len(rows) == 40
    rows, source = calibration_rows(own[:10] + replay, "text", 30)
    assert source == "corrections + replay hold-back" and len(rows) == 110
    assert calibration_rows(own[:5], "text", 30)[1] == "corrections"  # nothing else to add
