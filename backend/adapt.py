"""Unlabelled adaptation to one voice: move a speaker's mean speech embedding to the training clips' mean.

A new microphone, room, language or voice shifts every clip of that speaker the same way in embedding space;
standardising per speaker (or session, or imported folder) with unlabelled statistics undoes much of it, as per-
corpus feature standardisation does for classic openSMILE + SVM systems. With few clips the speaker's mean is
mostly the emotion of those clips, so the shift waits for MIN_CLIPS and is shrunk toward none:
shift = n / (n + SHRINK) * (reference_mean - speaker_mean). Dev figures behind these numbers: README, issue 13.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_CLIPS = 3  # clips of a speaker seen before their statistics move anything
SHRINK = 2.0  # pseudo-clips at the reference mean


@dataclass
class SpeakerStats:
    """Running sum of one speaker's (session's, folder's) speech embeddings; JSON-friendly for gr.State."""

    count: int = 0
    total: list[float] = field(default_factory=list)

    def add(self, embedding: np.ndarray) -> None:
        emb = np.asarray(embedding, dtype=np.float64).reshape(-1)
        if not np.isfinite(emb).all():
            return
        self.total = (np.asarray(self.total) + emb).tolist() if self.total else emb.tolist()
        self.count += 1

    def shift(self, reference: np.ndarray) -> np.ndarray | None:
        """The vector to add to this speaker's embeddings, or None while there is too little to go on."""
        reference = np.asarray(reference, dtype=np.float64).reshape(-1)
        if self.count < MIN_CLIPS or not np.any(reference) or len(self.total) != len(reference):
            return None
        mean = np.asarray(self.total) / self.count
        return (self.count / (self.count + SHRINK) * (reference - mean)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"count": self.count, "total": list(self.total)}

    @classmethod
    def from_dict(cls, data: dict | None) -> SpeakerStats:
        data = data or {}
        return cls(int(data.get("count", 0)), [float(v) for v in data.get("total", [])])


def group_stats(embeddings: np.ndarray, groups: list[str | None]) -> dict[str, SpeakerStats]:
    """Statistics of every named group over all its clips (a folder or speaker analysed as a whole)."""
    stats: dict[str, SpeakerStats] = {}
    for emb, group in zip(embeddings, groups):
        if group is not None:
            stats.setdefault(group, SpeakerStats()).add(emb)
    return stats
