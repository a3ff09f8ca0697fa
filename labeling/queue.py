"""The annotation queue: which clip an annotator should label next, and a lease on its slot.

A clip needs `k` votes. Open reservations (leases) of other annotators count toward k until they
expire; the lease is taken in the caller's BEGIN IMMEDIATE transaction after re-checking the slot,
so two annotators asking at once never both get the last one. Among open clips the most valuable
comes first:

    value = W_UNCERTAINTY * model uncertainty   (normalised entropy of the latest prediction; 1 if none)
          + W_DISAGREEMENT * vote disagreement  (1 - share of the most given label so far)
          + W_RARITY * rarity of the predicted class (1 - its count / the most predicted class's count)

Ties go to clips closer to k, then the oldest. Ranking reads the whole queue, so it runs before the
write lock is taken; inside the lock only the chosen clips are re-checked (see `choose`).

Gold clips (known label) sit outside the k bookkeeping: each annotator sees each gold clip at most
once, mixed in so that after n items floor(gold_rate * n) of them were gold (a deterministic quota:
the rate is exact and testable; which positions are gold is predictable in principle).
Only clips whose content is kept (consented media or text) can be shown, so only they are queued.
"""

from __future__ import annotations

import math
from typing import Any

from sqlite_utils import Database

W_UNCERTAINTY = 1.0
W_DISAGREEMENT = 1.0
W_RARITY = 0.5
CANDIDATES = 16  # ranked outside the write lock, then re-checked inside it

_OPEN_CLIPS = """
WITH counts AS (
    SELECT c.id, c.created,
        (SELECT COUNT(*) FROM votes v WHERE v.clip_id = c.id) AS n_votes,
        (SELECT COUNT(*) FROM reservations r
            WHERE r.clip_id = c.id AND r.annotator_id != :a AND r.expires > :now) AS n_reserved,
        (SELECT MAX(p.id) FROM predictions p WHERE p.clip_id = c.id) AS prediction_id
    FROM clips c
    WHERE c.gold_label IS NULL
      AND (c.media IS NOT NULL OR c.text IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.clip_id = c.id AND v.annotator_id = :a)
      AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.clip_id = c.id AND s.annotator_id = :a)
      {one_clip}
)
SELECT counts.*, p.entropy, p.top_label
FROM counts LEFT JOIN predictions p ON p.id = counts.prediction_id
WHERE n_votes + n_reserved < :k
"""

_OPEN_GOLD = """
SELECT c.id, (SELECT COUNT(*) FROM votes v WHERE v.clip_id = c.id) AS n_votes
FROM clips c
WHERE c.gold_label IS NOT NULL
  AND (c.media IS NOT NULL OR c.text IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.clip_id = c.id AND v.annotator_id = :a)
  AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.clip_id = c.id AND s.annotator_id = :a)
ORDER BY n_votes, c.created, c.id
LIMIT 1
"""

_PREDICTED_CLASS_COUNTS = """
SELECT top_label, COUNT(*) AS n FROM predictions
WHERE id IN (SELECT MAX(id) FROM predictions GROUP BY clip_id)
GROUP BY top_label
"""

_VOTE_LABEL_COUNTS = """
SELECT v.clip_id, j.value AS label, COUNT(*) AS n
FROM votes v, json_each(v.labels) j
WHERE v.clip_id IN (SELECT clip_id FROM votes GROUP BY clip_id HAVING COUNT(*) < :k)
GROUP BY v.clip_id, j.value
"""


def open_clips(db: Database, annotator_id: str, k: int, now: float) -> list[dict[str, Any]]:
    """Clips this annotator may still label, each with n_votes, n_reserved, entropy, top_label."""
    return list(db.query(_OPEN_CLIPS.format(one_clip=""), {"a": annotator_id, "k": k, "now": now}))


def still_open(db: Database, clip_id: str, annotator_id: str, k: int, now: float) -> bool:
    """Whether one clip is still open to this annotator (a cheap re-check under the write lock)."""
    sql = _OPEN_CLIPS.format(one_clip="AND c.id = :clip")
    return bool(list(db.query(sql, {"a": annotator_id, "k": k, "now": now, "clip": clip_id})))


def disagreement(label_counts: dict[str, int]) -> float:
    """1 - share of the most given label (0 with no votes or full agreement)."""
    total = sum(label_counts.values())
    return 0.0 if total == 0 else 1.0 - max(label_counts.values()) / total


def rank(db: Database, rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The open clips, most valuable first; each row gains a 'value'."""
    predicted = {r["top_label"]: r["n"] for r in db.query(_PREDICTED_CLASS_COUNTS)}
    most = max(predicted.values(), default=0)
    votes: dict[str, dict[str, int]] = {}
    for r in db.query(_VOTE_LABEL_COUNTS, {"k": k}):
        votes.setdefault(r["clip_id"], {})[r["label"]] = r["n"]
    for row in rows:
        uncertainty = 1.0 if row["entropy"] is None else row["entropy"]
        rarity = 0.0 if not most or row["top_label"] is None else 1.0 - predicted[row["top_label"]] / most
        row["value"] = (
            W_UNCERTAINTY * uncertainty + W_DISAGREEMENT * disagreement(votes.get(row["id"], {})) + W_RARITY * rarity
        )
    return sorted(rows, key=lambda r: (-r["value"], -r["n_votes"], r["created"], r["id"]))


def gold_due(db: Database, annotator_id: str, gold_rate: float) -> bool:
    """Whether the next item should be gold: floor(rate * (seen + 1)) > gold seen so far."""
    if gold_rate <= 0:
        return False
    row = next(
        db.query(
            """SELECT COUNT(*) AS seen, COALESCE(SUM(c.gold_label IS NOT NULL), 0) AS gold
               FROM votes v JOIN clips c ON c.id = v.clip_id WHERE v.annotator_id = ?""",
            [annotator_id],
        )
    )
    return math.floor(gold_rate * (row["seen"] + 1) + 1e-9) > row["gold"]


def held(db: Database, annotator_id: str, now: float) -> str | None:
    """A clip this annotator already holds an open lease on and has not voted on (a page reload)."""
    rows = db.query(
        """SELECT r.clip_id FROM reservations r
           WHERE r.annotator_id = ? AND r.expires > ?
             AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.clip_id = r.clip_id AND v.annotator_id = r.annotator_id)
           ORDER BY r.expires DESC LIMIT 1""",
        [annotator_id, now],
    )
    row = next(iter(rows), None)
    return row["clip_id"] if row else None


def candidates(db: Database, annotator_id: str, *, k: int, now: float, limit: int = CANDIDATES) -> list[str]:
    """The most valuable open clips, best first. Runs outside the write lock (WAL readers never wait)."""
    return [row["id"] for row in rank(db, open_clips(db, annotator_id, k, now), k)[:limit]]


def choose(
    db: Database,
    annotator_id: str,
    *,
    k: int,
    gold_rate: float,
    now: float,
    ranked: list[str] | None = None,
) -> str | None:
    """The clip to serve next (without reserving it); None when nothing needs this annotator.

    Call inside the write transaction. `ranked` (from `candidates`, computed before taking the lock)
    is re-checked clip by clip; only if every one was taken meanwhile is the ranking redone here.
    """
    current = held(db, annotator_id, now)
    if current:
        return current
    if gold_due(db, annotator_id, gold_rate):
        gold = next(iter(db.query(_OPEN_GOLD, {"a": annotator_id})), None)
        if gold:
            return gold["id"]
    for clip_id in ranked or []:
        if still_open(db, clip_id, annotator_id, k, now):
            return clip_id
    fresh = candidates(db, annotator_id, k=k, now=now, limit=1)
    return fresh[0] if fresh else None


def reserve(db: Database, clip_id: str, annotator_id: str, expires: float) -> None:
    db.execute(
        """INSERT INTO reservations (clip_id, annotator_id, expires) VALUES (?, ?, ?)
           ON CONFLICT (clip_id, annotator_id) DO UPDATE SET expires = excluded.expires""",
        [clip_id, annotator_id, expires],
    )
