"""How much annotators agree: Krippendorff's alpha and Fleiss' kappa, overall and per class.

Both work from a units x categories count table (how many annotators gave each label to each clip).
Overall (nominal) figures use each vote's first label; per-class figures are one-vs-rest on
"this label is among the vote's labels". Alpha comes from the `krippendorff` package. Fleiss' kappa
is the formula of Fleiss (1971), generalised to a varying number of raters per unit (each unit's
pairwise agreement is averaged); with a constant number it is exactly Fleiss' kappa and reproduces
the published 10-subject example (kappa = 0.210). Undefined figures (one category only) are None.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import krippendorff
import numpy as np

from backend.labels import LABEL_TO_ID, LABELS

from .store import Store


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa of a (units, categories) count table; units with fewer than 2 ratings are ignored."""
    counts = np.asarray(counts, dtype=float)
    assert counts.ndim == 2, f"expected a (units, categories) table, got shape {counts.shape}"
    counts = counts[counts.sum(axis=1) >= 2]
    if len(counts) == 0:
        return None
    n = counts.sum(axis=1)
    p_unit = (counts * (counts - 1)).sum(axis=1) / (n * (n - 1))  # P_i
    p_cat = counts.sum(axis=0) / counts.sum()  # p_j
    p_bar, p_e = p_unit.mean(), float((p_cat**2).sum())
    if p_e >= 1.0:
        return None
    return float((p_bar - p_e) / (1.0 - p_e))


def krippendorff_alpha(counts: np.ndarray) -> float | None:
    """Nominal Krippendorff's alpha of a (units, categories) count table, via the krippendorff package."""
    counts = np.asarray(counts, dtype=float)
    assert counts.ndim == 2, f"expected a (units, categories) table, got shape {counts.shape}"
    counts = counts[counts.sum(axis=1) >= 2]  # a unit rated once has no pairs
    if len(counts) == 0 or np.count_nonzero(counts.sum(axis=0)) < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        value = krippendorff.alpha(value_counts=counts, level_of_measurement="nominal")
    return None if not np.isfinite(value) else float(value)


def _votes(store: Store) -> dict[str, list[tuple[str, list[str]]]]:
    """clip_id -> [(annotator_id, labels)] of current votes."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for r in store.db.query("SELECT clip_id, annotator_id, labels FROM votes ORDER BY id"):
        out.setdefault(r["clip_id"], []).append((r["annotator_id"], json.loads(r["labels"])))
    return out


def count_tables(votes: dict[str, list[tuple[str, list[str]]]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Overall (units, K) first-label counts and, per label, a (units, 2) not-this/this table."""
    units = list(votes)
    overall = np.zeros((len(units), len(LABELS)))
    per_class = {label: np.zeros((len(units), 2)) for label in LABELS}
    for i, clip in enumerate(units):
        for _, labels in votes[clip]:
            overall[i, LABEL_TO_ID[labels[0]]] += 1
            for label in LABELS:
                per_class[label][i, int(label in labels)] += 1
    return overall, per_class


def consensus_agreement(votes: dict[str, list[tuple[str, list[str]]]]) -> dict[str, tuple[int, float]]:
    """Per annotator: (clips shared with others, credit) for matching the others' majority first label.

    Leave-one-out, so an annotator is not compared with their own vote; a tie among the others'
    top labels gives 1/len(ties) credit to each of them.
    """
    out: dict[str, tuple[int, float]] = {}
    for clip_votes in votes.values():
        for annotator, labels in clip_votes:
            others = Counter(other[0] for a, other in clip_votes if a != annotator)
            if not others:
                continue
            best = max(others.values())
            tops = [label for label, n in others.items() if n == best]
            n, credit = out.get(annotator, (0, 0.0))
            out[annotator] = (n + 1, credit + (1.0 / len(tops) if labels[0] in tops else 0.0))
    return out


_ANNOTATORS = """
SELECT a.id, a.kind, a.reliability, COUNT(v.id) AS n_votes
FROM annotators a LEFT JOIN votes v ON v.annotator_id = a.id
GROUP BY a.id ORDER BY a.id
"""


def agreement_report(store: Store) -> dict[str, Any]:
    """Alpha and kappa overall and per class, and per annotator gold accuracy and consensus agreement."""
    votes = _votes(store)
    overall, per_class = count_tables(votes)
    gold = store.gold_stats()
    consensus = consensus_agreement(votes)
    annotators = {}
    for r in store.db.query(_ANNOTATORS):
        n_gold, credit = gold.get(r["id"], (0, 0.0))
        n_shared, agree = consensus.get(r["id"], (0, 0.0))
        annotators[r["id"]] = {
            "kind": r["kind"],
            "votes": r["n_votes"],
            "reliability": r["reliability"],
            "gold_seen": n_gold,
            "gold_accuracy": credit / n_gold if n_gold else None,
            "consensus_shared": n_shared,
            "consensus_agreement": agree / n_shared if n_shared else None,
        }
    return {
        "clips_rated_twice": int((overall.sum(axis=1) >= 2).sum()),
        "votes": int(overall.sum()),
        "alpha": krippendorff_alpha(overall),
        "fleiss_kappa": fleiss_kappa(overall),
        "per_class": {
            label: {
                "alpha": krippendorff_alpha(table),
                "fleiss_kappa": fleiss_kappa(table),
                "votes_with_label": int(table[:, 1].sum()),
            }
            for label, table in per_class.items()
        },
        "annotators": annotators,
    }
