"""Settings: one dataclass read from EMO_* environment variables, defaults that run offline on a CPU."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emotion-studio"


def _default_data() -> Path:
    return REPO_ROOT / "data"


@dataclass(frozen=True)
class Settings:
    """Every knob of the studio. Override with EMO_<FIELD NAME IN CAPS>, e.g. EMO_MAX_AUDIO_SECONDS=60."""

    model: str = str(DEFAULT_MODEL_DIR)  # path or Hub id (optionally "id@revision" to pin a tag)
    cache: Path = field(default_factory=_default_cache)  # converted backbones, lexicon embeddings
    data_dir: Path = field(default_factory=_default_data)  # SQLite file and consented media
    db_path: Path | None = None  # default: data_dir / "studio.db"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fast_speech: bool = True  # merged speech branch (backend.fast_speech): bf16 + CUDA graphs on GPU, fp32 on CPU
    cudnn_attention: bool = False  # on: 4-26% faster for bulk jobs of one clip length, slow on every new length
    max_audio_seconds: float = 600.0
    max_upload_mb: float = 200.0
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 5_000
    max_video_frames: int = 16
    silence_rms: float = 1e-4  # below this RMS over the whole clip the audio counts as silence
    asr: bool = True  # transcribe speech for the text branch
    asr_language: str | None = None  # None: Whisper detects it
    asr_beside_audio: bool = True  # CTranslate2 transcribes while the audio branch runs (off: one after the other)
    segment_seconds: float = 4.0  # timeline window
    segment_hop: float = 2.0
    timeline_min_seconds: float = 6.0  # clips at least this long get a timeline
    votes_per_clip: int = 3
    gold_rate: float = 0.1
    blind_labeling: bool = True
    admin_token: str | None = None  # EMO_ADMIN_TOKEN
    rate_limit_per_minute: int = 60  # per session / annotator; 0 turns every rate limit off
    rate_limit_per_ip_per_minute: int = 600  # per client address (people behind one NAT share it)
    queue_size: int = 64
    concurrency: int = 2
    live_chunk_seconds: float = 0.5  # live microphone: audio the browser sends per chunk (bench/streaming.py)
    live_window_seconds: float = 1.5  # live reading: the last this-many seconds of the current speech segment
    live_hop_seconds: float = 0.5  # a new live reading at most this often (seconds of audio)
    live_uncertain_threshold: float = 0.5  # "not sure" below this top probability (model config's wins if set)
    live_streams: int = 8  # live microphones served at once (each holds a worker while recording)
    live_max_seconds: float = 120.0  # one live recording stops after this
    live_threads: int = 1  # torch threads for a live reading on the CPU (0: the process's); bench/streaming.py

    @property
    def database(self) -> Path:
        return self.db_path or (Path(self.data_dir) / "studio.db")

    @property
    def media_dir(self) -> Path:
        return Path(self.database).parent / "media"


def _coerce(value: str, kind: object) -> object:
    text = str(kind)
    if "bool" in text:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if "int" in text and "float" not in text:
        return int(value)
    if "float" in text:
        return float(value)
    if "Path" in text:
        return Path(value).expanduser() if value else None
    return value or None if "None" in text else value


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (EMO_*), then keyword overrides (tests use these)."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        raw = os.environ.get(f"EMO_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _coerce(raw, f.type)
    values.update(overrides)
    return Settings(**values)
