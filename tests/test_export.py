"""Static graphs: torch.export and ONNX (dynamo) of both branches agree with eager on new batch sizes and lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.export import AudioBranch, TextBranch, audio_inputs, export_all, main, text_inputs
from backend.model import EmotionModel
from backend.predictor import Predictor
from backend.settings import load_settings
from backend.types import Sample


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, tiny_backbones) -> EmotionModel:
    return EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))


@pytest.fixture(scope="module")
def exported(model: EmotionModel, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export")
    return out, export_all(model, out, onnx=True)


def test_files_and_parity(exported: tuple[Path, dict]) -> None:
    out, report = exported
    for name in ("audio", "text"):
        assert (out / f"{name}.pt2").stat().st_size > 0 and (out / f"{name}.onnx").stat().st_size > 0
        entry = report[name]
        assert len(entry["export_diff"]) == len(entry["onnx_diff"]) == 3  # three batch/length cases each
        assert max(entry["export_diff"]) < 1e-5
        assert max(entry["onnx_diff"]) < 1e-4
    assert json.loads((out / "parity.json").read_text()) == report
    batches = {shapes[0][0] for shapes in report["audio"]["shapes"]}
    lengths = {shapes[0][2] for shapes in report["audio"]["shapes"]}
    assert len(batches) > 1 and len(lengths) > 1  # dynamic batch and length really exercised


def test_audio_graph_matches_the_predictor(model: EmotionModel, exported: tuple[Path, dict]) -> None:
    import onnxruntime as ort

    out, _ = exported
    rng = np.random.default_rng(7)
    clips = [rng.standard_normal(int(16_000 * s)).astype(np.float32) * 0.1 for s in (1.7, 3.3)]
    session = ort.InferenceSession(str(out / "audio.onnx"), providers=["CPUExecutionProvider"])
    mel, valid = audio_inputs(clips)
    onnx_probs = session.run(None, {"mel": mel.numpy(), "valid": valid.numpy()})[0]
    predictor = Predictor(model, load_settings(asr=False))
    preds = predictor.predict_batch([Sample(audio=c) for c in clips])
    eager = np.array([[p.modalities["speech"].probs[k] for k in p.probs] for p in preds])
    assert np.abs(onnx_probs - eager).max() < 1e-4


def test_text_branch_matches_eager_forward(model: EmotionModel) -> None:
    from backend.branches import text_forward

    texts = ["I love this", "this is terrible news"]
    with torch.inference_mode():
        ours = TextBranch(model)(*text_inputs(model, texts))
        logits, _ = text_forward(model, texts)
        ref = model.heads.gate.calibrated(logits, "text")
    assert torch.allclose(ours, ref, atol=1e-6)


def test_audio_branch_rejects_odd_frames(model: EmotionModel) -> None:
    with pytest.raises(AssertionError, match="even number of mel frames"):
        AudioBranch(model)(torch.randn(1, 80, 101), torch.tensor([50]))


def test_cli_without_onnx(tiny_model_dir: Path, tiny_backbones, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EMO_CACHE", tiny_backbones["cache"])
    assert main(["--out", str(tmp_path / "x"), "--model", str(tiny_model_dir), "--no-onnx"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["audio"]["export_diff"] < 1e-5 and summary["audio"]["onnx_diff"] == []
    assert (tmp_path / "x" / "text.pt2").exists() and not (tmp_path / "x" / "text.onnx").exists()
