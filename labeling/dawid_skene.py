"""Dawid-Skene: each annotator's confusion matrix and each clip's true-label posterior, estimated together by EM.

Why beside gold: gold items are few (about 10% of the queue), so a new annotator has answered only a handful, and
until then the gold-based weight knows little about them. Dawid-Skene reads *every* vote: an annotator who
systematically disagrees with the consensus (always one label, a fixed relabelling, random answers) shows it on
the non-gold clips too. Gold clips are clamped to their known label (not estimated), which anchors the consensus:
a coordinated group that is the majority on many clips still contradicts the gold labels.

Model (Dawid & Skene 1979): true class k ~ prior; annotator j gives label l with probability confusion[j][k, l];
votes are independent given the true class. A multi-label vote counts 1/len(labels) for each of its labels and
an unsure vote half. EM starts from `init` (e.g. the gold-weighted vote shares) or the plain vote shares; the
confusion rows get a small Dirichlet pseudo-count (favouring the diagonal) so sparse rows stay defined.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from backend.labels import LABELS

log = logging.getLogger(__name__)

UNSURE_WEIGHT = 0.5
DIAGONAL_PRIOR = 0.2  # pseudo-count on each confusion row's diagonal ...
OFF_PRIOR = 0.05  # ... and on each other cell: weak, so ~30 votes decide
MAX_ITER = 100
TOL = 1e-6

Vote = tuple[str, str, list[str], bool]  # (clip_id, annotator_id, labels, unsure)


@dataclass
class DawidSkene:
    """The fit: per-annotator confusion (rows: true label, columns: given label), class prior, clip posteriors."""

    annotators: list[str]
    clips: list[str]
    confusion: np.ndarray  # (A, K, K)
    prior: np.ndarray  # (K,)
    posterior: np.ndarray  # (C, K)
    agreement: np.ndarray  # (A,) posterior mass on the labels each annotator gave
    n_votes: np.ndarray  # (A,) votes (unsure ones counted at their weight)
    iterations: int

    def accuracy(self) -> dict[str, float]:
        """Laplace-smoothed expected accuracy against the posterior: (agreement + 1) / (votes + 2), the same form
        as the gold-based reliability, so an annotator with few votes sits near 0.5 and moves with evidence."""
        values = (self.agreement + 1.0) / (self.n_votes + 2.0)
        return {a: float(v) for a, v in zip(self.annotators, values)}

    def labels(self) -> dict[str, str]:
        """Each clip's most probable true label (ties: taxonomy order)."""
        return {c: LABELS[int(i)] for c, i in zip(self.clips, self.posterior.argmax(1))}

    def confusion_of(self, annotator: str) -> np.ndarray:
        return self.confusion[self.annotators.index(annotator)]


def _index(votes: list[Vote]) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Clips, annotators, and per (vote, label) entries: clip index, annotator index, label counts (V, K)."""
    clips = sorted({v[0] for v in votes})
    annotators = sorted({v[1] for v in votes})
    ci = {c: i for i, c in enumerate(clips)}
    ai = {a: i for i, a in enumerate(annotators)}
    k = {name: i for i, name in enumerate(LABELS)}
    counts = np.zeros((len(votes), len(LABELS)))
    for row, (_, _, labels, unsure) in enumerate(votes):
        scale = UNSURE_WEIGHT if unsure else 1.0
        for label in labels:
            counts[row, k[label]] += scale / len(labels)
    clip_idx = np.array([ci[v[0]] for v in votes], dtype=np.int64)
    ann_idx = np.array([ai[v[1]] for v in votes], dtype=np.int64)
    return clips, annotators, clip_idx, ann_idx, counts


def _clamp(posterior: np.ndarray, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
    posterior[gold_rows] = 0.0
    posterior[gold_rows, gold_cols] = 1.0
    return posterior


def _m_step(
    posterior: np.ndarray, clip_idx: np.ndarray, ann_idx: np.ndarray, counts: np.ndarray, n_ann: int
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrices and class prior from the current posteriors (with pseudo-counts)."""
    k = posterior.shape[1]
    pseudo = np.full((k, k), OFF_PRIOR) + np.eye(k) * (DIAGONAL_PRIOR - OFF_PRIOR)
    confusion = np.broadcast_to(pseudo, (n_ann, k, k)).copy()
    # for each vote: outer(posterior of its clip, its label counts), summed per annotator
    np.add.at(confusion, ann_idx, posterior[clip_idx][:, :, None] * counts[:, None, :])
    confusion /= confusion.sum(2, keepdims=True)
    prior = posterior.sum(0) + 1.0
    return confusion, prior / prior.sum()


def _e_step(
    confusion: np.ndarray, prior: np.ndarray, clip_idx: np.ndarray, ann_idx: np.ndarray, counts: np.ndarray, n: int
) -> np.ndarray:
    """Clip posteriors from the confusion matrices: log prior + sum over votes of counts . log confusion[true]."""
    log_lik = np.tile(np.log(prior), (n, 1))
    contrib = np.einsum("vl,vkl->vk", counts, np.log(confusion[ann_idx]))
    np.add.at(log_lik, clip_idx, contrib)
    log_lik -= log_lik.max(1, keepdims=True)
    post = np.exp(log_lik)
    return post / post.sum(1, keepdims=True)


def fit(
    votes: Iterable[Vote],
    gold: Mapping[str, str] | None = None,
    init: Mapping[str, np.ndarray] | None = None,
    max_iter: int = MAX_ITER,
) -> DawidSkene:
    """Run EM to convergence (or max_iter). gold: clip -> known label, clamped throughout. init: clip -> a
    distribution over LABELS to start from (missing clips start from their plain vote shares)."""
    votes = [v for v in votes if v[2]]
    gold = dict(gold or {})
    clips, annotators, clip_idx, ann_idx, counts = _index(votes)
    k = len(LABELS)
    posterior = np.zeros((len(clips), k))
    np.add.at(posterior, clip_idx, counts)
    for i, clip in enumerate(clips):
        if init is not None and clip in init and np.sum(init[clip]) > 0:
            posterior[i] = np.asarray(init[clip], dtype=float)
    posterior = (posterior + 1e-9) / (posterior + 1e-9).sum(1, keepdims=True)
    gold_rows = np.array([i for i, c in enumerate(clips) if c in gold], dtype=np.int64)
    gold_cols = np.array([LABELS.index(gold[clips[i]]) for i in gold_rows], dtype=np.int64)
    posterior = _clamp(posterior, gold_rows, gold_cols)
    confusion, prior = _m_step(posterior, clip_idx, ann_idx, counts, len(annotators))
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        new = _clamp(_e_step(confusion, prior, clip_idx, ann_idx, counts, len(clips)), gold_rows, gold_cols)
        confusion, prior = _m_step(new, clip_idx, ann_idx, counts, len(annotators))
        change = float(np.abs(new - posterior).max()) if len(clips) else 0.0
        posterior = new
        if change < TOL:
            break
    agreement = np.zeros(len(annotators))
    np.add.at(agreement, ann_idx, (posterior[clip_idx] * counts).sum(1))
    n_votes = np.zeros(len(annotators))
    np.add.at(n_votes, ann_idx, counts.sum(1))
    log.debug("Dawid-Skene: %d clips, %d annotators, %d iterations", len(clips), len(annotators), iterations)
    return DawidSkene(annotators, clips, confusion, prior, posterior, agreement, n_votes, iterations)
