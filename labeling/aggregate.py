"""From votes to one label per clip: majority, soft distribution and a reliability-weighted label.

Reliability is an annotator's gold accuracy, Laplace-smoothed: (credit + 1) / (gold votes + 2),
so 0.5 before any gold item and near 0 for a spammer who labels every gold clip 'happy'. A vote's
weight is that accuracy above chance (1/K), rescaled to [0, 1]: an annotator at or below chance
counts for nothing in the weighted label. 'gold' annotators (trusted experts) have reliability 1.
Unsure votes count half. A multi-label vote splits its weight evenly over its labels.

New annotators are on probation: a name costs nothing to make, so an annotator's weight also grows with
the gold items they have answered, from 0 before the first to full after PROBATION_GOLD. Fresh names
therefore cannot outvote proven annotators however many there are (the majority, which ignores weights,
still counts them). 'gold' and 'import' annotators (curated labels) are exempt.

Dawid-Skene (dawid_skene.py) adds a second estimate from every vote, not only gold ones: each annotator's expected
accuracy against the EM consensus (started from the gold-weighted vote shares, gold clips clamped). The weight a
vote gets is the *smaller* of the two, min(gold-based weight, Dawid-Skene weight), because each catches what the
other misses and neither should be able to vouch for someone the other discredits:
- gold is thin (a few items per annotator, probation), but Dawid-Skene sees an always-one-label, a label-flipping
  or a random annotator on all their votes, so they lose weight before their gold count proves it;
- a coordinated group that agrees on wrong labels can *be* the consensus on the clips where it is the majority,
  so Dawid-Skene alone may trust it; its gold answers are wrong, and the gold weight (then the min) drops to 0.
Taking the min never raises a weight above the gold-based one, so probation and the gold behaviour still hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from backend.labels import LABELS

from . import dawid_skene
from .store import Store

UNSURE_WEIGHT = 0.5
CHANCE = 1.0 / len(LABELS)
PROBATION_GOLD = 4  # gold items answered before a new annotator's votes weigh in full
TRUSTED_KINDS = ("gold", "import")
AUDIT_Z = 1.645  # the gold audit's interval: two-sided 90%


@dataclass
class ClipLabel:
    """The aggregated label of one clip; `label` is what training should use."""

    clip_id: str
    majority: str | None  # most voted label (ties: taxonomy order)
    soft: dict[str, float]  # share of votes per label, sums to 1 (0s without votes)
    weighted: str | None  # reliability-weighted label (falls back to majority if all weights are 0)
    n_votes: int
    predicted_label: str | None  # top label of the latest prediction: the hard negative for retraining
    annotators: list[str] = field(default_factory=list)
    weight: float = 0.0  # mean reliability of the clip's annotators
    gold: str | None = None  # known label of a gold clip

    @property
    def label(self) -> str | None:
        return self.gold or self.weighted


def reliability(n_gold: int, credit: float) -> float:
    """Laplace-smoothed gold accuracy."""
    return (credit + 1.0) / (n_gold + 2.0)


def vote_weight(reliability_value: float) -> float:
    """Accuracy above chance, rescaled to [0, 1]."""
    return max(reliability_value - CHANCE, 0.0) / (1.0 - CHANCE)


def probation(n_gold: int) -> float:
    """Share of full weight earned by answering gold items: 0 before any, 1 after PROBATION_GOLD."""
    return min(max(n_gold, 0) / PROBATION_GOLD, 1.0)


def annotator_weights(store: Store, reliabilities: dict[str, float]) -> dict[str, float]:
    """Each annotator's vote weight: accuracy above chance, scaled down while on probation."""
    stats = store.gold_stats()
    kinds = {r["id"]: r["kind"] for r in store.db.query("SELECT id, kind FROM annotators")}
    return {
        aid: vote_weight(rel) * (1.0 if kinds.get(aid) in TRUSTED_KINDS else probation(stats.get(aid, (0, 0.0))[0]))
        for aid, rel in reliabilities.items()
    }


def consensus_weights(
    store: Store, votes: dict[str, list[tuple[str, list[str], bool]]], gold_weights: dict[str, float]
) -> dict[str, float]:
    """Each annotator's Dawid-Skene weight (accuracy above chance against the EM consensus); trusted kinds keep 1."""
    gold = {
        r["id"]: r["gold_label"]
        for r in store.db.query("SELECT id, gold_label FROM clips WHERE gold_label IS NOT NULL")
    }
    flat = [(clip, a, labels, unsure) for clip, clip_votes in votes.items() for a, labels, unsure in clip_votes]
    init = {clip: weighted_shares(clip_votes, gold_weights) for clip, clip_votes in votes.items()}
    fitted = dawid_skene.fit(flat, gold, init)
    kinds = {r["id"]: r["kind"] for r in store.db.query("SELECT id, kind FROM annotators")}
    return {a: 1.0 if kinds.get(a) in TRUSTED_KINDS else vote_weight(acc) for a, acc in fitted.accuracy().items()}


def combined_weights(gold_weights: dict[str, float], ds_weights: dict[str, float]) -> dict[str, float]:
    """min(gold-based, Dawid-Skene) per annotator (see the module docstring for why the min)."""
    return {a: min(w, ds_weights.get(a, w)) for a, w in gold_weights.items()}


def weighted_shares(votes: list[tuple[str, list[str], bool]], weights: dict[str, float]) -> np.ndarray:
    """A clip's vote shares over LABELS under `weights` (plain shares when every weight is 0)."""
    out = np.zeros(len(LABELS))
    plain = np.zeros(len(LABELS))
    for annotator_id, labels, unsure in votes:
        scale = UNSURE_WEIGHT if unsure else 1.0
        for label in labels:
            plain[LABELS.index(label)] += scale / len(labels)
            out[LABELS.index(label)] += scale * weights.get(annotator_id, 0.0) / len(labels)
    return out if out.sum() > 0 else plain


def load_votes(store: Store) -> dict[str, list[tuple[str, list[str], bool]]]:
    """clip id -> its votes as (annotator_id, labels, unsure), in vote order."""
    votes: dict[str, list[tuple[str, list[str], bool]]] = {}
    for r in store.db.query("SELECT clip_id, annotator_id, labels, unsure FROM votes ORDER BY id"):
        votes.setdefault(r["clip_id"], []).append((r["annotator_id"], json.loads(r["labels"]), bool(r["unsure"])))
    return votes


def vote_weights(store: Store, votes: dict[str, list[tuple[str, list[str], bool]]] | None = None) -> dict[str, float]:
    """The weight each annotator's votes get in the weighted label: min(gold-based, Dawid-Skene)."""
    votes = load_votes(store) if votes is None else votes
    gold_weights = annotator_weights(store, update_reliability(store))
    return combined_weights(gold_weights, consensus_weights(store, votes, gold_weights))


def update_reliability(store: Store) -> dict[str, float]:
    """Recompute every annotator's reliability from gold votes, store it, and return it."""
    stats = store.gold_stats()
    kinds = {r["id"]: r["kind"] for r in store.db.query("SELECT id, kind FROM annotators")}
    values = {aid: 1.0 if kind == "gold" else reliability(*stats.get(aid, (0, 0.0))) for aid, kind in kinds.items()}
    with store.write() as db:
        db.conn.executemany(
            "UPDATE annotators SET reliability = ? WHERE id = ?", [(v, aid) for aid, v in values.items()]
        )
    return values


def _argmax(scores: dict[str, float]) -> str | None:
    best = max(scores.values(), default=0.0)
    if best <= 0:
        return None
    return next(name for name in LABELS if scores[name] == best)


def aggregate_clip(
    clip_id: str,
    votes: list[tuple[str, list[str], bool]],
    reliabilities: dict[str, float],
    predicted_label: str | None = None,
    gold: str | None = None,
    weights: dict[str, float] | None = None,
) -> ClipLabel:
    """Aggregate one clip's votes, each (annotator_id, labels, unsure).

    weights: each annotator's vote weight (annotator_weights); without it, vote_weight of the reliability."""
    counts = dict.fromkeys(LABELS, 0.0)
    weighted = dict.fromkeys(LABELS, 0.0)
    for annotator_id, labels, unsure in votes:
        scale = UNSURE_WEIGHT if unsure else 1.0
        w = weights.get(annotator_id, 0.0) if weights is not None else vote_weight(reliabilities.get(annotator_id, 0.5))
        for label in labels:
            counts[label] += scale / len(labels)
            weighted[label] += scale * w / len(labels)
    total = sum(counts.values())
    majority = _argmax(counts)
    annotators = [a for a, _, _ in votes]
    return ClipLabel(
        clip_id=clip_id,
        majority=majority,
        soft={k: (v / total if total else 0.0) for k, v in counts.items()},
        weighted=_argmax(weighted) or majority,
        n_votes=len(votes),
        predicted_label=predicted_label,
        annotators=annotators,
        weight=sum(reliabilities.get(a, 0.5) for a in annotators) / len(annotators) if annotators else 0.0,
        gold=gold,
    )


_CLIPS = """
SELECT c.id, c.gold_label,
    (SELECT p.top_label FROM predictions p WHERE p.clip_id = c.id ORDER BY p.id DESC LIMIT 1) AS predicted
FROM clips c ORDER BY c.created, c.id
"""


def aggregate_labels(store: Store, min_votes: int = 1) -> list[ClipLabel]:
    """Every clip with at least `min_votes` votes, and every gold clip, aggregated (reliability refreshed)."""
    reliabilities = update_reliability(store)
    votes = load_votes(store)
    gold_weights = annotator_weights(store, reliabilities)
    weights = combined_weights(gold_weights, consensus_weights(store, votes, gold_weights))
    out = []
    for clip in store.db.query(_CLIPS):
        clip_votes = votes.get(clip["id"], [])
        if len(clip_votes) < min_votes and clip["gold_label"] is None:
            continue
        out.append(
            aggregate_clip(clip["id"], clip_votes, reliabilities, clip["predicted"], clip["gold_label"], weights)
        )
    return out


def wilson_interval(successes: int, n: int, z: float = AUDIT_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (two-sided; z 1.645: 90%): honest at small n and near 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def gold_audit(labels: list[ClipLabel]) -> dict:
    """The crowd's labels checked against gold: on every gold clip that also has votes, does the label the crowd
    gives it (the reliability-weighted vote, what training would use without the gold mark) match the gold label?
    A canary for poisoned or broken aggregation that no model comparison can see when the held-out labels come
    from the same crowd (train.gate refuses to promote below a floor). ci_low/ci_high: its 90% Wilson interval,
    so a reader sees how little ~40 gold clips can tell apart (bench/adapt_ased.py --audit-only: poisoned stores
    at 86-89% right passed a 90% floor on 1 seed in 6 with ~40 gold clips, on none with ~100)."""
    pairs = [(c.weighted, c.gold) for c in labels if c.gold and c.n_votes > 0]
    agree = sum(crowd == gold for crowd, gold in pairs)
    if not pairs:
        return {"n": 0, "agree": 0, "accuracy": None}
    low, high = wilson_interval(agree, len(pairs))
    return {"n": len(pairs), "agree": agree, "accuracy": agree / len(pairs), "ci_low": low, "ci_high": high}
