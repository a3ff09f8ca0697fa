"""The store's schema as ordered sqlite-utils migrations; the database records which ones ran.

Never infer the schema from data and never edit an applied migration: add a new one at the end.
Labels are JSON lists of taxonomy names (backend.labels.LABELS); times are ISO-8601 UTC text,
except reservation expiry, a Unix time so that comparisons are plain numbers.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("labeling")


@MIGRATIONS(name="0001_clips_predictions_annotators_votes")
def _core(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE clips (
            id TEXT PRIMARY KEY CHECK (length(id) = 64),   -- sha256 of the content
            ext TEXT NOT NULL,                             -- '.wav', '.png', '.txt' ...
            media TEXT,                                    -- path relative to the media dir; consent only
            text TEXT,                                     -- words of a text clip; consent only
            consent INTEGER NOT NULL DEFAULT 0 CHECK (consent IN (0, 1)),
            duration REAL NOT NULL DEFAULT 0,
            modalities TEXT NOT NULL DEFAULT '[]',         -- JSON list of backend.labels.MODALITIES
            source TEXT NOT NULL CHECK (source IN ('upload', 'import')),
            gold_label TEXT,                               -- known label: a gold item for annotators
            uploader TEXT REFERENCES annotators(id) ON DELETE SET NULL,
            created TEXT NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE annotators (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('user', 'crowd', 'gold', 'import')),
            reliability REAL NOT NULL DEFAULT 0.5,         -- Laplace-smoothed gold accuracy
            created TEXT NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            clip_id TEXT NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
            model_version TEXT NOT NULL,
            probs TEXT NOT NULL,                           -- JSON {label: probability}
            top_label TEXT NOT NULL,
            entropy REAL NOT NULL,                         -- normalised to [0, 1]
            margin REAL NOT NULL,                          -- top-1 minus top-2 probability
            created TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX predictions_clip ON predictions(clip_id, id)")
    db.execute(
        """
        CREATE TABLE votes (
            id INTEGER PRIMARY KEY,
            clip_id TEXT NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
            annotator_id TEXT NOT NULL REFERENCES annotators(id) ON DELETE CASCADE,
            labels TEXT NOT NULL,                          -- JSON list of taxonomy names
            unsure INTEGER NOT NULL DEFAULT 0 CHECK (unsure IN (0, 1)),
            note TEXT,
            created TEXT NOT NULL,
            UNIQUE (clip_id, annotator_id)                 -- one current vote per annotator and clip
        )"""
    )
    db.execute("CREATE INDEX votes_annotator ON votes(annotator_id)")
    db.execute(
        """
        CREATE TABLE vote_history (
            id INTEGER PRIMARY KEY,
            vote_id INTEGER NOT NULL,
            clip_id TEXT NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
            annotator_id TEXT NOT NULL REFERENCES annotators(id) ON DELETE CASCADE,
            labels TEXT NOT NULL,
            unsure INTEGER NOT NULL,
            note TEXT,
            created TEXT NOT NULL,                         -- when the old vote was given
            ended TEXT NOT NULL,                           -- when it stopped being current
            action TEXT NOT NULL CHECK (action IN ('replaced', 'undone'))
        )"""
    )
    db.execute("CREATE INDEX vote_history_clip ON vote_history(clip_id, annotator_id)")
    db.execute("CREATE INDEX vote_history_annotator ON vote_history(annotator_id)")


@MIGRATIONS(name="0002_reservations_skips")
def _queue(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE reservations (
            clip_id TEXT NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
            annotator_id TEXT NOT NULL REFERENCES annotators(id) ON DELETE CASCADE,
            expires REAL NOT NULL,                         -- Unix time; counts toward k until then
            PRIMARY KEY (clip_id, annotator_id)
        )"""
    )
    db.execute("CREATE INDEX reservations_annotator ON reservations(annotator_id)")
    db.execute(
        """
        CREATE TABLE skips (
            clip_id TEXT NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
            annotator_id TEXT NOT NULL REFERENCES annotators(id) ON DELETE CASCADE,
            created TEXT NOT NULL,
            PRIMARY KEY (clip_id, annotator_id)
        )"""
    )
    db.execute("CREATE INDEX skips_annotator ON skips(annotator_id)")


@MIGRATIONS(name="0003_model_versions_training_runs")
def _models(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE model_versions (
            version TEXT PRIMARY KEY,
            path_or_repo TEXT NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}',
            parent TEXT,
            promoted TEXT,                                 -- when a training run promoted it
            created TEXT NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE training_runs (
            id INTEGER PRIMARY KEY,
            started TEXT NOT NULL,
            finished TEXT,
            base_version TEXT,
            candidate_version TEXT,
            n_corrections INTEGER NOT NULL DEFAULT 0,
            metrics TEXT NOT NULL DEFAULT '{}',            -- champion and challenger figures
            decision TEXT NOT NULL CHECK (decision IN ('promoted', 'rejected')),
            reason TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL
        )"""
    )


@MIGRATIONS(name="0004_vote_requests_annotator_keys")
def _crowd_grade(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE vote_requests (
            annotator_id TEXT NOT NULL REFERENCES annotators(id) ON DELETE CASCADE,
            request_id TEXT NOT NULL,                      -- idempotency key: client-supplied or server-issued
            clip_id TEXT NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
            vote_id INTEGER NOT NULL,                      -- the vote the first call stored
            created TEXT NOT NULL,
            PRIMARY KEY (annotator_id, request_id)
        )"""
    )
    db.execute("CREATE INDEX vote_requests_clip ON vote_requests(clip_id)")
    db.execute(
        """
        CREATE TABLE annotator_keys (
            annotator_id TEXT PRIMARY KEY REFERENCES annotators(id) ON DELETE CASCADE,
            key_hash TEXT NOT NULL,                        -- sha256 of the key issued on first use; never the key
            created TEXT NOT NULL
        )"""
    )


def migration_names() -> list[str]:
    """Names of every migration in order (tests compare them with what the database recorded)."""
    return [m.name for m in MIGRATIONS.pending(Database(memory=True))]
