"""Service calls behind the app: keep an analysis and its correction under the consent rules, undo
what a person gave, serve the labelling queue, and the admin actions (export, retrain, delete).

The app adapts widget values to these functions and back; nothing here knows about Gradio. Every
refusal is a StoreError whose message a person can act on. Media is written only with consent:
without it only a content hash, the prediction and the label are kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import importlib.util
import io
import logging
import os
import sqlite3
import subprocess
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.labels import LABELS
from backend.media import clean_video, encode_wav, sha256_bytes
from backend.settings import Settings
from backend.types import Prediction, Sample

from . import runlock
from .aggregate import vote_weights
from .agreement import agreement_report
from .errors import NotFoundError, StoreError
from .io import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS
from .store import MAX_NOTE_CHARS, Store, check_id, check_labels, short

log = logging.getLogger(__name__)

UNSURE = "unsure"  # the extra answer next to the emotions in a correction
MAX_NAME_CHARS = 60  # an annotator's display name
HASH_BLOCK = 1 << 20  # bytes per read when hashing an uploaded video
RETRAIN_MODULE = "train.retrain"
RETRAIN_DIR = "retrain"  # under Settings.data_dir: the logs of runs started from the app


# ------------------------------------------------------------------------------------ contributions


@dataclass
class Contribution:
    """An analysed input waiting for the person's answer; lives in their session, is stored only on answer.

    media: the bytes to keep with consent (16 kHz wav for audio, png for an image); a video upload is
    kept as a copy of its file with the metadata removed (media_file, a server temp path, never a user
    string; None when it could not be cleaned, and then only its hash is kept).
    sha256: the content address; None for a text-only clip, whose id the store keys with its secret.
    """

    sha256: str | None
    ext: str
    modalities: list[str]
    duration: float
    probs: dict[str, float]
    model_version: str
    text: str | None = None
    media: bytes | None = None
    media_file: str | None = None


@dataclass
class Receipt:
    """What one correction stored: enough to tell the person and to delete exactly that again."""

    clip_id: str
    annotator_id: str
    labels: list[str]
    unsure: bool
    note: str | None
    model_version: str
    prediction_id: int
    vote_id: int | None
    kept_media: bool
    new_clip: bool  # the clip did not exist before: deleting it removes nobody else's data
    media_added: bool  # this correction's consent added the media file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def png_bytes(frame: np.ndarray) -> bytes:
    """Lossless png of an RGB frame (H, W, 3); re-encoding drops EXIF (location, camera) metadata."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _video_ext(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTS:
        return suffix
    with open(path, "rb") as handle:
        head = handle.read(16)
    return ".webm" if head.startswith(b"\x1a\x45\xdf\xa3") else ".mp4"


def make_contribution(sample: Sample, prediction: Prediction, video: str | Path | None = None) -> Contribution:
    """The clip to keep for an analysed sample: the video file, else the audio, else the image, else text.

    Its id is the sha256 of exactly the bytes that would be kept: the wav, the png (both re-encoded, so no
    metadata), the video remuxed without its metadata (location, device, time). Text-only clips get their
    id from the store, keyed with its secret (Store.text_clip_id).
    """
    common = {
        "modalities": sample.modalities,
        "duration": float(sample.duration),
        "probs": {k: float(v) for k, v in prediction.probs.items()},
        "model_version": prediction.model_version,
        "text": sample.text,
    }
    if video is not None:
        path = Path(video)
        ext = _video_ext(path)
        cleaned = clean_video(path, ext)
        if cleaned is None:
            return Contribution(sha256=file_sha256(path), ext=ext, **common)
        return Contribution(sha256=file_sha256(cleaned), ext=ext, media_file=str(cleaned), **common)
    if sample.audio is not None:
        data = encode_wav(sample.audio)
        return Contribution(sha256=sha256_bytes(data), ext=".wav", media=data, **common)
    if sample.frames:
        data = png_bytes(sample.frames[0])
        return Contribution(sha256=sha256_bytes(data), ext=".png", media=data, **common)
    if sample.text:
        return Contribution(sha256=None, ext=".txt", **common)
    raise StoreError("There is nothing to save: analyze audio, a video, an image or some text first.")


def answer_labels(names: list[str] | str | None) -> list[str]:
    """Taxonomy labels from emotion names a person sent; StoreError (never echoing the input) if any is unknown."""
    if isinstance(names, str):
        names = [names]
    names = [str(n).strip().lower() for n in names or [] if str(n).strip()]
    try:
        return check_labels(names) if names else []
    except StoreError:
        raise StoreError(f"That is an unknown emotion; pick from {', '.join(LABELS)}.") from None


def parse_answer(choices: list[str] | str | None) -> tuple[list[str], bool]:
    """Checkbox values (emotions and maybe 'unsure') -> (taxonomy labels, unsure)."""
    if isinstance(choices, str):
        choices = [choices]
    choices = [str(c).strip().lower() for c in choices or [] if str(c).strip()]
    unsure = UNSURE in choices
    labels = answer_labels([c for c in choices if c != UNSURE])
    if not labels and not unsure:
        raise StoreError(f"Pick the right emotion (one or more of {', '.join(LABELS)}) or '{UNSURE}'.")
    return labels, unsure


def plain_text(value: object) -> str:
    """A string from the outside made safe to store and show: no lone surrogates (SQLite cannot encode
    them) and no control characters other than whitespace; surrounding whitespace stripped."""
    text = "" if value is None else str(value)
    text = text.encode("utf-8", "ignore").decode("utf-8")
    return "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc").strip()


def _clean_note(note: str | None) -> str | None:
    text = plain_text(note)
    if len(text) > MAX_NOTE_CHARS:
        raise StoreError(f"Notes are limited to {MAX_NOTE_CHARS} characters; shorten it.")
    return text or None


def _media_to_keep(contribution: Contribution) -> bytes | None:
    if contribution.media is not None:
        return contribution.media
    if contribution.media_file is None:
        return None
    try:
        data = Path(contribution.media_file).read_bytes()
    except OSError:
        raise StoreError("The uploaded video is no longer on the server; analyze it again to keep it.") from None
    if sha256_bytes(data) != contribution.sha256:
        raise StoreError("The uploaded video changed since it was analyzed; analyze it again.")
    return data


def record_correction(
    store: Store,
    contribution: Contribution,
    annotator_id: str,
    choices: list[str] | str | None,
    *,
    note: str | None = None,
    consent: bool = False,
) -> Receipt:
    """Store the clip (media only with consent), the model's prediction and the person's answer.

    choices: emotions and/or 'unsure'. 'unsure' alone keeps the prediction without any vote; with
    emotions it marks the vote as unsure (aggregation counts it half).
    """
    labels, unsure = parse_answer(choices)
    note = _clean_note(note)
    annotator_id = check_id(annotator_id, "annotator")
    with out_of_space_is_a_store_error():
        return _record(store, contribution, annotator_id, labels, unsure, note, consent)


MSG_NO_SPACE = (
    "The server has run out of storage space, so your answer was not saved. "
    "Try again later, or save it without keeping the media."
)


@contextlib.contextmanager
def out_of_space_is_a_store_error():
    """A full disk (ENOSPC, EDQUOT, SQLite's 'disk is full') becomes a StoreError; nothing half-written stays:
    media is written atomically and the rows in one transaction."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.error("storage full while saving a correction")
        raise StoreError(MSG_NO_SPACE) from None
    except sqlite3.OperationalError as error:
        if "full" not in str(error).lower():
            raise
        log.error("database full while saving a correction")
        raise StoreError(MSG_NO_SPACE) from None


def _record(
    store: Store,
    contribution: Contribution,
    annotator_id: str,
    labels: list[str],
    unsure: bool,
    note: str | None,
    consent: bool,
) -> Receipt:
    clip_sha = contribution.sha256 or store.text_clip_id(contribution.text or "")
    try:
        had_media = store.get_clip(clip_sha)["media"] is not None
        new_clip = False
    except NotFoundError:
        had_media, new_clip = False, True
    clip_id = store.add_clip(
        _media_to_keep(contribution) if consent else None,
        sha256=clip_sha,
        ext=contribution.ext,
        modalities=contribution.modalities,
        duration=contribution.duration,
        source="upload",
        consent=bool(consent),
        text=contribution.text,
        uploader=annotator_id,
    )
    prediction_id = store.add_prediction(clip_id, contribution.model_version, contribution.probs)
    vote_id = store.vote(clip_id, annotator_id, labels, unsure=unsure, note=note) if labels else None
    kept = store.get_clip(clip_id)["media"] is not None
    log.info("correction stored for clip %s (consent=%s)", short(clip_id), bool(consent))
    return Receipt(
        clip_id=clip_id,
        annotator_id=annotator_id,
        labels=labels,
        unsure=unsure,
        note=note,
        model_version=contribution.model_version,
        prediction_id=prediction_id,
        vote_id=vote_id,
        kept_media=kept,
        new_clip=new_clip,
        media_added=bool(consent) and kept and not had_media,
    )


def delete_contribution(store: Store, receipt: Receipt) -> dict[str, int]:
    """Remove exactly what one correction stored: the whole clip if it created it, else the vote,
    the prediction row, and the media file if its consent added it."""
    if receipt.new_clip:
        try:
            return store.delete_clip(receipt.clip_id)
        except NotFoundError:
            return {}
    counts = {"votes": int(store.delete_vote(receipt.clip_id, receipt.annotator_id))}
    with store.write() as db:
        cursor = db.execute("DELETE FROM predictions WHERE id = ?", [receipt.prediction_id])
        counts["predictions"] = cursor.rowcount
    if receipt.media_added:
        with contextlib.suppress(NotFoundError):
            store.set_consent(receipt.clip_id, False)
            counts["files"] = 1
    return counts


def delete_my_data(store: Store, annotator_id: str, receipts: list[Receipt] = ()) -> dict[str, int]:
    """Everything a contributor gave: each receipt's data, then their votes and the clips they uploaded."""
    total: dict[str, int] = {}
    for receipt in receipts:
        for key, n in delete_contribution(store, receipt).items():
            total[key] = total.get(key, 0) + n
    with contextlib.suppress(NotFoundError):
        for key, n in store.delete_annotator(annotator_id).items():
            if key != "annotators":
                total[key] = total.get(key, 0) + n
    return total


# ------------------------------------------------------------------------------------ labelling


@dataclass
class ClipView:
    """A queue item as an annotator sees it: one media file (or text) and, unless blind, its context."""

    clip_id: str
    kind: str  # audio | image | video | text
    media_path: Path | None
    text: str | None
    prediction: dict[str, Any] | None = None  # latest model reading; None when labelling is blind
    votes: list[dict[str, Any]] = field(default_factory=list)  # others' votes; empty when blind


def identify(store: Store, annotator_id: str, key: str | None, *, proven: str | None = None) -> str | None:
    """The key of whoever presses Start as annotator_id, or StoreError. A Hugging Face login ('hf:') needs no
    key; a typed name must come with the key issued on its first use (a fresh name gets one here, returned
    once); `proven`, the id this session already proved, needs none again."""
    key = plain_text(key) or None
    if annotator_id.startswith("hf:") or annotator_id == proven:
        store.ensure_annotator(annotator_id, "crowd")
        return key
    return store.claim_annotator(annotator_id, key)


def voted_clip(store: Store, annotator_id: str, held: str | None, named: str | None) -> str:
    """The clip a vote is about: the one named, if it is the clip handed out or one this annotator already voted
    on (a retry after the first call went through), else the clip handed out."""
    held = (held or "").lower() or None
    named = (named or "").lower() or None
    if named and named != held and not store.has_voted(named, annotator_id):
        raise StoreError("That clip was not handed to you; press Start / next clip.")
    if not (named or held):
        raise StoreError("There is no clip to vote on; press Start / next clip.")
    return named or held


def annotator_overview(store: Store) -> list[dict[str, Any]]:
    """Admin: who is who. Per annotator: kind, how they sign in, votes, gold accuracy, weight, agreement."""
    weights = vote_weights(store)
    keyed = {r["annotator_id"] for r in store.db.query("SELECT annotator_id FROM annotator_keys")}
    created = {r["id"]: r["created"] for r in store.db.query("SELECT id, created FROM annotators")}
    rows = []
    for annotator_id, figures in agreement_report(store)["annotators"].items():
        prefix = annotator_id.split(":", 1)[0] if ":" in annotator_id else ""
        sign_in = {"hf": "Hugging Face login", "session": "anonymous session"}.get(prefix, "")
        rows.append(
            {
                "annotator": annotator_id,
                "kind": figures["kind"],
                "identity": sign_in or ("name + key" if annotator_id in keyed else "no key yet"),
                "since": str(created.get(annotator_id, ""))[:19],
                "votes": figures["votes"],
                "gold_seen": figures["gold_seen"],
                "gold_accuracy": figures["gold_accuracy"],
                "weight": round(weights.get(annotator_id, 0.0), 3),
                "consensus_agreement": figures["consensus_agreement"],
            }
        )
    return rows


def annotator_id_for(name: str | None = None, hf_username: str | None = None) -> str:
    """'hf:<user>' for a Hugging Face login, else 'name:<typed name>'; the prefixes keep them apart."""
    if hf_username:
        return check_id(f"hf:{plain_text(hf_username)}", "annotator")
    cleaned = " ".join(plain_text(name).split())
    if not cleaned:
        raise StoreError("Type a name (or sign in) so that your votes count as yours.")
    if len(cleaned) > MAX_NAME_CHARS:
        raise StoreError(f"Names are limited to {MAX_NAME_CHARS} characters.")
    return f"name:{cleaned}"


def media_kind(ext: str) -> str:
    """audio, image, video or text (no media) for a stored file's extension."""
    if ext in AUDIO_EXTS:
        return "audio"
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return "text"


def next_clip(store: Store, annotator_id: str, *, blind: bool = True) -> ClipView | None:
    """The annotator's next queue item (leased to them), or None when nothing waits for them."""
    clip = store.next_item(annotator_id)  # creates an unknown annotator in the same transaction
    if clip is None:
        return None
    path = store.media_path(clip["id"])
    view = ClipView(
        clip_id=clip["id"],
        kind=media_kind(clip["ext"]) if path is not None else "text",
        media_path=path,
        text=clip.get("text"),
    )
    if not blind:
        view.prediction = store.latest_prediction(clip["id"])
        view.votes = [v for v in store.votes(clip["id"]) if v["annotator_id"] != annotator_id]
    return view


# ------------------------------------------------------------------------------------ admin


def delete_clip(store: Store, clip_id: str | None) -> dict[str, int]:
    """Admin: delete a clip (media, votes, predictions, reservations) by the id typed into the app."""
    return store.delete_clip(check_id(plain_text(clip_id), "clip"))


def delete_annotator(store: Store, annotator_id: str | None) -> dict[str, int]:
    """Admin: delete an annotator, their votes and the clips they uploaded, by the id typed into the app."""
    return store.delete_annotator(check_id(plain_text(annotator_id), "annotator"))


def require_admin(token: str | None, settings: Settings) -> None:
    """StoreError unless `token` equals EMO_ADMIN_TOKEN (constant-time comparison; never echoed)."""
    if not settings.admin_token:
        raise StoreError("Admin actions are off on this server (set EMO_ADMIN_TOKEN to enable them).")
    given = (token or "").strip().encode("utf-8")
    if not hmac.compare_digest(given, settings.admin_token.encode("utf-8")):
        raise StoreError("That admin token is not right.")


def export_labels(store: Store, out_dir: Path, min_votes: int = 1) -> int:
    """Write the aggregated labels as a parquet dataset to out_dir; return how many clips went out."""
    from .io import export_dataset

    return len(export_dataset(store, out_dir, min_votes=min_votes))


@dataclass
class RetrainJob:
    pid: int
    log_path: Path
    command: list[str]


def retrain_available() -> bool:
    try:
        return importlib.util.find_spec(RETRAIN_MODULE) is not None
    except ModuleNotFoundError:
        return False


def retrain_command(settings: Settings) -> list[str]:
    """`python -m train.retrain` over this server's store; it starts from the model the app serves. --no-lock: the
    run inherits the store's lock from start_retraining instead of taking it itself."""
    return [
        sys.executable,
        "-m",
        RETRAIN_MODULE,
        "--db",
        str(settings.database),
        "--data-dir",
        str(settings.data_dir),
        "--no-lock",
    ]


MSG_RETRAIN_RUNNING = (
    "A retraining run on this store is already in progress (started here, by the scheduler or from the command "
    "line); wait for it to finish."
)


def start_retraining(settings: Settings, command: list[str] | None = None) -> RetrainJob:
    """Start retraining as a background process writing to data_dir/retrain/<time>.log; one run per store.

    The store's lock (labeling.runlock, beside the database) is taken here and its descriptor handed to the
    process, which holds it until it exits: a scheduler tick or a CLI run refuses meanwhile, and this refuses
    while one of them holds it, wherever the database lives. `command`: for tests, another process to start."""
    if command is None and not retrain_available():
        raise StoreError("Retraining is not available on this server yet (the train.retrain module is missing).")
    fd = runlock.hold(settings.database)
    if fd is None:
        raise StoreError(MSG_RETRAIN_RUNNING)
    try:
        folder = Path(settings.data_dir) / RETRAIN_DIR
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
        command = command or retrain_command(settings)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(fd,),
            )
    finally:
        os.close(fd)  # the child's copy of the descriptor keeps the lock until the run ends
    log.info("retraining started (pid %d)", process.pid)
    return RetrainJob(pid=process.pid, log_path=log_path, command=command)


def retrain_running(settings: Settings) -> bool:
    """Whether a retraining run (of any starter) holds this store's lock now."""
    return runlock.is_held(settings.database)


def retrain_status(settings: Settings, lines: int = 15) -> str:
    """The latest retraining log's last lines ('' when there has been none): the app's runs log under the data
    dir, the scheduler's beside the database (the same folder when the database is in the data dir)."""
    folders = {Path(settings.data_dir) / RETRAIN_DIR, runlock.retrain_dir(settings.database)}
    logs = [p for folder in folders if folder.is_dir() for p in folder.glob("*.log")]
    if not logs:
        return ""
    latest = max(logs, key=lambda p: (p.stat().st_mtime, p.name))
    tail = latest.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(tail)
