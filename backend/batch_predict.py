"""Batch inference over a folder of media files or a table (CSV / Parquet / JSON lines with `path` and/or `text`).

Every accelerate process takes every world-th item (all visible GPUs: `accelerate launch --num_processes N -m
backend.predict --batch ...`). Files are decoded in DataLoader workers while the GPU computes; each chunk of
results goes to OUT.parts/rank{r}-{n}.parquet at once, so a stopped run continues where it was (inputs already in
a part are skipped); the main process merges the parts into OUT at the end. adapt=True reads speech after
standardising each folder's voices with unlabelled statistics (backend.adapt): the files of one parent folder
are taken as one speaker (a folder of speaker subfolders adapts per subfolder); it costs a first pass over the
audio of this process's share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from backend.adapt import SpeakerStats
from backend.errors import MediaError
from backend.labels import LABELS
from backend.media import load_sample
from backend.settings import Settings
from backend.types import Prediction, Sample

log = logging.getLogger(__name__)

AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".webm", ".opus", ".aac"}
VIDEO_EXT = {".mp4", ".mov", ".mkv", ".avi"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
TABLE_EXT = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}


@dataclass(frozen=True)
class Item:
    """One input row: a media file and/or a text; key is unique within a run (the resume key)."""

    key: str
    path: str | None = None
    text: str | None = None


def list_items(source: Path) -> list[Item]:
    """Media files under a folder (sorted, recursive), or the rows of a table with `path` and/or `text` columns."""
    source = Path(source)
    if source.is_dir():
        media = AUDIO_EXT | VIDEO_EXT | IMAGE_EXT
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in media)
        return [Item(key=str(p.relative_to(source)), path=str(p)) for p in files]
    if source.suffix.lower() not in TABLE_EXT:
        raise ValueError(f"{source}: give a folder of media files or a .csv/.parquet/.jsonl table")
    table = TABLE_EXT[source.suffix.lower()](source)
    if "path" not in table and "text" not in table:
        raise ValueError(f"{source}: the table needs a 'path' and/or a 'text' column")
    items = []
    for i, row in enumerate(table.to_dict("records")):
        path, text = row.get("path"), row.get("text")
        path = str(source.parent / path) if isinstance(path, str) and path and not Path(path).is_absolute() else path
        items.append(
            Item(
                key=f"{i}",
                path=path if isinstance(path, str) and path else None,
                text=text if isinstance(text, str) and text else None,
            )
        )
    return items


def decode(item: Item, settings: Settings) -> Sample:
    """Route by extension, as the single-file CLI does; the decoders still check the content."""
    if item.path is None:
        return load_sample(text=item.text, settings=settings)
    ext = Path(item.path).suffix.lower()
    if ext in VIDEO_EXT:
        return load_sample(video=item.path, text=item.text, settings=settings)
    if ext in AUDIO_EXT:
        return load_sample(audio=item.path, text=item.text, settings=settings)
    return load_sample(image=item.path, text=item.text, settings=settings)


class _Decoded(Dataset):
    def __init__(self, items: list[Item], settings: Settings) -> None:
        self.items, self.settings = items, settings

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Item, Sample | None, str | None]:
        item = self.items[i]
        try:
            return item, decode(item, self.settings), None
        except (MediaError, ValueError, OSError) as exc:
            return item, None, str(exc)


def row(item: Item, prediction: Prediction | None, error: str | None, rank: int) -> dict:
    out = {"key": item.key, "path": item.path, "text": item.text, "rank": rank, "error": error}
    if prediction is None:
        return {**out, "label": None, "confidence": np.nan, **{f"p_{k}": np.nan for k in LABELS}}
    return {
        **out,
        "label": prediction.label,
        "confidence": prediction.confidence,
        **{f"p_{k}": prediction.probs[k] for k in LABELS},
        "modalities": ",".join(prediction.modalities),
        "transcript": prediction.transcript,
        "model_version": prediction.model_version,
    }


def parts_dir(out: Path) -> Path:
    return Path(str(out) + ".parts")


def done_keys(out: Path) -> set[str]:
    """Keys already written by any process of an earlier (stopped) run."""
    keys: set[str] = set()
    for part in sorted(parts_dir(out).glob("rank*.parquet")):
        keys.update(pd.read_parquet(part, columns=["key"])["key"].astype(str))
    return keys


def voice_group(item: Item) -> str | None:
    """The speaker an item is taken to be for adaptation: its parent folder (None: a text row)."""
    return str(Path(item.path).parent) if item.path else None


def _loader(items: list[Item], settings: Settings, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        _Decoded(items, settings),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def folder_stats(items: list[Item], predictor, settings: Settings, batch_size: int, workers: int) -> dict:
    """First pass of adaptation: every audio item's embedding into its folder's statistics."""
    stats: dict[str, SpeakerStats] = {}
    for batch in _loader(items, settings, batch_size, workers):
        good = [(it, smp) for it, smp, _ in batch if smp is not None and smp.audio is not None]
        if good:
            speakers = [stats.setdefault(voice_group(it), SpeakerStats()) for it, _ in good]
            predictor.predict_batch([smp for _, smp in good], speakers=speakers)
    return stats


def predict_shard(
    items: list[Item],
    out: Path,
    predictor,
    settings: Settings,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 64,
    workers: int = 2,
    adapt: bool = False,
) -> int:
    """This process's share (every world-th item not done yet) -> part files; returns how many it predicted."""
    done = done_keys(out)
    mine = [it for i, it in enumerate(items) if i % world == rank and it.key not in done]
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    first = len(list(parts.glob(f"rank{rank}-*.parquet")))
    stats = folder_stats(mine, predictor, settings, batch_size, workers) if adapt else {}
    loader = _loader(mine, settings, batch_size, workers)
    count = 0
    bar = tqdm(total=len(mine), desc=f"predict[{rank}]", position=rank, disable=not mine)
    for n, batch in enumerate(loader):
        rows = [row(it, None, err, rank) for it, smp, err in batch if smp is None]
        good = [(it, smp) for it, smp, _ in batch if smp is not None]
        if good:
            try:
                speakers = [stats.get(voice_group(it)) for it, _ in good] if stats else None
                preds = predictor.predict_batch([smp for _, smp in good], speakers=speakers, update_speakers=False)
                rows += [row(it, p, None, rank) for (it, _), p in zip(good, preds)]
            except ValueError:  # one bad sample (e.g. nothing usable) must not sink the batch: retry one by one
                for it, smp in good:
                    try:
                        rows.append(row(it, predictor.predict(smp), None, rank))
                    except ValueError as exc:
                        rows.append(row(it, None, str(exc), rank))
        tmp = parts / f".rank{rank}-{first + n:06d}.tmp"
        pd.DataFrame(rows).to_parquet(tmp, index=False)
        tmp.rename(parts / f"rank{rank}-{first + n:06d}.parquet")  # atomic: a killed run leaves no half part
        count += len(batch)
        bar.update(len(batch))
    bar.close()
    return count


def merge(items: list[Item], out: Path) -> pd.DataFrame:
    """All parts -> OUT (input order, one row per key, the last write winning)."""
    frames = [pd.read_parquet(p) for p in sorted(parts_dir(out).glob("rank*.parquet"))]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key"])
    table["key"] = table["key"].astype(str)
    table = table.drop_duplicates("key", keep="last")
    order = {it.key: i for i, it in enumerate(items)}
    table = table.assign(_order=table["key"].map(order)).sort_values("_order").drop(columns="_order")
    table.to_parquet(out, index=False)
    return table


def run_batch(
    source: Path,
    out: Path,
    model: str | None,
    settings: Settings,
    batch_size: int = 64,
    workers: int = 2,
    adapt: bool = False,
) -> dict:
    """The whole job in this process (rank and world from accelerate); the main process merges at the end."""
    import torch
    from accelerate import PartialState

    from backend.model import EmotionModel
    from backend.predictor import Predictor

    # without CUDA, accelerate runs several launched processes as one group only when told cpu=True
    state = PartialState(cpu=settings.device == "cpu" or not torch.cuda.is_available())
    items = list_items(source)
    device = state.device if settings.device == "auto" else settings.device
    predictor = Predictor(
        EmotionModel.from_pretrained(model or settings.model, cache=settings.cache, device=device), settings
    )
    count = predict_shard(
        items, out, predictor, settings, state.process_index, state.num_processes, batch_size, workers, adapt
    )
    state.wait_for_everyone()
    summary = {"rank": state.process_index, "predicted": count, "items": len(items)}
    if state.is_main_process:
        table = merge(items, out)
        summary.update(rows=len(table), errors=int(table["error"].notna().sum()), out=str(out))
    return summary
