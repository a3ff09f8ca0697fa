"""Each branch's calibrated probabilities on the shared dev corpora, computed once per model and cached.

Speech: RAVDESS dev actors 17-20 (and ASED dev speakers, speech only) through the real predictor with ASR on, so every clip also carries the
text branch's reading of its own Whisper transcript (lexically neutral sentences: the real "uninformative
words" case). Text: GoEmotions dev (single-label rows) and MELD dev. Faces: FER2013 val crops.
Fusion rules are then fitted and judged on cheap numpy combinations of these rows (train.fusion_combos).

    python -m train.fusion_data --model models/default      # fills runs/fusion_cache/<model hash>.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.labels import LABELS
from train import corpora

log = logging.getLogger(__name__)

CACHE_DIR = corpora.REPO_ROOT / "runs" / "fusion_cache"
ASED_GROUP = 100  # ASED speaker n has speech group 100 + n (RAVDESS actors keep 1-24)
SPEECH_ACTORS = tuple(corpora.SPEECH_DEV_ACTORS)  # 17-20


@dataclass
class BranchCache:
    """Per-branch rows. probs (N, 7) calibrated; y (N,) taxonomy ids; group (N,) the unit kept apart between
    fitting and reporting (speech: actor; text: comment / dialogue id hash; face: index hash)."""

    speech: np.ndarray
    speech_y: np.ndarray
    speech_group: np.ndarray
    asr_text: np.ndarray  # (N_speech, 7): text branch on each clip's Whisper transcript
    transcript: np.ndarray  # (N_speech,) str
    text: np.ndarray
    text_y: np.ndarray
    text_group: np.ndarray
    text_source: np.ndarray  # "goemotions" | "meld"
    face: np.ndarray
    face_y: np.ndarray
    face_group: np.ndarray


PARTS: dict[str, tuple[str, ...]] = {  # cache part -> its fields
    "speech": ("speech", "speech_y", "speech_group"),
    "ased": ("ased", "ased_y", "ased_group"),
    "asr": ("asr_text", "transcript"),
    "text": ("text", "text_y", "text_group", "text_source"),
    "face": ("face", "face_y", "face_group"),
}
BRANCH_KEYS = {  # what each part depends on: tensor prefixes, temperature index, config fields
    "speech": (("heads.speech_head.", "speech_encoder."), 0, ("speech_",)),
    "text": (("heads.text_head.", "text_encoder."), 1, ("text_", "lexicon_")),
    "face": (("heads.face_net.",), 2, ("face_",)),
}


def part_fingerprints(model_dir: Path) -> dict[str, str]:
    """One key per cache part, from the tensors, temperature and config fields its branch depends on: a new
    speech branch (v2) recomputes speech only; refitting the gate (--write) recomputes nothing. The transcripts'
    part depends on the Whisper backbone (ASR runs with adapters off) and on the text branch."""
    from safetensors.torch import load_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    tensors = load_file(str(Path(model_dir) / "model.safetensors"))
    keys = {}
    for part, (prefixes, t_index, fields) in BRANCH_KEYS.items():
        h = hashlib.sha256(
            json.dumps({k: v for k, v in config.items() if k.startswith(fields)}, sort_keys=True).encode()
        )
        for key in sorted(k for k in tensors if k.startswith(prefixes)):
            h.update(key.encode())
            h.update(tensors[key].float().numpy().tobytes())
        h.update(tensors["heads.gate.log_temperature"].float()[t_index].numpy().tobytes())
        keys[part] = h.hexdigest()[:16]
    keys["ased"] = keys["speech"]
    keys["asr"] = hashlib.sha256((config["speech_backbone"] + keys["text"]).encode()).hexdigest()[:16]
    return keys


def stable_group(key: str) -> int:
    """A deterministic 0..999 bucket for a string id (split assignment that does not depend on row order)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1000


def _matrix(preds: list, modality: str) -> np.ndarray:
    return np.array([[p.modalities[modality].probs[k] for k in LABELS] for p in preds], dtype=np.float32)


def speech_rows(predictor, actors: Sequence[int] = SPEECH_ACTORS) -> dict[str, np.ndarray]:
    """RAVDESS clips of the actors: speech probs, text probs of the Whisper transcript, labels, actor."""
    from train.evaluate import to_sample

    examples = corpora.ravdess(corpora.shared_data_dir() / "ravdess-speech-16k", actors=actors)
    log.info("speech: %d RAVDESS clips (actors %s), ASR %s", len(examples), list(actors), predictor.settings.asr)
    preds = predictor.predict_chunked([to_sample(e) for e in examples], chunk=8)
    asr = np.full((len(preds), len(LABELS)), np.nan, dtype=np.float32)
    for i, p in enumerate(preds):
        if "text" in p.modalities:
            asr[i] = [p.modalities["text"].probs[k] for k in LABELS]
    return {
        "speech": _matrix(preds, "speech"),
        "speech_y": np.array([e.label for e in examples]),
        "speech_group": np.array([e.meta["actor"] for e in examples]),
        "asr_text": asr,
        "transcript": np.array([p.transcript or "" for p in preds]),
    }


def ased_rows(predictor) -> dict[str, np.ndarray]:
    """ASED dev speakers (Amharic, no transcript: Whisper's text of Amharic is no use to an English text branch)."""
    from train.evaluate import to_sample

    examples = corpora.ased(corpora.shared_data_dir() / "ased-speech-16k", speakers=corpora.ASED_DEV_SPEAKERS)
    log.info("speech: %d ASED dev clips", len(examples))
    preds = predictor.predict_chunked([to_sample(e) for e in examples], chunk=8)
    return {
        "ased": _matrix(preds, "speech"),
        "ased_y": np.array([e.label for e in examples]),
        "ased_group": np.array([ASED_GROUP + e.meta["speaker_number"] for e in examples]),
    }


def text_rows(predictor) -> dict[str, np.ndarray]:
    """GoEmotions dev (single-label rows) and MELD dev utterances."""
    from backend.types import Sample

    root = corpora.shared_data_dir() / "text"
    ge = corpora.goemotions(root / "goemotions-ekman" / "dev.tsv", single_label_only=True)
    meld = corpora.meld(root / "meld" / "dev_sent_emo.csv")
    rows = [(e, "goemotions", "ge:" + e.meta["id"]) for e in ge]
    rows += [(e, "meld", f"meld:{e.meta.get('dialogue_id')}") for e in meld]
    rows = [r for r in rows if r[0].text and r[0].text.strip()]
    log.info("text: %d GoEmotions + %d MELD dev rows", len(ge), len(meld))
    preds = predictor.predict_chunked([Sample(text=e.text) for e, _, _ in rows], chunk=64)
    return {
        "text": _matrix(preds, "text"),
        "text_y": np.array([e.label for e, _, _ in rows]),
        "text_group": np.array([stable_group(key) for _, _, key in rows]),
        "text_source": np.array([source for _, source, _ in rows]),
    }


def face_rows(predictor, chunk: int = 256) -> dict[str, np.ndarray]:
    """FER2013 val crops (no detection: they are already faces)."""
    from backend.types import Sample

    images, labels = corpora.fer2013_arrays(corpora.shared_data_dir() / "faces" / "fer2013_val.npz")
    log.info("face: %d FER2013 val crops", len(images))
    preds = []
    for a in range(0, len(images), chunk):
        samples = [Sample(frames=[np.repeat(img[:, :, None], 3, axis=2)]) for img in images[a : a + chunk]]
        preds += predictor.predict_batch(samples, faces_are_crops=True)
    return {
        "face": _matrix(preds, "face"),
        "face_y": labels.astype(np.int64),
        "face_group": np.array([stable_group(f"fer:{i}") for i in range(len(images))]),
    }


def _predictor(model_dir: Path, asr: bool):
    from backend.model import EmotionModel
    from backend.predictor import Predictor
    from backend.settings import load_settings

    settings = load_settings(asr=asr)
    return Predictor(EmotionModel.from_pretrained(model_dir, cache=settings.cache), settings)


def compute_part(model_dir: Path, part: str) -> dict[str, np.ndarray]:
    """Run the real predictor for one cache part (asr: RAVDESS with transcription, the slow one)."""
    if part == "ased":
        return ased_rows(_predictor(model_dir, asr=False))
    if part in ("speech", "asr"):
        rows = speech_rows(_predictor(model_dir, asr=part == "asr"))
        return {f: rows[f] for f in PARTS[part]}
    return text_rows(_predictor(model_dir, asr=False)) if part == "text" else face_rows(_predictor(model_dir, False))


def load_cache(model_dir: str | Path, cache_dir: Path = CACHE_DIR, refresh: bool = False) -> BranchCache:
    """The model's branch probabilities, each part computed on first use and cached under its own key
    (a first run takes a while on a CPU, mostly Whisper transcribing 240 clips; a new speech branch ~ minutes)."""
    fields: dict[str, np.ndarray] = {}
    for part, key in part_fingerprints(Path(model_dir)).items():
        path = Path(cache_dir) / f"{part}-{key}.npz"
        if path.exists() and not refresh:
            with np.load(path, allow_pickle=False) as data:
                fields |= {f: data[f] for f in PARTS[part]}
            continue
        log.info("computing the %s part of the cache", part)
        rows = compute_part(Path(model_dir), part)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **rows)
        tmp.replace(path)
        log.info("cached %s", path)
        fields |= rows
    return BranchCache(**_with_ased(fields))


def _with_ased(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ASED clips join the speech rows (no transcript: their asr_text rows are NaN)."""
    ased = fields.pop("ased"), fields.pop("ased_y"), fields.pop("ased_group")
    fields["speech"] = np.concatenate([fields["speech"], ased[0]])
    fields["speech_y"] = np.concatenate([fields["speech_y"], ased[1]])
    fields["speech_group"] = np.concatenate([fields["speech_group"], ased[2]])
    fields["asr_text"] = np.concatenate([fields["asr_text"], np.full_like(ased[0], np.nan)])
    fields["transcript"] = np.concatenate([fields["transcript"], np.full(len(ased[0]), "")])
    return fields


def main(argv: Sequence[str] | None = None) -> Path:
    """Fill the cache for a model (e.g. before fitting on a machine with more time)."""
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(
        prog="python -m train.fusion_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--refresh", action="store_true", help="recompute even if a cache file exists")
    args = p.parse_args(argv)
    load_cache(args.model, refresh=args.refresh)
    return CACHE_DIR


if __name__ == "__main__":
    main()
