"""Loaders for the shared corpora and for Hugging Face style folders, all returning `Example`s.

Each corpus keeps its own file format (see ../shared/data/README.md); these functions turn
every one of them into the same small record so that training and evaluation never care
where an example came from. Labels are indices into backend.labels.LABELS.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.labels import LABELS, label_id

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The shared corpora: $EMO_SHARED_DATA, else <repo>/../shared/data."""
    env = os.environ.get("EMO_SHARED_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


SHARED_DATA = shared_data_dir()

# RAVDESS speakers are split by actor so that dev is speaker-independent.
SPEECH_TRAIN_ACTORS = range(1, 17)  # actors 1-16
SPEECH_DEV_ACTORS = range(17, 21)  # actors 17-20 (2 male, 2 female)
# ASED speakers (1-65), split once by a seeded shuffle of speakers into ~17% test, ~17% dev, the rest train
# (speaker-independent). Test is never used for any choice; dev picks checkpoints, thresholds and settings.
ASED_DEV_SPEAKERS = (2, 5, 9, 14, 19, 28, 35, 39, 47, 48, 56, 58)  # 446 clips, 6 female, 5 male, 1 both codes
ASED_TEST_SPEAKERS = (10, 12, 15, 34, 38, 42, 43, 44, 52, 55, 57, 59, 62, 63)  # 434 clips
ASED_TRAIN_SPEAKERS = tuple(
    s for s in range(1, 66) if s not in ASED_DEV_SPEAKERS and s not in ASED_TEST_SPEAKERS
)  # 39 speakers, 1,594 clips
ASED_LABELS = ("neutral", "happy", "sad", "angry", "fearful")  # no disgust, no surprised

# RAVDESS file name fields: modality-vocal channel-emotion-intensity-statement-repetition-actor.
RAVDESS_EMOTIONS = {
    1: "neutral",
    2: "calm",  # -> neutral
    3: "happy",
    4: "sad",
    5: "angry",
    6: "fearful",
    7: "disgust",
    8: "surprised",
}
RAVDESS_STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")

GOEMOTIONS_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")  # labels.txt

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".m4a", ".webm"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


class CorpusError(ValueError):
    """A corpus or folder that cannot be read; the message says which file and row, and what to fix."""


@dataclass
class Example:
    """One labelled example of one modality.

    speech: `path` to an audio file. text: `text`. face: `path` to an image or `image`, a
    (H, W) grayscale or (H, W, 3) RGB uint8 array. meta["face_crop"] is True when the image is
    already a cropped face (FER2013), so no face detection should run on it.
    """

    modality: str
    label: int
    path: Path | None = None
    text: str | None = None
    image: np.ndarray | None = None
    speaker: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


def ravdess(root: Path | None = None, actors: Iterable[int] | None = None) -> list[Example]:
    """RAVDESS speech clips under root/Actor_NN/, labels parsed from the file names; calm -> neutral."""
    root = Path(root) if root is not None else SHARED_DATA / "ravdess-speech-16k"
    if not root.is_dir():
        raise CorpusError(f"RAVDESS folder not found: {root}")
    wanted = None if actors is None else {int(a) for a in actors}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    examples = [_ravdess_example(p) for p in files]
    if wanted is not None:
        examples = [e for e in examples if e.meta["actor"] in wanted]
    if not examples:
        raise CorpusError(f"no RAVDESS clips found in {root} (actors {sorted(wanted or [])})")
    return examples


def _ravdess_example(path: Path) -> Example:
    match = _RAVDESS_NAME.match(path.stem)
    if not match:
        raise CorpusError(f"{path.name}: not a RAVDESS name like 03-01-05-01-02-01-12.flac")
    _modality, _channel, emotion, intensity, statement, repetition, actor = map(int, match.groups())
    if emotion not in RAVDESS_EMOTIONS:
        raise CorpusError(f"{path.name}: unknown RAVDESS emotion code {emotion:02d}")
    meta = {
        "emotion": RAVDESS_EMOTIONS[emotion],
        "intensity": "strong" if intensity == 2 else "normal",
        "statement": statement,
        "repetition": repetition,
        "actor": actor,
        "corpus": "ravdess",
    }
    return Example("speech", label_id(RAVDESS_EMOTIONS[emotion]), path=path, speaker=f"actor{actor:02d}", meta=meta)


def ased(root: Path | None = None, speakers: Iterable[int] | None = None) -> list[Example]:
    """ASED (Amharic, 65 speakers, 5 classes) from root/metadata.csv `file_name,label,speaker` (speaker "ased-NN").

    meta["corpus_labels"] names the classes the corpus has, so training can mask the others in its loss.
    """
    root = Path(root) if root is not None else SHARED_DATA / "ased-speech-16k"
    table = root / "metadata.csv"
    if not table.is_file():
        raise CorpusError(f"ASED metadata not found: {table}")
    wanted = None if speakers is None else {int(s) for s in speakers}
    examples = []
    with table.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                number = int(row["speaker"].rsplit("-", 1)[1])
                label = label_id(row["label"])
            except (KeyError, IndexError, ValueError) as exc:
                raise CorpusError(f"{table}:{line}: bad row {row} ({exc})") from exc
            if wanted is not None and number not in wanted:
                continue
            meta = {"corpus": "ased", "speaker_number": number, "corpus_labels": ASED_LABELS}
            examples.append(Example("speech", label, path=root / row["file_name"], speaker=row["speaker"], meta=meta))
    if not examples:
        raise CorpusError(f"no ASED clips found in {table} (speakers {sorted(wanted or [])})")
    return examples


def goemotions(path: Path, single_label_only: bool = False) -> list[Example]:
    """GoEmotions (Ekman) tsv rows `text<TAB>ids<TAB>comment id`.

    Multi-label rows keep their first label (meta["labels"] has all, meta["multi"] is True);
    single_label_only drops them instead.
    """
    path = Path(path)
    names = _goemotions_names(path.parent / "labels.txt")
    examples = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise CorpusError(f"{path.name} line {lineno}: expected text<TAB>label ids")
        try:
            ids = [label_id(names[int(i)]) for i in parts[1].split(",")]
        except (ValueError, IndexError) as exc:
            raise CorpusError(f"{path.name} line {lineno}: bad label ids {parts[1]!r}") from exc
        multi = len(set(ids)) > 1
        if multi and single_label_only:
            continue
        meta = {"id": parts[2] if len(parts) > 2 else str(lineno), "labels": ids, "multi": multi}
        examples.append(Example("text", ids[0], text=parts[0], meta=meta))
    return examples


def _goemotions_names(labels_txt: Path) -> tuple[str, ...]:
    if not labels_txt.is_file():
        return GOEMOTIONS_LABELS
    return tuple(line.strip() for line in _read_text(labels_txt).splitlines() if line.strip())


def meld(path: Path) -> list[Example]:
    """MELD utterances from a *_sent_emo.csv (columns Utterance, Emotion, Speaker, ...)."""
    path = Path(path)
    rows = list(csv.DictReader(io.StringIO(_read_text(path), newline="")))
    if rows and not {"Utterance", "Emotion"} <= set(rows[0]):
        raise CorpusError(f"{path.name}: expected columns Utterance and Emotion, found {list(rows[0])}")
    examples = []
    for i, row in enumerate(rows, start=2):
        try:
            label = label_id(row["Emotion"])
        except ValueError as exc:
            raise CorpusError(f"{path.name} row {i}: {exc}") from exc
        meta = {key: row[col] for col, key in _MELD_META.items() if col in row}
        examples.append(Example("text", label, text=_fix_text(row["Utterance"]), speaker=row.get("Speaker"), meta=meta))
    return examples


_MELD_META = {"Sr No.": "sr_no", "Dialogue_ID": "dialogue_id", "Utterance_ID": "utterance_id", "Sentiment": "sentiment"}


def _read_text(path: Path) -> str:
    """UTF-8 (with or without BOM), falling back to Windows-1252, which some MELD copies use."""
    if not path.is_file():
        raise CorpusError(f"file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; reading it as Windows-1252", path)
        return raw.decode("cp1252", errors="replace")


def _fix_text(text: str) -> str:
    """Repair C1 control characters left by cp1252 text read as Latin-1 ("\\x92" -> "’") and mojibake."""
    if "â€" in text or "Ã" in text:
        with contextlib.suppress(UnicodeError):  # not mojibake after all: keep the text as it is
            text = text.encode("cp1252").decode("utf-8")
    if any("\x80" <= c <= "\x9f" for c in text):
        text = "".join(_c1(c) for c in text)
    return text


def _c1(char: str) -> str:
    if not "\x80" <= char <= "\x9f":
        return char
    try:
        return bytes([ord(char)]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        return ""


def fer2013_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """FER2013 npz -> (images (N, 48, 48) uint8, labels (N,) int64 taxonomy ids)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"FER2013 file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        images, labels, classes = data["images"], data["labels"], data["classes"]
    remap = np.array([label_id(str(c)) for c in classes], dtype=np.int64)
    return images, remap[labels]


def fer2013(path: Path) -> list[Example]:
    """FER2013 faces as Examples holding the (48, 48) arrays; prefer fer2013_arrays for training."""
    images, labels = fer2013_arrays(path)
    return [
        Example("face", int(y), image=img, meta={"index": i, "face_crop": True})
        for i, (img, y) in enumerate(zip(images, labels))
    ]


def modality_of(path: Path | str) -> str:
    """speech or face from a file extension; CorpusError for anything else."""
    ext = Path(path).suffix.lower()
    if ext in AUDIO_EXTENSIONS:
        return "speech"
    if ext in IMAGE_EXTENSIONS:
        return "face"
    known = ", ".join(sorted(AUDIO_EXTENSIONS | IMAGE_EXTENSIONS))
    raise CorpusError(f"{path}: cannot tell the modality from {ext or 'no extension'!r}; use one of {known}")


def folder(dir: Path) -> list[Example]:
    """A Hugging Face style folder: metadata.csv with file_name,label (audio/images) or text,label.

    A row with an empty file_name uses its text. Optional columns: speaker, face_crop (1/true when
    images are cropped faces). Every label and file is checked before anything is returned.
    """
    dir = Path(dir)
    meta_path = dir / "metadata.csv"
    if not meta_path.is_file():
        raise CorpusError(f"{dir} has no metadata.csv (columns file_name,label or text,label)")
    rows = list(csv.DictReader(io.StringIO(_read_text(meta_path), newline="")))
    columns = set(rows[0]) if rows else set()
    if "label" not in columns or not columns & {"file_name", "text"}:
        raise CorpusError(f"{meta_path}: needs a label column and a file_name or text column")
    examples, problems = [], []
    for rowno, row in enumerate(rows, start=2):
        try:
            examples.append(_folder_example(dir, row))
        except CorpusError as exc:
            problems.append(f"row {rowno}: {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CorpusError(f"{meta_path}: " + "; ".join(problems[:5]) + more)
    if not examples:
        raise CorpusError(f"{meta_path} has no rows")
    return examples


def _folder_example(dir: Path, row: dict[str, str]) -> Example:
    try:
        label = label_id(row.get("label") or "")
    except ValueError as exc:
        raise CorpusError(str(exc)) from None
    speaker = row.get("speaker") or None
    name = (row.get("file_name") or "").strip()
    if not name:
        text = row.get("text") or ""
        if not text.strip():
            raise CorpusError("neither file_name nor text is set")
        return Example("text", label, text=text, speaker=speaker)
    path = dir / name
    modality = modality_of(path)
    if not path.is_file():
        raise CorpusError(f"file not found: {name}")
    crop = (row.get("face_crop") or "").strip().lower() in {"1", "true", "yes"}
    meta = {"face_crop": True} if crop else {}
    return Example(modality, label, path=path, text=row.get("text") or None, speaker=speaker, meta=meta)


def to_folder(examples: Iterable[Example], out_dir: Path, link: bool = True) -> Path:
    """Write examples as a Hugging Face style folder that `folder()` reads back.

    Files are symlinked (link=True) or copied under speech/ and face/; image arrays become PNGs.
    Returns the path of the metadata.csv written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_folder_row(e, i, out_dir, link) for i, e in enumerate(examples)]
    columns = ["file_name", "text", "label"]
    if not any(r["file_name"] for r in rows):
        columns.remove("file_name")
    if not any(r["text"] for r in rows):
        columns.remove("text")
    columns += [c for c in ("speaker", "face_crop") if any(r[c] for r in rows)]
    meta_path = out_dir / "metadata.csv"
    with meta_path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return meta_path


def _folder_row(ex: Example, index: int, out_dir: Path, link: bool) -> dict[str, str]:
    row = {
        "file_name": "",
        "text": ex.text or "",
        "label": LABELS[ex.label],
        "speaker": ex.speaker or "",
        "face_crop": "true" if ex.meta.get("face_crop") else "",
    }
    if ex.image is not None:
        row["file_name"] = f"face/{index:06d}.png"
        _write_png(out_dir / row["file_name"], ex.image)
    elif ex.path is not None:
        row["file_name"] = f"{ex.modality}/{index:06d}-{ex.path.name}"
        target = out_dir / row["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        if link:
            target.symlink_to(Path(ex.path).resolve())
        else:
            shutil.copyfile(ex.path, target)
    elif not ex.text:
        raise CorpusError(f"example {index} has no file, image or text")
    return row


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2  # local: only the converter needs OpenCV

    path.parent.mkdir(parents=True, exist_ok=True)
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise CorpusError(f"could not write {path}")
