"""Paired tests for the promotion gate: exact McNemar, paired bootstrap of a metric difference, Holm's step-down
correction and a non-inferiority margin set from a dev set's size. Plain numpy/scipy-free functions.

Both models are scored on the same examples, so the comparison is paired: only the examples where they disagree
carry information, and a paired test is far more sensitive than comparing two accuracies as if independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "uar", "macro_f1")


def binom_tail_ge(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exact."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return math.fsum(math.comb(n, i) for i in range(k, n + 1)) / 2.0**n


def mcnemar_exact(b: int, c: int) -> dict:
    """Exact McNemar test on the discordant pairs of a paired 2x2 table.

    b: champion right, challenger wrong; c: champion wrong, challenger right. Under H0 (no difference) c is
    Binomial(b + c, 1/2). Returns the two-sided p (doubled smaller tail, at most 1) and the one-sided p for
    "challenger better" (P(X >= c)).
    """
    n = b + c
    one_sided = binom_tail_ge(c, n)
    two_sided = min(1.0, 2.0 * binom_tail_ge(max(b, c), n)) if n else 1.0
    return {"b": int(b), "c": int(c), "p_one_sided": one_sided, "p_two_sided": two_sided}


def _metric_batch(y: np.ndarray, pred: np.ndarray, metric: str, num_labels: int) -> np.ndarray:
    """metric of each row: y, pred (B, n) int -> (B,). UAR / macro-F1 skip classes absent from that row's y
    (as train.metrics.classification_report does)."""
    if metric == "accuracy":
        return (y == pred).mean(axis=1)
    k, rows = num_labels, y.shape[0]
    offset = (np.arange(rows) * k)[:, None]

    def counts(index: np.ndarray) -> np.ndarray:
        return np.bincount(index.ravel(), minlength=rows * k).reshape(rows, k).astype(np.float64)

    support, predicted, tp = counts(offset + y), counts(offset + pred), counts((offset + y)[y == pred])
    present = support > 0
    if metric == "uar":
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
        return recall.sum(axis=1) / present.sum(axis=1)
    if metric == "macro_f1":
        den = support + predicted
        f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
        return (f1 * present).sum(axis=1) / present.sum(axis=1)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def metric_value(y: Sequence[int], pred: Sequence[int], metric: str, num_labels: int = 7) -> float:
    """One metric on one set (the same numbers as train.metrics.classification_report)."""
    return float(_metric_batch(np.asarray(y)[None], np.asarray(pred)[None], metric, num_labels)[0])


def paired_bootstrap(
    y: Sequence[int],
    pred_a: Sequence[int],
    pred_b: Sequence[int],
    metric: str = "accuracy",
    n_boot: int = 2000,
    seed: int = 0,
    num_labels: int = 7,
) -> np.ndarray:
    """Bootstrap distribution (n_boot,) of metric(b) - metric(a), resampling examples with both models' answers
    kept together (the pairing)."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (y, pred_a, pred_b))
    assert y.shape == a.shape == b.shape and y.ndim == 1 and y.size, f"got {y.shape}, {a.shape}, {b.shape}"
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // y.size)  # bound memory: chunk x n indices at a time
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, y.size, size=(min(chunk, n_boot - start), y.size))
        yy = y[idx]
        out[start : start + len(idx)] = _metric_batch(yy, b[idx], metric, num_labels) - _metric_batch(
            yy, a[idx], metric, num_labels
        )
    return out


def lower_bound(deltas: np.ndarray, alpha: float) -> float:
    """One-sided (1 - alpha) percentile lower confidence bound of the difference."""
    return float(np.quantile(deltas, alpha))


def p_at_most(deltas: np.ndarray, threshold: float) -> float:
    """Bootstrap p-value of H0: difference <= threshold (the smallest alpha at which the percentile lower bound
    exceeds threshold), with the +1 correction so it is never 0."""
    return float((1 + np.count_nonzero(deltas <= threshold + 1e-12)) / (1 + deltas.size))


def holm(pvalues: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error rate alpha."""
    order = np.argsort(pvalues, kind="stable")
    m = len(order)
    reject = [False] * m
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


def noninferiority_margin(n: int, se_multiple: float = 1.0, floor: float = 0.01) -> float:
    """A dev set's margin: se_multiple standard errors of an accuracy at 0.5 on n examples (the largest SE a
    proportion can have), never below floor. n=240 -> 0.032, n=1000 -> 0.016."""
    if n <= 0:
        return floor
    return max(floor, se_multiple * 0.5 / math.sqrt(n))
