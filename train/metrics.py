"""Classification metrics for emotion evaluation, in numpy: the same numbers the promotion gate reads.

Classes absent from a set (zero support) stay in the confusion matrix, since the model may still
predict them, but are left out of UAR and macro-F1: their recall is undefined, and counting them
as 0 or 1 would make scores on sets with different class coverage incomparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.labels import LABELS


def _as_ids(values: Sequence[int | str] | np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Label names or indices -> int array of indices into labels."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US" or arr.dtype == object:
        index = {name: i for i, name in enumerate(labels)}
        try:
            arr = np.array([index[str(v)] for v in arr], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"label {exc.args[0]!r} is not one of {list(labels)}") from None
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= len(labels)):
        raise ValueError(f"label ids must lie in [0, {len(labels)}), got {arr.min()}..{arr.max()}")
    return arr


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def classification_report(y_true, y_pred, labels: Sequence[str] = LABELS) -> dict:
    """Accuracy, UAR, macro/weighted F1, per-class scores and the labelled confusion matrix.

    y_true, y_pred: label indices or names, shape (N,). Undefined per-class values (a class
    never predicted has no precision; an absent class has no recall) are None.
    """
    labels = list(labels)
    t, p = _as_ids(y_true, labels), _as_ids(y_pred, labels)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise ValueError("cannot score an empty set")
    matrix = confusion_matrix(t, p, len(labels))
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class = {}
    f1 = np.zeros(len(labels))
    for i, name in enumerate(labels):
        fp, fn = predicted[i] - tp[i], support[i] - tp[i]
        f1_i = _ratio(2 * tp[i], 2 * tp[i] + fp + fn)  # = harmonic mean of P and R where both exist
        f1[i] = f1_i or 0.0
        per_class[name] = {
            "precision": _ratio(tp[i], predicted[i]),
            "recall": _ratio(tp[i], support[i]),
            "f1": f1_i,
            "support": int(support[i]),
        }
    present = support > 0
    recall = tp[present] / support[present]
    n = int(t.size)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "uar": float(recall.mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / n),
        "classes_present": [name for name, keep in zip(labels, present) if keep],
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
    }


def expected_calibration_error(probs: np.ndarray, y_true, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (lo, hi]: sum over bins of |B|/N * |accuracy - confidence|.

    probs: (N, C) class probabilities; y_true: (N,) class indices.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    assert probs.ndim == 2 and probs.shape[0] == y.size, f"expected probs (N, C) with N={y.size}, got {probs.shape}"
    if y.size == 0:
        raise ValueError("cannot compute ECE of an empty set")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        mask = bins == b
        ece += mask.sum() / y.size * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def plot_confusion(report: dict, path: Path | str, title: str | None = None) -> Path:
    """Write the report's confusion matrix as a PNG: counts in the cells, colour = row-normalised recall."""
    from matplotlib.figure import Figure  # local import: matplotlib is slow to import, Figure needs no pyplot

    labels = report["confusion"]["labels"]
    matrix = np.asarray(report["confusion"]["matrix"])
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = 1.2 + 0.75 * len(labels)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    summary = f"n={report['n']}  acc={report['accuracy']:.3f}  UAR={report['uar']:.3f}  F1={report['macro_f1']:.3f}"
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
