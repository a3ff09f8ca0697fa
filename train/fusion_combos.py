"""Label-conditioned combinations of cached branch probabilities, to fit and judge fusion rules on.

No corpus here has aligned speech, face and words, so each combination draws its rows independently given a
label: a RAVDESS clip (the anchor, whose label is the target) plus a text and/or a face with the same or
another label. Kinds (the target is always the anchor's label y):

- agree:<subset>       every present modality drawn with label y (singletons are the "others missing" case)
- neutral-words:<...>  the words are a neutral-labelled text (GoEmotions/MELD), y is not neutral
- flat-words:<...>     the same, with texts the text branch also reads as neutral (uninformative words)
- ravdess-asr[+face]   the clip's own Whisper transcript as the words (the real uninformative case)
- odd-one-out:<m>      two modalities say y, modality m was drawn from another label z
- one-vs-one:<a>+<b>   two modalities, one drawn with y and the other with z (which one is random)

Fitting and reporting use disjoint rows: speakers (RAVDESS actors 17-18 vs 19-20; ASED dev speakers alternately), texts (comment / dialogue
buckets) and faces (index buckets), see split_masks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from backend.labels import LABEL_TO_ID, MODALITIES, NUM_LABELS
from train import corpora
from train.fusion_data import ASED_GROUP, BranchCache

NEUTRAL = LABEL_TO_ID["neutral"]
ASED_FIT = tuple(ASED_GROUP + n for n in corpora.ASED_DEV_SPEAKERS[0::2])
ASED_REPORT = tuple(ASED_GROUP + n for n in corpora.ASED_DEV_SPEAKERS[1::2])
SPLITS = {"fit": ((17, 18, *ASED_FIT), (0, 500)), "report": ((19, 20, *ASED_REPORT), (500, 1000))}  # speakers, buckets
SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(MODALITIES, r)]


@dataclass
class Combos:
    """probs (N, 3, 7) in MODALITIES order (rows of absent modalities are uniform), present (N, 3) bool,
    y (N,) target, kind (N,) str, anchor (N,) speech-clip index (the bootstrap cluster)."""

    probs: np.ndarray
    present: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    anchor: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask: np.ndarray) -> Combos:
        return Combos(self.probs[mask], self.present[mask], self.y[mask], self.kind[mask], self.anchor[mask])


def split_masks(cache: BranchCache, split: str) -> dict[str, np.ndarray]:
    """Which speech, text and face rows belong to a split ("fit" or "report")."""
    actors, (lo, hi) = SPLITS[split]
    return {
        "speech": np.isin(cache.speech_group, actors),
        "text": (cache.text_group >= lo) & (cache.text_group < hi),
        "face": (cache.face_group >= lo) & (cache.face_group < hi),
    }


class _Pools:
    """Row indices of each modality by label, within one split."""

    def __init__(self, cache: BranchCache, masks: dict[str, np.ndarray]) -> None:
        labels = {"speech": cache.speech_y, "text": cache.text_y, "face": cache.face_y}
        self.rows = {m: cache_probs(cache, m) for m in MODALITIES}
        self.by_label = {
            m: [np.flatnonzero(masks[m] & (labels[m] == k)) for k in range(NUM_LABELS)] for m in MODALITIES
        }
        read_neutral = self.rows["text"].argmax(-1) == NEUTRAL
        self.flat_text = np.flatnonzero(masks["text"] & (labels["text"] == NEUTRAL) & read_neutral)

    def draw_flat_text(self, rng: np.random.Generator) -> np.ndarray:
        """A neutral-labelled text that the text branch also reads as neutral (truly uninformative words)."""
        return self.rows["text"][self.flat_text[rng.integers(len(self.flat_text))]]

    def draw(self, rng: np.random.Generator, modality: str, label: int) -> np.ndarray:
        pool = self.by_label[modality][label]
        return self.rows[modality][pool[rng.integers(len(pool))]]


def cache_probs(cache: BranchCache, modality: str) -> np.ndarray:
    return {"speech": cache.speech, "text": cache.text, "face": cache.face}[modality]


class _Builder:
    def __init__(self) -> None:
        self.probs, self.present, self.y, self.kind, self.anchor = [], [], [], [], []

    def add(self, parts: dict[str, np.ndarray], y: int, kind: str, anchor: int) -> None:
        row = np.full((len(MODALITIES), NUM_LABELS), 1.0 / NUM_LABELS, dtype=np.float32)
        for m, p in parts.items():
            row[MODALITIES.index(m)] = p
        self.probs.append(row)
        self.present.append([m in parts for m in MODALITIES])
        self.y.append(y)
        self.kind.append(kind)
        self.anchor.append(anchor)

    def build(self) -> Combos:
        return Combos(
            np.stack(self.probs),
            np.array(self.present, dtype=bool),
            np.array(self.y),
            np.array(self.kind),
            np.array(self.anchor),
        )


def _other_label(rng: np.random.Generator, y: int) -> int:
    return int((y + rng.integers(1, NUM_LABELS)) % NUM_LABELS)


def build_combos(cache: BranchCache, split: str, draws: int = 4, seed: int = 0) -> Combos:
    """`draws` combinations of each kind per anchor clip of the split (see the module docstring)."""
    rng = np.random.default_rng(seed)
    masks = split_masks(cache, split)
    pools, out = _Pools(cache, masks), _Builder()
    for i in np.flatnonzero(masks["speech"]):
        y = int(cache.speech_y[i])
        for _ in range(draws):
            same = {"speech": cache.speech[i], "text": pools.draw(rng, "text", y), "face": pools.draw(rng, "face", y)}
            for subset in SUBSETS:
                out.add({m: same[m] for m in subset}, y, "agree:" + "+".join(subset), i)
            if not np.isnan(cache.asr_text[i]).any():
                out.add({"speech": same["speech"], "text": cache.asr_text[i]}, y, "ravdess-asr", i)
                out.add({**same, "text": cache.asr_text[i]}, y, "ravdess-asr+face", i)
            if y != NEUTRAL:
                flat = pools.draw(rng, "text", NEUTRAL)
                for subset in (("speech",), ("face",), ("speech", "face")):
                    parts = {m: same[m] for m in subset} | {"text": flat}
                    out.add(parts, y, "neutral-words:" + "+".join(m for m in MODALITIES if m in parts), i)
                flat = pools.draw_flat_text(rng)
                out.add({"speech": same["speech"], "text": flat}, y, "flat-words:speech+text", i)
                out.add({"face": same["face"], "text": flat}, y, "flat-words:text+face", i)
            z = _other_label(rng, y)
            other = {"speech": pools.draw(rng, "speech", z), "text": pools.draw(rng, "text", z)}
            other["face"] = pools.draw(rng, "face", z)
            for odd in MODALITIES:
                out.add({**same, odd: other[odd]}, y, "odd-one-out:" + odd, i)
            for a, b in itertools.combinations(MODALITIES, 2):
                true, false = (a, b) if rng.random() < 0.5 else (b, a)
                out.add({true: same[true], false: other[false]}, y, f"one-vs-one:{a}+{b}", i)
    return out.build()


def ravdess_real(cache: BranchCache, actors: tuple[int, ...] = (17, 18, 19, 20)) -> Combos:
    """RAVDESS clips with their own Whisper transcripts: speech + words, no sampling."""
    out = _Builder()
    for i in np.flatnonzero(np.isin(cache.speech_group, actors)):
        parts = {"speech": cache.speech[i]}
        if not np.isnan(cache.asr_text[i]).any():
            parts["text"] = cache.asr_text[i]
        out.add(parts, int(cache.speech_y[i]), "ravdess-real", i)
    return out.build()
