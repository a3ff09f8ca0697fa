"""Shared fixtures. Everything runs offline; tiny random backbones for unit tests, real wheels for integration."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import pytest

SHARED = Path(os.environ.get("EMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RAVDESS = SHARED / "ravdess-speech-16k"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED.is_dir(), f"shared data not found at {SHARED}; set EMO_SHARED_DATA"
    return SHARED


@pytest.fixture(scope="session")
def ravdess_clip() -> Path:
    return RAVDESS / "Actor_01" / "03-01-01-01-01-01-01.flac"


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """Tiny random Whisper and BERT saved to disk (built from configs, real tokenizers): fast unit tests."""
    from backend.speech import tiny_whisper_backbone
    from backend.text import tiny_text_backbone

    root = tmp_path_factory.mktemp("tiny-backbones")
    speech = tiny_whisper_backbone(root)
    text = tiny_text_backbone(root)
    return {
        "speech": str(root / "tiny-whisper"),
        "text": str(root / "tiny-text-backbone"),
        "cache": str(root / "cache"),
        "speech_dim": speech.hidden_size,
        "text_dim": text.hidden_size,
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_backbones, tmp_path_factory) -> Path:
    """A complete model folder over the tiny backbones (random heads, text LoRA on)."""
    from backend.model import build_model
    from backend.model_config import EmotionConfig

    config = EmotionConfig(
        version="tiny-test",
        speech_backbone=tiny_backbones["speech"],
        text_backbone=tiny_backbones["text"],
        embed_dim=32,
        head_hidden=32,
        proj_dim=16,
        face_channels=[8, 16],
    )
    model = build_model(config, cache=Path(tiny_backbones["cache"]), adapt_dims=True)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny-model"), card="# tiny test model\n")
