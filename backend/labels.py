"""The project's 7-class emotion taxonomy and the mappings from each corpus into it."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
NUM_LABELS = len(LABELS)
LABEL_TO_ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# Corpus vocabularies -> taxonomy (RAVDESS "calm" counts as neutral, see shared/data/README.md).
ALIASES: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "angry": "angry",
    "anger": "angry",
    "fearful": "fearful",
    "fear": "fearful",
    "disgust": "disgust",
    "surprised": "surprised",
    "surprise": "surprised",
}

MODALITIES: tuple[str, ...] = ("speech", "text", "face")


def normalize_label(name: str) -> str:
    """Map a corpus label (any case, any alias) to the taxonomy; raise ValueError if unknown."""
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown emotion label {name!r}; expected one of {', '.join(LABELS)}")
    return ALIASES[key]


def label_id(name: str) -> int:
    """Index of a (possibly aliased) label in LABELS."""
    return LABEL_TO_ID[normalize_label(name)]
