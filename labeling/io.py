"""Getting clips in (an HF-style folder or a `datasets` dataset) and aggregated labels out (parquet, Hub).

Imported labels, when present, mark the clip as **gold** by default (`label_mode="gold"`): curated
corpus labels are what crowd annotators are scored against, and gold clips are mixed into the
queue at the gold rate. `label_mode="vote"` records them instead as votes of the 'import'
annotator (kind 'import'), so the clip stays in the normal queue and its label is aggregated with
the crowd's; `label_mode="ignore"` drops them. Imported clips are stored with consent (the operator
imports data they may keep); pass consent=False to keep only hashes.

Audio is exported as raw file bytes under `Audio(decode=False)` (datasets 5 decodes through
torchcodec, which is not needed to write or read the files); cast the column to `Audio()` where
torchcodec is installed to get decoded arrays.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import soundfile as sf

from backend.labels import LABEL_TO_ID, LABELS

from .aggregate import ClipLabel, aggregate_labels
from .errors import StoreError
from .store import Store, check_labels

log = logging.getLogger(__name__)

AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_EXTS = {".mp4", ".webm", ".mov", ".mkv"}
LABEL_MODES = ("gold", "vote", "ignore")
IMPORT_ANNOTATOR = "import"
DATA_FILE = "data/train-00000-of-00001.parquet"

FEATURES = datasets.Features(
    {
        "clip_id": datasets.Value("string"),
        "audio": datasets.Audio(decode=False),
        "image": datasets.Image(decode=False),
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(LABELS)),
        "soft": datasets.List(datasets.Value("float32")),  # in LABELS order
        "majority": datasets.Value("string"),
        "weighted": datasets.Value("string"),
        "gold": datasets.Value("string"),
        "predicted_label": datasets.Value("string"),
        "n_votes": datasets.Value("int32"),
        "weight": datasets.Value("float32"),
        "modalities": datasets.List(datasets.Value("string")),
        "source": datasets.Value("string"),
    }
)


# ---- import --------------------------------------------------------------------------------


def modalities_for(ext: str, has_text: bool) -> list[str]:
    """What a file of this kind carries (a transcript adds 'text')."""
    mods = []
    if ext in AUDIO_EXTS or ext in VIDEO_EXTS:
        mods.append("speech")
    if ext in IMAGE_EXTS or ext in VIDEO_EXTS:
        mods.append("face")
    if has_text:
        mods.append("text")
    if not mods:
        raise StoreError(f"Files ending in {ext!r} cannot be labelled here (use audio, image, video or text).")
    return mods


def audio_seconds(data: bytes) -> float:
    """Duration of encoded audio, or 0.0 when libsndfile cannot read it (e.g. m4a)."""
    try:
        return float(sf.info(io.BytesIO(data)).duration)
    except (RuntimeError, sf.LibsndfileError):
        return 0.0


def _check_mode(label_mode: str) -> None:
    if label_mode not in LABEL_MODES:
        raise StoreError(f"label_mode must be one of {', '.join(LABEL_MODES)}; got {label_mode!r}.")


def import_item(
    store: Store,
    *,
    data: bytes | None,
    ext: str,
    text: str | None,
    label: Any = None,
    label_mode: str = "gold",
    consent: bool = True,
) -> str:
    """Add one clip (file bytes and/or text) and its optional label; return the clip id."""
    text = text.strip() if isinstance(text, str) and text.strip() else None
    if data is None and text is None:
        raise StoreError("An imported row needs a file or some text.")
    if data is None:  # a text clip: its words live in the text column, no media file
        clip_id = store.add_clip(
            None,
            sha256=store.text_clip_id(text),
            ext=".txt",
            modalities=["text"],
            source="import",
            consent=consent,
            text=text,
        )
    else:
        ext = ext.lower()
        clip_id = store.add_clip(
            data,
            ext=ext,
            modalities=modalities_for(ext, text is not None),
            duration=audio_seconds(data) if ext in AUDIO_EXTS else 0.0,
            source="import",
            consent=consent,
            text=text,
        )
    if label not in (None, "") and label_mode != "ignore":
        labels = check_labels(label)
        if label_mode == "gold":
            store.add_gold(clip_id, labels[0])
        else:
            store.ensure_annotator(IMPORT_ANNOTATOR, "import")
            store.vote(clip_id, IMPORT_ANNOTATOR, labels)
    return clip_id


def _read_metadata(folder: Path) -> list[dict[str, str]]:
    """metadata.csv rows, each checked: a file inside the folder and/or text, a known label."""
    meta = folder / "metadata.csv"
    if not meta.is_file():
        raise StoreError(f"{folder} has no metadata.csv (columns: file_name or text, and optionally label).")
    with meta.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    problems = []
    root = folder.resolve()
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        name, text, label = row.get("file_name") or "", row.get("text") or "", row.get("label") or ""
        if not name and not text.strip():
            problems.append(f"line {i}: neither file_name nor text")
        if name:
            path = (root / name).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                problems.append(f"line {i}: {name!r} is not a file inside the folder")
        if label:
            try:
                check_labels(label)
            except StoreError as err:
                problems.append(f"line {i}: {err}")
    if problems:
        raise StoreError("metadata.csv has problems, nothing was imported: " + "; ".join(problems[:5]))
    return rows


def import_folder(
    store: Store, folder: Path | str, *, label_mode: str = "gold", consent: bool = True
) -> dict[str, int]:
    """Import an HF-style folder: metadata.csv (file_name,label or text,label) with files beside it.

    Every row is checked before anything is written; re-importing is idempotent.
    """
    _check_mode(label_mode)
    folder = Path(folder)
    rows = _read_metadata(folder)
    labelled = 0
    for row in rows:
        name = row.get("file_name") or ""
        data = (folder / name).read_bytes() if name else None
        import_item(
            store,
            data=data,
            ext=Path(name).suffix,
            text=row.get("text"),
            label=row.get("label"),
            label_mode=label_mode,
            consent=consent,
        )
        labelled += bool(row.get("label"))
    log.info("imported %d rows (%d labelled) from a folder", len(rows), labelled)
    return {"rows": len(rows), "labelled": labelled}


def _media_value(value: Any) -> tuple[bytes | None, str]:
    """(bytes, ext) of an undecoded Audio/Image value: a {'bytes', 'path'} dict or a path string."""
    if value is None:
        return None, ""
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    path = value.get("path") or ""
    data = value.get("bytes")
    if data is None and path:
        data = Path(path).read_bytes()
    return data, Path(path).suffix or ".wav"


def _dataset_labels(dataset: datasets.Dataset, column: str) -> list[str | None]:
    """The label column as taxonomy names (ClassLabel ids decoded, -1 = none), all checked up front."""
    if column not in dataset.column_names:
        return [None] * len(dataset)
    feature = dataset.features[column]
    out, problems = [], []
    for i, value in enumerate(dataset[column]):
        if isinstance(feature, datasets.ClassLabel) and value is not None:
            value = feature.int2str(value) if value >= 0 else None
        if value in (None, ""):
            out.append(None)
            continue
        if not isinstance(value, str):
            problems.append(f"row {i}: label {value!r} is not a name (use a ClassLabel or emotion names)")
            continue
        try:
            out.append(check_labels(value)[0])
        except StoreError as err:
            problems.append(f"row {i}: {err}")
    if problems:
        raise StoreError("The dataset's labels have problems, nothing was imported: " + "; ".join(problems[:5]))
    return out


def import_dataset(
    store: Store,
    dataset: datasets.Dataset | datasets.DatasetDict,
    *,
    split: str = "train",
    audio_column: str = "audio",
    image_column: str = "image",
    text_column: str = "text",
    label_column: str = "label",
    label_mode: str = "gold",
    consent: bool = True,
) -> dict[str, int]:
    """Import a `datasets` dataset (audio, image and/or text columns; label optional, str or ClassLabel)."""
    _check_mode(label_mode)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split]
    features = dataset.features
    for column, feature in ((audio_column, datasets.Audio), (image_column, datasets.Image)):
        if column in features and isinstance(features[column], feature):
            dataset = dataset.cast_column(column, feature(decode=False))
    labels = _dataset_labels(dataset, label_column)
    labelled = 0
    for row, label in zip(dataset, labels, strict=True):
        data, ext = _media_value(row.get(audio_column))
        if data is None:
            data, ext = _media_value(row.get(image_column))
        import_item(
            store,
            data=data,
            ext=ext,
            text=row.get(text_column),
            label=label,
            label_mode=label_mode,
            consent=consent,
        )
        labelled += label not in (None, "")
    log.info("imported %d rows (%d labelled) from a dataset", len(dataset), labelled)
    return {"rows": len(dataset), "labelled": labelled}


# ---- export --------------------------------------------------------------------------------


def _export_row(store: Store, item: ClipLabel) -> dict[str, Any]:
    clip = store.get_clip(item.clip_id)
    audio = image = None
    path = store.media_path(item.clip_id)
    if path is not None:
        value = {"bytes": path.read_bytes(), "path": f"{item.clip_id}{clip['ext']}"}
        if clip["ext"] in AUDIO_EXTS:
            audio = value
        elif clip["ext"] in IMAGE_EXTS:
            image = value
    return {
        "clip_id": item.clip_id,
        "audio": audio,
        "image": image,
        "text": clip["text"],
        "label": LABEL_TO_ID[item.label],
        "soft": [item.soft[name] for name in LABELS],
        "majority": item.majority,
        "weighted": item.weighted,
        "gold": item.gold,
        "predicted_label": item.predicted_label,
        "n_votes": item.n_votes,
        "weight": item.weight,
        "modalities": clip["modalities"],
        "source": clip["source"],
    }


_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# Emotion studio labels

Aggregated crowd labels exported by `python -m labeling export`: one row per clip with at least
{min_votes} vote(s), and every gold clip. `label` is the gold label if known, else the
reliability-weighted vote; `soft` is the share of votes per label in the order
{labels}. Media (`audio`, `image`) and `text` are present only for clips whose contributors
consented. Audio is stored as the original encoded file (`Audio(decode=False)`).
"""


def export_dataset(store: Store, out_dir: Path | str, *, min_votes: int = 1) -> datasets.Dataset:
    """Write the aggregated labels as a parquet `datasets` dataset (plus README card) to out_dir."""
    out = Path(out_dir)
    items = [item for item in aggregate_labels(store, min_votes=min_votes) if item.label is not None]
    rows = [_export_row(store, item) for item in items]
    table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
    dataset = datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=FEATURES))
    (out / "data").mkdir(parents=True, exist_ok=True)
    for old in (out / "data").glob("*.parquet"):
        old.unlink()
    dataset.to_parquet(str(out / DATA_FILE))
    (out / "README.md").write_text(_CARD.format(min_votes=min_votes, labels=", ".join(LABELS)), encoding="utf-8")
    log.info("exported %d labelled clips", len(dataset))
    return dataset


def push_dataset(
    out_dir: Path | str,
    repo_id: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = True,
    api: Any = None,
) -> str:
    """Create (if needed) a private Hub dataset repo and upload the exported folder; return the commit URL.

    The token comes from the argument or HF_TOKEN and is never logged.
    """
    from huggingface_hub import HfApi

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise StoreError("Set HF_TOKEN (a Hugging Face write token) to push the dataset.")
    if not (Path(out_dir) / "README.md").is_file():
        raise StoreError(f"{out_dir} is not an export folder; run export first.")
    api = api or HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(out_dir),
        repo_type="dataset",
        commit_message="Export aggregated emotion labels",
        token=token,
    )
    log.info("pushed the dataset export to %s", repo_id)
    return str(getattr(commit, "commit_url", commit))
