"""Multimodal corrections (speech with the text typed beside it) train the fusion gate; unimodal ones leave it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.retrain_helpers import fill_paired, fill_store, small_config
from train.retrain import run

GATE = ("heads.gate.bias", "heads.gate.slope")


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def gate_of(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "model.safetensors"))
    return {k: weights[k].float() for k in GATE}


def test_paired_corrections_train_the_gate(tmp_path, shared_data, tiny_model_dir, tiny_backbones) -> None:
    fill_paired(tmp_path / "studio.db", shared_data)
    config = small_config(
        tmp_path, tmp_path / "studio.db", tiny_model_dir, tiny_backbones["cache"], shared_data, epochs=3, gate=False
    )
    summary = run(config)
    reset_accelerate()
    assert summary["gate_trained"] is True and summary["branches"] == ["speech", "text"]
    before, after = gate_of(tiny_model_dir), gate_of(Path(config.out) / "challenger")
    assert any(not torch.allclose(before[k], after[k]) for k in GATE)
    steps = [json.loads(line) for line in (Path(config.out) / "log.jsonl").read_text().splitlines()]
    fusion = [s["fusion"] for s in steps if "fusion" in s]
    assert fusion and all(np.isfinite(fusion)) and max(fusion) > 0


def test_unimodal_corrections_leave_the_gate(tmp_path, shared_data, tiny_model_dir, tiny_backbones) -> None:
    fill_store(tmp_path / "studio.db", shared_data, per_actor=4, n_texts=8)  # speech-only and text-only clips
    config = small_config(
        tmp_path, tmp_path / "studio.db", tiny_model_dir, tiny_backbones["cache"], shared_data, epochs=1, gate=False
    )
    summary = run(config)
    reset_accelerate()
    assert summary["gate_trained"] is False
    before, after = gate_of(tiny_model_dir), gate_of(Path(config.out) / "challenger")
    assert all(torch.equal(before[k], after[k]) for k in GATE)
