"""EmotionConfig: everything needed to rebuild a model folder's heads over its pretrained backbones."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from backend.labels import LABELS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class EmotionConfig:
    """Saved as config.json. Backbone names are offline aliases ("whisper-base"), Hub ids or paths."""

    labels: list[str] = field(default_factory=lambda: list(LABELS))
    version: str = "v0"
    parent_version: str | None = None
    model_type: str = "emotion-studio"
    # speech
    speech_backbone: str = "whisper-base"
    speech_revision: str | None = None
    speech_trim: bool = True  # length-trimmed Whisper input instead of 30 s padding
    speech_num_states: int = 7  # encoder hidden states mixed by the head (layers + embeddings)
    speech_dim: int = 512
    speech_lora_rank: int = 0  # 0: frozen encoder
    speech_lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    speech_unfreeze_top: int = 0  # top encoder layers trained in full (besides LoRA)
    speech_loudness_norm: bool = False  # per-utterance loudness normalisation before the encoder (v2 on)
    # below this top probability the prediction is flagged uncertain and the app says "not sure" (0: never)
    uncertain_threshold: float = 0.0
    # text
    text_backbone: str = "all-MiniLM-L6-v2"
    text_revision: str | None = None
    text_dim: int = 384
    text_max_length: int = 128
    text_lora_rank: int = 8
    text_lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    lexicon_dim: int = 24
    lexicon_expansion: bool = True
    # face
    face_size: int = 48
    face_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    # heads
    head_hidden: int = 256
    embed_dim: int = 256
    proj_dim: int = 128
    dropout: float = 0.2
    lora_alpha: float = 16.0
    trained: dict[str, bool] = field(default_factory=lambda: {"speech": False, "text": False, "face": False})

    def save(self, folder: Path) -> None:
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> EmotionConfig:
        raw = json.loads((Path(folder) / CONFIG_NAME).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
