"""The crowd's corrections as training items: media decoded from the store, soft label, hard negative, weight.

One item per labelled clip with consented content. Its label distribution mixes the aggregated (reliability-
weighted, or gold) label with the vote shares where annotators disagree; its hard negative is the label the
model predicted when a person corrected it; its weight is its annotators' mean reliability (gold: 1).
A stable hash of (clip id, rotation) holds a slice out of training for the promotion gate and a second, disjoint
slice for recalibration; only clips whose label is trusted (gold, or at least `min_eval_votes` votes with a
majority) are used to judge there. The rotation index changes between runs (train.retrain uses the number of runs
the store has recorded), so successive gates judge on different slices, and each slice grows with the store.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from backend.errors import MediaError
from backend.labels import LABEL_TO_ID, MODALITIES, NUM_LABELS
from backend.settings import Settings, load_settings
from backend.types import Sample
from labeling.aggregate import ClipLabel, aggregate_labels
from labeling.errors import StoreError
from labeling.store import Store, short

log = logging.getLogger(__name__)

SOFT_MIX = 0.5  # share of the vote distribution in a disputed clip's target (the rest: its aggregated label)


@dataclass
class CorrectionItem:
    """One labelled clip (or one replayed corpus example) ready for a training step.

    target: (7,) label distribution summing to 1; negative: the model's wrong label id or -1; faces: (F, 48, 48)
    float32 crops in [0, 1], the main face of each frame; frames: the RGB frames, for evaluation through the
    predictor (which finds faces itself).
    """

    clip_id: str
    target: np.ndarray
    negative: int = -1
    weight: float = 1.0
    audio: np.ndarray | None = None
    text: str | None = None
    faces: np.ndarray | None = None
    frames: list[np.ndarray] | None = None
    trusted: bool = False

    @property
    def label(self) -> int:
        return int(np.argmax(self.target))

    @property
    def modalities(self) -> tuple[str, ...]:
        present = {"speech": self.audio is not None, "text": bool(self.text), "face": self.faces is not None}
        return tuple(m for m in MODALITIES if present[m])

    def sample(self) -> Sample:
        return Sample(audio=self.audio, text=self.text, frames=self.frames)


def one_hot(label: int) -> np.ndarray:
    out = np.zeros(NUM_LABELS, dtype=np.float32)
    out[label] = 1.0
    return out


def clip_position(clip_id: str, rotation: int = 0) -> float:
    """The clip's place in [0, 1) for a rotation: stable across machines, redrawn for each rotation index
    (rotation 0 keeps the hash of the first release, so older run manifests stay valid)."""
    key = f"holdout:{clip_id}" if rotation == 0 else f"holdout:{rotation}:{clip_id}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def in_holdout(clip_id: str, fraction: float, rotation: int = 0) -> bool:
    """Stable across runs and machines: the clip's hash decides, not a random draw."""
    return clip_position(clip_id, rotation) < fraction


def in_calibration(clip_id: str, holdout: float, calibration: float, rotation: int = 0) -> bool:
    """The recalibration slice: right after the held-out slice on the same hash, so the two never overlap."""
    return holdout <= clip_position(clip_id, rotation) < holdout + calibration


def target_of(label: ClipLabel, soft_mix: float = SOFT_MIX) -> np.ndarray:
    """One-hot of the gold/weighted label; mixed with the vote shares where annotators disagree."""
    hard = one_hot(LABEL_TO_ID[label.label])
    shares = np.array([label.soft[name] for name in LABEL_TO_ID], dtype=np.float32)
    if label.gold or shares.sum() <= 0 or shares.max() >= 1.0:
        return hard
    return (1 - soft_mix) * hard + soft_mix * shares / shares.sum()


def hard_negative(label: ClipLabel) -> int:
    """The model's predicted label when it differs from the aggregated one, else -1."""
    wrong = label.predicted_label
    return LABEL_TO_ID[wrong] if wrong in LABEL_TO_ID and wrong != label.label else -1


def is_trusted(label: ClipLabel, min_eval_votes: int) -> bool:
    """Good enough to judge a model on: gold, or enough votes with the label held by a majority."""
    if label.gold:
        return True
    return label.n_votes >= min_eval_votes and label.soft.get(label.label, 0.0) > 0.5


def face_crops(frames: list[np.ndarray], size: int = 48) -> np.ndarray | None:
    """The largest face of each frame as a (F, size, size) crop, or None when no frame shows a face."""
    from backend.face import crop_faces, detect_faces

    crops = [crop_faces(frame, boxes[:1], size=size)[0] for frame in frames if (boxes := detect_faces(frame))]
    return np.stack(crops).astype(np.float32) if crops else None


def media_kind(ext: str) -> str | None:
    """'audio', 'image' or 'video' for a stored file extension (the MIME table; labeling.io's extension sets
    would pull in `datasets`, which a GPU machine running this may not have)."""
    major = (mimetypes.guess_type(f"clip{ext}", strict=False)[0] or "").split("/")[0]
    return major if major in ("audio", "image", "video") else None


def load_media(store: Store, clip: dict, settings: Settings) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
    """(audio, frames) from the clip's kept media file; (None, None) without consent or on a bad file."""
    from backend.media import load_audio, load_image, load_video

    path = store.media_path(clip["id"]) if clip.get("media") else None
    kind = media_kind(clip["ext"])
    if path is None or kind is None:
        return None, None
    try:
        if kind == "audio":
            return load_audio(path, settings), None
        if kind == "image":
            return None, [load_image(path, settings)]
        frames, _, audio = load_video(path, settings)
        return audio, frames or None
    except (MediaError, StoreError, OSError) as exc:
        log.warning("clip %s: media not usable for training (%s)", short(clip["id"]), exc)
    return None, None


def to_item(
    store: Store, label: ClipLabel, settings: Settings, min_eval_votes: int, soft_mix: float
) -> CorrectionItem | None:
    """The clip's training item, or None when nothing of it may be used (no consent, no usable content)."""
    clip = store.get_clip(label.clip_id)
    audio, frames = load_media(store, clip, settings)
    faces = face_crops(frames) if frames else None
    text = (clip.get("text") or "").strip() or None
    if audio is None and faces is None and text is None:
        return None
    return CorrectionItem(
        clip_id=label.clip_id,
        target=target_of(label, soft_mix),
        negative=hard_negative(label),
        weight=1.0 if label.gold else float(label.weight),
        audio=audio,
        text=text,
        faces=faces,
        frames=frames,
        trusted=is_trusted(label, min_eval_votes),
    )


def load_corrections(
    store: Store,
    *,
    min_votes: int = 1,
    min_eval_votes: int = 2,
    soft_mix: float = SOFT_MIX,
    clip_ids: Iterable[str] | None = None,
    settings: Settings | None = None,
) -> list[CorrectionItem]:
    """Every aggregated, consented clip as an item, in the store's order (clip_ids: only these, e.g. a resume)."""
    settings = settings or load_settings()
    wanted = set(clip_ids) if clip_ids is not None else None
    items = []
    for label in aggregate_labels(store, min_votes=min_votes):
        if label.label is None or (wanted is not None and label.clip_id not in wanted):
            continue
        item = to_item(store, label, settings, min_eval_votes, soft_mix)
        if item is not None:
            items.append(item)
    if wanted is not None and len(items) < len(wanted):
        log.warning(
            "%d of the run's clips are gone from the store (deleted or consent withdrawn)", len(wanted) - len(items)
        )
    return items


def split(
    items: list[CorrectionItem], fraction: float, rotation: int = 0
) -> tuple[list[CorrectionItem], list[CorrectionItem]]:
    """(training items, trusted held-out items); untrusted held-out clips are used for neither."""
    train = [it for it in items if not in_holdout(it.clip_id, fraction, rotation)]
    held = [it for it in items if in_holdout(it.clip_id, fraction, rotation) and it.trusted]
    return train, held


@dataclass
class Partition:
    """Disjoint slices of the corrections: train (fits weights), calib (refits temperatures and the fusion
    gate), held (trusted clips the promotion gate judges on)."""

    train: list[CorrectionItem]
    calib: list[CorrectionItem]
    held: list[CorrectionItem]
    rotation: int = 0


def partition(items: list[CorrectionItem], holdout: float, calibration: float, rotation: int = 0) -> Partition:
    """Three disjoint slices by hash of (clip, rotation); untrusted held-out clips are used for nothing."""
    train, calib, held = [], [], []
    for it in items:
        position = clip_position(it.clip_id, rotation)
        if position < holdout:
            if it.trusted:
                held.append(it)
        elif position < holdout + calibration:
            calib.append(it)
        else:
            train.append(it)
    return Partition(train, calib, held, rotation)


def summarize(items: list[CorrectionItem]) -> dict:
    """Counts for logs and the model card: items, per modality, per label, with a hard negative."""
    return {
        "items": len(items),
        "modalities": dict(Counter(m for it in items for m in it.modalities)),
        "labels": dict(Counter(list(LABEL_TO_ID)[it.label] for it in items)),
        "with_hard_negative": sum(it.negative >= 0 for it in items),
        "mean_weight": round(float(np.mean([it.weight for it in items])), 4) if items else 0.0,
    }
