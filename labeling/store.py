"""The labelling store: clips, predictions, annotators, votes and model history in one SQLite file.

Nothing a user gives is lost: votes are committed (WAL, fsync) before a call returns, a changed
or undone vote moves to vote_history, and re-adding content is idempotent. Media is kept only with
consent, content-addressed beside the database (see media.py). Deletions for privacy remove rows
and files and are logged without content.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from backend.labels import LABELS, MODALITIES, normalize_label

from . import keys, media, queue
from .db import SYNCHRONOUS, Connections
from .errors import NotFoundError, StoreError

log = logging.getLogger(__name__)

ANNOTATOR_KINDS = ("user", "crowd", "gold", "import")
SOURCES = ("upload", "import")
MAX_ID_CHARS = 200
MAX_NOTE_CHARS = 2_000


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def short(value: str) -> str:
    """A non-reversible tag for logs: never the id, label or content itself."""
    return hashlib.sha256(value.encode()).hexdigest()[:10]


def check_labels(labels: list[str] | str) -> list[str]:
    """Taxonomy names, de-duplicated in the order given; StoreError if empty or unknown."""
    if isinstance(labels, str):
        labels = [labels]
    out: list[str] = []
    for name in labels:
        try:
            label = normalize_label(name)
        except ValueError as err:
            raise StoreError(str(err)) from err
        if label not in out:
            out.append(label)
    if not out:
        raise StoreError(f"Choose at least one emotion ({', '.join(LABELS)}).")
    return out


def check_id(value: str, what: str) -> str:
    text = str(value).strip()
    if not text or len(text) > MAX_ID_CHARS:
        raise StoreError(f"The {what} id must be 1 to {MAX_ID_CHARS} characters.")
    if not text.isprintable() or any("\ud800" <= c <= "\udfff" for c in text):  # SQLite cannot store lone surrogates
        raise StoreError(f"The {what} id may only hold printable characters.")
    return text


def _decode(row: dict[str, Any], *json_fields: str) -> dict[str, Any]:
    for name in json_fields:
        if name in row and row[name] is not None:
            row[name] = json.loads(row[name])
    return row


def prediction_summary(probs: dict[str, float]) -> tuple[dict[str, float], str, float, float]:
    """Validated probabilities over LABELS (summing to 1), top label, normalised entropy, margin."""
    full = dict.fromkeys(LABELS, 0.0)
    for name, p in probs.items():
        try:
            label = normalize_label(name)
            value = float(p)
        except (ValueError, TypeError) as err:
            raise StoreError(f"Bad prediction entry {name!r}: {err}") from err
        if not math.isfinite(value) or value < 0:
            raise StoreError(f"Probability for {label!r} must be a finite number >= 0, got {p!r}.")
        full[label] += value
    total = sum(full.values())
    if total <= 0:
        raise StoreError("A prediction needs at least one probability above 0.")
    full = {k: v / total for k, v in full.items()}
    ranked = sorted(full.values(), reverse=True)
    entropy = -sum(p * math.log(p) for p in full.values() if p > 0) / math.log(len(LABELS))
    top = max(LABELS, key=lambda name: full[name])
    return full, top, min(max(entropy, 0.0), 1.0), ranked[0] - ranked[1]


@contextlib.contextmanager
def _missing_clip_is_not_found() -> Iterator[None]:
    """A foreign-key failure here means the clip was deleted in the meantime."""
    try:
        yield
    except sqlite3.IntegrityError as err:
        if "FOREIGN KEY" not in str(err):
            raise
        raise NotFoundError("That clip is not in the store (it may have been deleted).") from err


@dataclass
class Store:
    """One SQLite file plus its media folder. Open with Store.open(); safe to share across threads."""

    path: Path
    media_dir: Path
    conns: Connections
    k: int = 3  # votes wanted per clip
    gold_rate: float = 0.1  # share of queue items that are gold
    # called with the ids of clips whose media just went (deletion, consent withdrawn): the app purges its
    # served copies of them
    on_media_gone: list[Callable[[list[str]], None]] = field(default_factory=list)

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path | str | None = None,
        media_dir: Path | None = None,
        *,
        k: int | None = None,
        gold_rate: float | None = None,
        synchronous: str = SYNCHRONOUS,
    ) -> Store:
        """Open (creating folders and schema as needed) the store; defaults come from backend.settings."""
        settings = None
        if path is None or k is None or gold_rate is None:
            from backend.settings import load_settings

            settings = load_settings()
        path = Path(path) if path is not None else settings.database
        media_dir = Path(media_dir) if media_dir is not None else path.parent / "media"
        path.parent.mkdir(parents=True, exist_ok=True)
        media_dir.mkdir(parents=True, exist_ok=True)
        conns = Connections(path, synchronous=synchronous)
        conns.migrate()
        return cls(
            path=path,
            media_dir=media_dir,
            conns=conns,
            k=k if k is not None else settings.votes_per_clip,
            gold_rate=gold_rate if gold_rate is not None else settings.gold_rate,
        )

    @property
    def db(self) -> Database:
        """This thread's connection, for reads (writes go through `write()`)."""
        return self.conns.db

    def write(self):
        """`with store.write() as db:` one BEGIN IMMEDIATE transaction, retried while busy."""
        return self.conns.write()

    def close(self) -> None:
        self.conns.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- clips -----------------------------------------------------------------------------

    def add_clip(
        self,
        data: bytes | None,
        *,
        sha256: str | None = None,
        ext: str = ".wav",
        modalities: list[str],
        duration: float = 0.0,
        source: str = "upload",
        consent: bool = False,
        text: str | None = None,
        uploader: str | None = None,
    ) -> str:
        """Record a clip by the sha256 of its content and return that id.

        Media (and text) is kept only with consent. Re-adding the same content is idempotent; a later
        call with consent (and the data) upgrades the clip to kept media.
        """
        if data is None and sha256 is None:
            raise StoreError("A clip needs its content or its sha256.")
        clip_id = media.sha256_hex(data) if data is not None else media.check_sha256(sha256)
        if sha256 is not None and media.check_sha256(sha256) != clip_id:
            raise StoreError("The sha256 given does not match the clip's content.")
        ext = media.check_ext(ext)
        bad = [m for m in modalities if m not in MODALITIES]
        if bad or not modalities:
            raise StoreError(f"Modalities must be some of {', '.join(MODALITIES)}; got {modalities!r}.")
        if source not in SOURCES:
            raise StoreError(f"Source must be one of {', '.join(SOURCES)}; got {source!r}.")
        if uploader is not None:
            uploader = check_id(uploader, "annotator")
        relative = None
        if consent and data is not None:
            relative = media.relative_path(clip_id, ext)
            target = media.resolve(self.media_dir, relative)
            if not target.exists():
                media.write_atomic(target, data)
        with self.write() as db:
            if uploader is not None:
                self._ensure_annotator(db, uploader, "user")
            db.execute(
                """INSERT INTO clips (id, ext, media, text, consent, duration, modalities, source,
                                      uploader, created)
                   VALUES (:id, :ext, :media, :text, :consent, :duration, :modalities, :source,
                           :uploader, :created)
                   ON CONFLICT (id) DO UPDATE SET
                       consent = MAX(consent, excluded.consent),
                       media = COALESCE(media, excluded.media),
                       text = COALESCE(text, excluded.text),
                       uploader = COALESCE(uploader, excluded.uploader)""",
                {
                    "id": clip_id,
                    "ext": ext,
                    "media": relative,
                    "text": text if consent else None,
                    "consent": int(bool(consent)),
                    "duration": float(duration),
                    "modalities": json.dumps(sorted(set(modalities), key=MODALITIES.index)),
                    "source": source,
                    "uploader": uploader,
                    "created": now_iso(),
                },
            )
        return clip_id

    def text_clip_id(self, text: str) -> str:
        """The id of a text-only clip: HMAC-SHA256 of its words under this store's secret, so an id kept without
        consent cannot be turned back into a short sentence by hashing a dictionary (a bare sha256 can)."""
        return hmac.new(keys.server_secret(self.path), text.encode("utf-8"), hashlib.sha256).hexdigest()

    def _media_gone(self, clip_ids: list[str]) -> None:
        for hook in self.on_media_gone:
            try:
                hook(clip_ids)
            except Exception:  # a cache purge must never undo or block a deletion
                log.exception("a media-gone hook failed")

    def get_clip(self, clip_id: str) -> dict[str, Any]:
        """The clip's row (modalities decoded); NotFoundError if it is not in the store."""
        rows = list(self.db.query("SELECT * FROM clips WHERE id = ?", [str(clip_id).lower()]))
        if not rows:
            raise NotFoundError("That clip is not in the store (it may have been deleted).")
        return _decode(rows[0], "modalities")

    def media_path(self, clip_id: str) -> Path | None:
        """Absolute path of the clip's kept media (always inside media_dir), or None without consent."""
        relative = self.get_clip(clip_id)["media"]
        return media.resolve(self.media_dir, relative) if relative else None

    def set_consent(self, clip_id: str, consent: bool) -> None:
        """Withdrawing consent removes the kept media and text; votes stay (they are the user's own)."""
        clip = self.get_clip(clip_id)
        with self.write() as db:
            if consent:
                db.execute("UPDATE clips SET consent = 1 WHERE id = ?", [clip["id"]])
            else:
                db.execute("UPDATE clips SET consent = 0, media = NULL, text = NULL WHERE id = ?", [clip["id"]])
        if not consent:
            media.remove(self.media_dir, clip["media"])
            self._media_gone([clip["id"]])
            log.info("consent withdrawn for clip %s", short(clip["id"]))

    def add_gold(self, clip_id: str, label: str | None) -> None:
        """Mark a clip as gold with its known label (None unmarks it)."""
        gold = check_labels(label)[0] if label is not None else None
        with self.write() as db:
            cursor = db.execute("UPDATE clips SET gold_label = ? WHERE id = ?", [gold, str(clip_id).lower()])
            if cursor.rowcount == 0:
                raise NotFoundError("That clip is not in the store, so it cannot be marked gold.")

    def add_prediction(self, clip_id: str, model_version: str, probs: dict[str, float]) -> int:
        """Store a model's probabilities for a clip (renormalised over LABELS); return the row id."""
        full, top, entropy, margin = prediction_summary(probs)
        version = check_id(model_version, "model version")
        self.get_clip(clip_id)
        with self.write() as db, _missing_clip_is_not_found():
            cursor = db.execute(
                """INSERT INTO predictions (clip_id, model_version, probs, top_label, entropy, margin, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [str(clip_id).lower(), version, json.dumps(full), top, entropy, margin, now_iso()],
            )
            return cursor.lastrowid

    def latest_prediction(self, clip_id: str) -> dict[str, Any] | None:
        rows = self.db.query(
            "SELECT * FROM predictions WHERE clip_id = ? ORDER BY id DESC LIMIT 1", [str(clip_id).lower()]
        )
        row = next(iter(rows), None)
        return _decode(row, "probs") if row else None

    # ---- annotators and votes --------------------------------------------------------------

    @staticmethod
    def _ensure_annotator(db: Database, annotator_id: str, kind: str) -> None:
        db.execute(
            """INSERT INTO annotators (id, kind, reliability, created) VALUES (?, ?, ?, ?)
               ON CONFLICT (id) DO NOTHING""",
            [annotator_id, kind, 1.0 if kind == "gold" else 0.5, now_iso()],
        )

    def ensure_annotator(self, annotator_id: str, kind: str = "crowd") -> dict[str, Any]:
        """The annotator's row, created with `kind` if new (an existing annotator keeps its kind)."""
        annotator_id = check_id(annotator_id, "annotator")
        if kind not in ANNOTATOR_KINDS:
            raise StoreError(f"Annotator kind must be one of {', '.join(ANNOTATOR_KINDS)}; got {kind!r}.")
        with self.write() as db:
            self._ensure_annotator(db, annotator_id, kind)
        return self.get_annotator(annotator_id)

    def get_annotator(self, annotator_id: str) -> dict[str, Any]:
        rows = list(self.db.query("SELECT * FROM annotators WHERE id = ?", [annotator_id]))
        if not rows:
            raise NotFoundError("That annotator is not in the store (they may have been deleted).")
        return rows[0]

    def vote(
        self,
        clip_id: str,
        annotator_id: str,
        labels: list[str] | str,
        unsure: bool = False,
        note: str | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        """Record the annotator's current vote on a clip and return its id.

        A new vote replaces the annotator's previous one, which moves to vote_history; sending the
        same vote twice changes nothing. The annotator's lease on the clip is released. Unknown
        annotators are created as 'crowd' (call ensure_annotator first to choose the kind).

        request_id: an idempotency key. The first call with a key stores the vote and remembers the key in
        the same transaction; any later call by the same annotator with that key changes nothing and
        returns the first call's vote id, so a client that timed out can safely send the vote again.
        """
        clip_id = str(clip_id).lower()
        annotator_id = check_id(annotator_id, "annotator")
        request_id = check_id(request_id, "vote request") if request_id is not None else None
        labels_json = json.dumps(check_labels(labels))
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise StoreError(f"Notes are limited to {MAX_NOTE_CHARS} characters.")
        with self.write() as db:
            if request_id is not None:
                first = self._first_vote(db, annotator_id, request_id)
                if first is not None:
                    return first
            if not next(iter(db.query("SELECT 1 AS ok FROM clips WHERE id = ?", [clip_id])), None):
                raise NotFoundError("That clip is not in the store (it may have been deleted).")
            self._ensure_annotator(db, annotator_id, "crowd")
            db.execute("DELETE FROM reservations WHERE clip_id = ? AND annotator_id = ?", [clip_id, annotator_id])
            vote_id = self._upsert_vote(db, clip_id, annotator_id, labels_json, int(bool(unsure)), note)
            if request_id is not None:
                db.execute(
                    """INSERT INTO vote_requests (annotator_id, request_id, clip_id, vote_id, created)
                       VALUES (?, ?, ?, ?, ?)""",
                    [annotator_id, request_id, clip_id, vote_id, now_iso()],
                )
            return vote_id

    @staticmethod
    def _first_vote(db: Database, annotator_id: str, request_id: str) -> int | None:
        """The vote id an earlier call with this idempotency key stored, or None."""
        rows = db.query(
            "SELECT vote_id FROM vote_requests WHERE annotator_id = ? AND request_id = ?", [annotator_id, request_id]
        )
        row = next(iter(rows), None)
        return row["vote_id"] if row else None

    def _upsert_vote(
        self, db: Database, clip_id: str, annotator_id: str, labels_json: str, unsure: int, note: str | None
    ) -> int:
        old = next(
            iter(db.query("SELECT * FROM votes WHERE clip_id = ? AND annotator_id = ?", [clip_id, annotator_id])),
            None,
        )
        if old is None:
            cursor = db.execute(
                """INSERT INTO votes (clip_id, annotator_id, labels, unsure, note, created)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                [clip_id, annotator_id, labels_json, unsure, note, now_iso()],
            )
            return cursor.lastrowid
        if (old["labels"], old["unsure"], old["note"]) == (labels_json, unsure, note):
            return old["id"]
        self._to_history(db, old, "replaced")
        db.execute(
            "UPDATE votes SET labels = ?, unsure = ?, note = ?, created = ? WHERE id = ?",
            [labels_json, unsure, note, now_iso(), old["id"]],
        )
        return old["id"]

    def claim_annotator(self, annotator_id: str, key: str | None, kind: str = "crowd") -> str:
        """Prove the caller may act as `annotator_id` and return the key that does.

        The first claim of an id without a key issues a new random key (only its hash is stored); every later
        claim must present that key, so typing someone's name no longer makes you them. StoreError otherwise.
        """
        annotator_id = check_id(annotator_id, "annotator")
        with self.write() as db:
            self._ensure_annotator(db, annotator_id, kind)
            row = next(
                iter(db.query("SELECT key_hash FROM annotator_keys WHERE annotator_id = ?", [annotator_id])), None
            )
            if row is None:
                issued = keys.new_key()
                db.execute(
                    "INSERT INTO annotator_keys (annotator_id, key_hash, created) VALUES (?, ?, ?)",
                    [annotator_id, keys.key_hash(issued), now_iso()],
                )
                log.info("issued a key to annotator %s", short(annotator_id))
                return issued
        if not key or not hmac.compare_digest(keys.key_hash(key), row["key_hash"]):
            raise StoreError(keys.MSG_NAME_TAKEN)
        return key

    def has_voted(self, clip_id: str, annotator_id: str) -> bool:
        rows = self.db.query(
            "SELECT 1 AS ok FROM votes WHERE clip_id = ? AND annotator_id = ?", [str(clip_id).lower(), annotator_id]
        )
        return next(iter(rows), None) is not None

    @staticmethod
    def _to_history(db: Database, old: dict[str, Any], action: str) -> None:
        db.execute(
            """INSERT INTO vote_history (vote_id, clip_id, annotator_id, labels, unsure, note, created, ended, action)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [old["id"], old["clip_id"], old["annotator_id"], old["labels"], old["unsure"], old["note"],
             old["created"], now_iso(), action],
        )  # fmt: skip

    def delete_vote(self, clip_id: str, annotator_id: str) -> bool:
        """Undo the annotator's current vote on a clip (kept in history as 'undone'); False if none."""
        with self.write() as db:
            rows = db.query(
                "SELECT * FROM votes WHERE clip_id = ? AND annotator_id = ?", [str(clip_id).lower(), annotator_id]
            )
            old = next(iter(rows), None)
            if old is None:
                return False
            self._to_history(db, old, "undone")
            db.execute("DELETE FROM votes WHERE id = ?", [old["id"]])
            return True

    def votes(self, clip_id: str | None = None) -> list[dict[str, Any]]:
        """Current votes (of one clip, or all), labels decoded, oldest first."""
        where, params = ("WHERE clip_id = ?", [str(clip_id).lower()]) if clip_id else ("", [])
        return [_decode(r, "labels") for r in self.db.query(f"SELECT * FROM votes {where} ORDER BY id", params)]

    def vote_history(self, clip_id: str | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE clip_id = ?", [str(clip_id).lower()]) if clip_id else ("", [])
        sql = f"SELECT * FROM vote_history {where} ORDER BY id"
        return [_decode(r, "labels") for r in self.db.query(sql, params)]

    def gold_stats(self) -> dict[str, tuple[int, float]]:
        """Per annotator: (gold items voted on, credit), a vote scoring 1/len(labels) if it has the gold label."""
        out: dict[str, tuple[int, float]] = {}
        rows = self.db.query(
            """SELECT v.annotator_id, v.labels, c.gold_label FROM votes v
               JOIN clips c ON c.id = v.clip_id WHERE c.gold_label IS NOT NULL"""
        )
        for r in rows:
            labels = json.loads(r["labels"])
            n, credit = out.get(r["annotator_id"], (0, 0.0))
            out[r["annotator_id"]] = (n + 1, credit + (1.0 / len(labels) if r["gold_label"] in labels else 0.0))
        return out

    # ---- queue -----------------------------------------------------------------------------

    def next_item(
        self,
        annotator_id: str,
        *,
        k: int | None = None,
        gold_rate: float | None = None,
        reserve_minutes: float = 10,
    ) -> dict[str, Any] | None:
        """The next clip for this annotator, leased for `reserve_minutes`; None when nothing is left.

        The dict is the clip without its gold label (blind), plus 'reserved_until' (Unix time).
        """
        annotator_id = check_id(annotator_id, "annotator")
        k = self.k if k is None else int(k)
        gold_rate = self.gold_rate if gold_rate is None else float(gold_rate)
        now = time.time()
        ranked = queue.candidates(self.db, annotator_id, k=k, now=now)
        with self.write() as db:
            self._ensure_annotator(db, annotator_id, "crowd")
            db.execute("DELETE FROM reservations WHERE expires <= ?", [now])
            clip_id = queue.choose(db, annotator_id, k=k, gold_rate=gold_rate, now=now, ranked=ranked)
            if clip_id is None:
                return None
            until = now + reserve_minutes * 60
            queue.reserve(db, clip_id, annotator_id, until)
        clip = self.get_clip(clip_id)
        clip.pop("gold_label")
        clip["reserved_until"] = until
        return clip

    def skip(self, clip_id: str, annotator_id: str) -> None:
        """Do not show this clip to this annotator again (no vote); releases the lease."""
        clip_id = str(clip_id).lower()
        annotator_id = check_id(annotator_id, "annotator")
        self.get_clip(clip_id)
        with self.write() as db:
            self._ensure_annotator(db, annotator_id, "crowd")
            db.execute("DELETE FROM reservations WHERE clip_id = ? AND annotator_id = ?", [clip_id, annotator_id])
            db.execute(
                "INSERT INTO skips (clip_id, annotator_id, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [clip_id, annotator_id, now_iso()],
            )

    def annotator_progress(self, annotator_id: str) -> dict[str, Any]:
        """Votes cast, gold accuracy so far, and how many clips still wait for this annotator."""
        annotator = self.get_annotator(annotator_id)
        n_votes = self.db.execute("SELECT COUNT(*) FROM votes WHERE annotator_id = ?", [annotator_id]).fetchone()[0]
        n_gold, credit = self.gold_stats().get(annotator_id, (0, 0.0))
        remaining = len(queue.open_clips(self.db, annotator_id, self.k, time.time()))
        return {
            "annotator_id": annotator_id,
            "kind": annotator["kind"],
            "votes": n_votes,
            "gold_seen": n_gold,
            "gold_accuracy": credit / n_gold if n_gold else None,
            "reliability": annotator["reliability"],
            "remaining": remaining,
        }

    # ---- privacy ---------------------------------------------------------------------------

    def _count(self, db: Database, table: str, where: str, params: list[Any]) -> int:
        return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0]

    def _delete_clips(self, db: Database, clip_ids: list[str]) -> tuple[dict[str, int], list[str]]:
        """Delete clips and everything hanging off them (votes of everyone); return counts and media paths."""
        counts = Counter()
        paths = []
        for clip_id in clip_ids:
            for table in ("predictions", "votes", "vote_history", "reservations", "skips"):
                counts[table] += self._count(db, table, "clip_id = ?", [clip_id])
            row = next(iter(db.query("SELECT media FROM clips WHERE id = ?", [clip_id])), None)
            if row is None:
                continue
            if row["media"]:
                paths.append(row["media"])
            db.execute("DELETE FROM clips WHERE id = ?", [clip_id])  # cascades to the tables counted
            counts["clips"] += 1
        return dict(counts), paths

    def delete_clip(self, clip_id: str) -> dict[str, int]:
        """Remove a clip, its media file, predictions and every vote on it; return what went."""
        clip_id = str(clip_id).lower()
        with self.write() as db:
            counts, paths = self._delete_clips(db, [clip_id])
        if not counts.get("clips"):
            raise NotFoundError("That clip is not in the store (it may already have been deleted).")
        counts["files"] = sum(media.remove(self.media_dir, p) for p in paths)
        self._media_gone([clip_id])
        log.info("deleted clip %s: %s", short(clip_id), json.dumps(counts, sort_keys=True))
        return counts

    def delete_annotator(self, annotator_id: str) -> dict[str, int]:
        """Remove an annotator, all their votes (and history), and the clips they uploaded with their media."""
        self.get_annotator(annotator_id)
        with self.write() as db:
            uploaded = [r["id"] for r in db.query("SELECT id FROM clips WHERE uploader = ?", [annotator_id])]
            counts, paths = self._delete_clips(db, uploaded)
            counts = Counter(counts)
            for table in ("votes", "vote_history", "reservations", "skips"):
                counts[table] += self._count(db, table, "annotator_id = ?", [annotator_id])
            db.execute("DELETE FROM annotators WHERE id = ?", [annotator_id])
            counts["annotators"] = 1
        counts = dict(counts)
        counts["files"] = sum(media.remove(self.media_dir, p) for p in paths)
        if uploaded:
            self._media_gone(uploaded)
        log.info("deleted annotator %s: %s", short(annotator_id), json.dumps(counts, sort_keys=True))
        return counts

    def sweep_orphans(self, min_age_s: float = 3600.0) -> int:
        """Remove media files no clip row points at: left by a crash between writing a file and its row, or
        between deleting a row and its file (that one matters for privacy), and half-written temporaries.
        Only files older than min_age_s go, so a clip being added right now keeps its file. Returns the count."""
        referenced = {r["media"] for r in self.db.query("SELECT media FROM clips WHERE media IS NOT NULL")}
        cutoff = time.time() - min_age_s
        removed = 0
        for path in list(self.media_dir.rglob("*")):  # removing empties fan-out folders as it goes
            relative = path.relative_to(self.media_dir).as_posix()
            try:  # a link is never ours to follow; a file another process just deleted is fine
                if path.is_symlink() or not path.is_file() or path.stat().st_mtime > cutoff or relative in referenced:
                    continue
            except FileNotFoundError:
                continue
            removed += media.remove(self.media_dir, relative)
        if removed:
            log.info("removed %d media files no clip refers to", removed)
        return removed

    # ---- models and training runs ----------------------------------------------------------

    def record_model_version(self, version: str, path_or_repo: str, metrics: dict, parent: str | None) -> None:
        """Add or update a model version (its metrics as JSON)."""
        version = check_id(version, "model version")
        with self.write() as db:
            db.execute(
                """INSERT INTO model_versions (version, path_or_repo, metrics, parent, created)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (version) DO UPDATE SET path_or_repo = excluded.path_or_repo,
                       metrics = excluded.metrics, parent = excluded.parent""",
                [version, str(path_or_repo), json.dumps(metrics), parent, now_iso()],
            )

    def record_training_run(self, run: dict[str, Any]) -> int:
        """Record a retraining run and its promotion decision; a promotion stamps the candidate version."""
        decision = run.get("decision")
        if decision not in ("promoted", "rejected"):
            raise StoreError(f"A training run's decision must be 'promoted' or 'rejected', not {decision!r}.")
        stamp = now_iso()
        with self.write() as db:
            cursor = db.execute(
                """INSERT INTO training_runs (started, finished, base_version, candidate_version,
                       n_corrections, metrics, decision, reason, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    str(run.get("started") or stamp),
                    run.get("finished"),
                    run.get("base_version"),
                    run.get("candidate_version"),
                    int(run.get("n_corrections", 0)),
                    json.dumps(run.get("metrics", {})),
                    decision,
                    str(run.get("reason", "")),
                    stamp,
                ],
            )
            if decision == "promoted" and run.get("candidate_version"):
                db.execute(
                    "UPDATE model_versions SET promoted = ? WHERE version = ?", [stamp, run["candidate_version"]]
                )
            return cursor.lastrowid

    def training_runs(self) -> list[dict[str, Any]]:
        return [_decode(r, "metrics") for r in self.db.query("SELECT * FROM training_runs ORDER BY id")]

    def model_versions(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM model_versions ORDER BY created, version")
        return [_decode(r, "metrics") for r in rows]

    # ---- overview --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for dashboards and the CLI."""
        db = self.db

        def one(sql: str) -> int:
            return db.execute(sql).fetchone()[0]

        def group(sql: str) -> dict[str, int]:
            return dict(db.execute(sql).fetchall())

        labels = dict.fromkeys(LABELS, 0)
        for r in db.query("SELECT j.value AS label, COUNT(*) AS n FROM votes, json_each(votes.labels) j GROUP BY 1"):
            labels[r["label"]] = r["n"]
        return {
            "clips": one("SELECT COUNT(*) FROM clips"),
            "consented_clips": one("SELECT COUNT(*) FROM clips WHERE consent = 1"),
            "clips_with_media": one("SELECT COUNT(*) FROM clips WHERE media IS NOT NULL"),
            "gold_clips": one("SELECT COUNT(*) FROM clips WHERE gold_label IS NOT NULL"),
            "predictions": one("SELECT COUNT(*) FROM predictions"),
            "votes": one("SELECT COUNT(*) FROM votes"),
            "vote_history": one("SELECT COUNT(*) FROM vote_history"),
            "annotators": one("SELECT COUNT(*) FROM annotators"),
            "annotators_by_kind": group("SELECT kind, COUNT(*) FROM annotators GROUP BY kind"),
            "clips_by_source": group("SELECT source, COUNT(*) FROM clips GROUP BY source"),
            "vote_labels": labels,
            "model_versions": one("SELECT COUNT(*) FROM model_versions"),
            "training_runs": one("SELECT COUNT(*) FROM training_runs"),
        }
