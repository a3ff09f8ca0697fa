"""Static graphs of the audio and text branches: torch.export programs and ONNX files (dynamo exporter).

Each graph maps tensors to calibrated probabilities, with dynamic batch and length:
    audio.onnx  mel (B, 80, T) float32 (T even, <= 3000; backend.speech.log_mel of the trimmed clip),
                valid (B,) int64 encoder frames inside each clip  -> probs (B, 7)
    text.onnx   input_ids (B, S) int64, attention_mask (B, S) int64, lexicon (B, 24) float32 -> probs (B, 7)
Log-mel, tokenisation and the lexicon features stay in Python (audio_inputs / text_inputs build them).

    python -m backend.export --out exported/ [--model models/default] [--no-onnx]

Writes audio.pt2, text.pt2, audio.onnx, text.onnx and parity.json (max abs difference of probabilities
against eager on random clips / sentences of several lengths, and ONNX Runtime CPU latency beside eager).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backend.model import EmotionModel
from backend.speech import (
    HOP_LENGTH,
    MIN_FRAMES,
    N_FRAMES,
    log_mel,
    padded_frames,
    valid_frames,
    whisper_encoder_states,
)
from backend.text import tokenize

log = logging.getLogger(__name__)

OPSET = 18


class AudioBranch(nn.Module):
    """mel (B, n_mels, T) + valid encoder frames (B,) -> calibrated speech probabilities (B, 7)."""

    def __init__(self, model: EmotionModel) -> None:
        super().__init__()
        self.encoder = model.speech.model.get_encoder()
        self.head = model.heads.speech_head
        self.gate = model.heads.gate

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(mel.shape[2] // 2, device=mel.device)[None, :] < valid[:, None]
        states = whisper_encoder_states(self.encoder, mel, mask)
        logits, _ = self.head(states, mask)
        return self.gate.calibrated(logits, "speech")


class TextBranch(nn.Module):
    """Token ids + mask (B, S) and lexicon features (B, F) -> calibrated text probabilities (B, 7)."""

    def __init__(self, model: EmotionModel) -> None:
        super().__init__()
        self.encoder = model.text.model
        self.head = model.heads.text_head
        self.gate = model.heads.gate

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lexicon: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        logits, _ = self.head(pooled, lexicon)
        return self.gate.calibrated(logits, "text")


def audio_inputs(clips: list[np.ndarray], n_mels: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (16 kHz float32) -> (mel (B, n_mels, T), valid (B,)) exactly as the trimmed eager path pads them."""
    frames = padded_frames(max(len(c) for c in clips))
    wave = torch.zeros(len(clips), frames * HOP_LENGTH)
    for i, c in enumerate(clips):
        wave[i, : len(c)] = torch.from_numpy(np.asarray(c, dtype=np.float32))
    lengths = torch.tensor([len(c) for c in clips])
    return log_mel(wave, n_mels), valid_frames(lengths, frames)


def text_inputs(model: EmotionModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask, lexicon features) as the eager text branch builds them."""
    batch = tokenize(model.text, texts, max_length=model.config.text_max_length)
    lex = torch.from_numpy(np.asarray(model.lexicon.features_batch(texts), dtype=np.float32))
    return batch["input_ids"].cpu(), batch["attention_mask"].cpu(), lex


def _audio_dynamic() -> dict:
    batch = torch.export.Dim("batch", min=1, max=1024)
    half = torch.export.Dim("half", min=MIN_FRAMES // 2, max=N_FRAMES // 2)
    return {"mel": {0: batch, 2: 2 * half}, "valid": {0: batch}}


def _text_dynamic(max_len: int) -> dict:
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=max_len)
    return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}, "lexicon": {0: batch}}


def export_programs(model: EmotionModel) -> dict[str, tuple[nn.Module, torch.export.ExportedProgram, tuple]]:
    """torch.export of both branches (CPU, float32, eval); returns name -> (eager module, program, example)."""
    model = model.to("cpu").float().eval()
    rng = np.random.default_rng(0)
    out = {}
    audio = AudioBranch(model).eval()
    example = audio_inputs([rng.standard_normal(16_000 * s).astype(np.float32) * 0.05 for s in (3, 5)])
    out["audio"] = (audio, torch.export.export(audio, example, dynamic_shapes=_audio_dynamic()), example)
    text = TextBranch(model).eval()
    example = text_inputs(model, ["I am so happy today!", "this is awful and it makes me angry"])
    out["text"] = (text, torch.export.export(text, example, dynamic_shapes=_text_dynamic(512)), example)
    return out


def parity_cases(model: EmotionModel, seed: int = 1) -> dict[str, list[tuple]]:
    """Fresh inputs of other batch sizes and lengths than the export examples."""
    rng = np.random.default_rng(seed)
    audio = [
        audio_inputs([rng.standard_normal(int(16_000 * s)).astype(np.float32) * 0.1 for s in lens])
        for lens in ((1.2,), (2.0, 4.0, 7.5), (30.0, 10.0))
    ]
    texts = [["ok"], ["what a lovely surprise", "I can't stand this", "meh"], ["scared " * 40, "fine"]]
    return {"audio": audio, "text": [text_inputs(model, t) for t in texts]}


def _latency_ms(fn, reps: int = 10) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def export_all(model: EmotionModel, out: Path, onnx: bool = True) -> dict:
    """Write the programs (and ONNX files), check them against eager, return the parity report."""
    out.mkdir(parents=True, exist_ok=True)
    programs = export_programs(model)
    cases = parity_cases(model)
    report: dict = {}
    for name, (eager, program, example) in programs.items():
        torch.export.save(program, str(out / f"{name}.pt2"))
        loaded = torch.export.load(str(out / f"{name}.pt2")).module()
        entry: dict = {"export_diff": [], "onnx_diff": [], "eager_ms": [], "onnx_ms": [], "shapes": []}
        session = None
        if onnx:
            session = _onnx_session(eager, example, name, out)
        for inputs in cases[name]:
            with torch.inference_mode():
                ref = eager(*inputs)
                got = loaded(*inputs)
            entry["shapes"].append([list(t.shape) for t in inputs])
            entry["export_diff"].append(float((ref - got).abs().max()))
            with torch.inference_mode():
                entry["eager_ms"].append(_latency_ms(lambda e=eager, x=inputs: e(*x)))
            if session is not None:
                feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
                probs = session.run(None, feeds)[0]
                entry["onnx_diff"].append(float(np.abs(probs - ref.numpy()).max()))
                entry["onnx_ms"].append(_latency_ms(lambda s=session, f=feeds: s.run(None, f)))
        report[name] = entry
    (out / "parity.json").write_text(json.dumps(report, indent=2))
    return report


def _onnx_session(eager: nn.Module, example: tuple, name: str, out: Path):
    import onnxruntime as ort

    names = ["mel", "valid"] if name == "audio" else ["input_ids", "attention_mask", "lexicon"]
    dynamic = _audio_dynamic() if name == "audio" else _text_dynamic(512)
    path = out / f"{name}.onnx"
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            eager,
            example,
            str(path),
            dynamo=True,
            input_names=names,
            output_names=["probs"],
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            external_data=False,
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv: Sequence[str] | None = None) -> int:
    from backend.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m backend.export", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped model)")
    parser.add_argument("--no-onnx", action="store_true", help="torch.export programs only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings()
    model = EmotionModel.from_pretrained(args.model or settings.model, cache=settings.cache, device="cpu")
    report = export_all(model, args.out, onnx=not args.no_onnx)
    summary = {
        name: {k: (max(v) if k.endswith("diff") and v else v) for k, v in entry.items() if k != "shapes"}
        for name, entry in report.items()
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
