"""Value objects that cross module boundaries: what goes into the predictor and what comes out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backend.labels import LABELS

SAMPLE_RATE = 16_000  # Hz; every decoded waveform in the project is at this rate, mono float32


@dataclass
class Sample:
    """One input: any subset of speech audio, text and face frames (at least one must be present).

    audio: mono float32 waveform at SAMPLE_RATE, shape (n,).
    frames: RGB uint8 images, each (H, W, 3); frame_times gives their time in seconds (video) or None.
    """

    audio: np.ndarray | None = None
    text: str | None = None
    frames: list[np.ndarray] | None = None
    frame_times: list[float] | None = None
    source_name: str | None = None  # display name only; never used as a path

    @property
    def duration(self) -> float:
        return 0.0 if self.audio is None else len(self.audio) / SAMPLE_RATE

    @property
    def modalities(self) -> list[str]:
        present = []
        if self.audio is not None:
            present.append("speech")
        if self.text:
            present.append("text")
        if self.frames:
            present.append("face")
        return present

    @property
    def text_only(self) -> bool:
        """Only text: the text branch alone reads it (the predictor's text lock, the app's text worker)."""
        return self.modalities == ["text"]


def probs_dict(probs: np.ndarray | list[float]) -> dict[str, float]:
    """Label -> probability mapping in taxonomy order."""
    return {name: float(p) for name, p in zip(LABELS, probs)}


@dataclass
class ModalityResult:
    """What one modality said: its calibrated probabilities and the weight fusion gave it.

    weight: the modality's share of the fusion, 0..1 over the present modalities (1.0 alone). Fusion is a
    product of experts, fused ∝ prod_m p_m ** w_m; the weight is w_m / sum(w), the weight of this modality in
    the weighted geometric mean the product is (backend.heads.FusionGate).
    """

    probs: dict[str, float]
    weight: float

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)


@dataclass
class Face:
    """A detected face: box (x, y, w, h) in the frame's pixels, the frame index and its reading."""

    box: tuple[int, int, int, int]
    frame_index: int
    probs: dict[str, float]


@dataclass
class Segment:
    """Speech emotion over one window of a longer clip."""

    start: float
    end: float
    probs: dict[str, float]


@dataclass
class WordTag:
    """A word of the transcript/text with the emotion the lexicon gives it (None if neutral)."""

    word: str
    emotion: str | None
    score: float = 0.0
    expanded: bool = False  # True when the word is outside NRC EmoLex and was matched by embedding


@dataclass
class Prediction:
    """The fused reading of a Sample plus everything the UI shows to explain it."""

    probs: dict[str, float]
    modalities: dict[str, ModalityResult]
    model_version: str
    transcript: str | None = None
    words: list[WordTag] = field(default_factory=list)
    faces: list[Face] = field(default_factory=list)
    timeline: list[Segment] = field(default_factory=list)
    duration: float = 0.0
    latency_ms: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. "no face found in the image"
    # the top probability is below the model's uncertain_threshold: the app says "not sure: a or b?"
    uncertain: bool = False
    alternatives: list[str] = field(default_factory=list)  # the two likeliest labels when uncertain

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)

    @property
    def confidence(self) -> float:
        return self.probs[self.label]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label"] = self.label
        out["confidence"] = self.confidence
        return out
