"""Evaluation math checked against confusion matrices worked out by hand (and sklearn as a cross-check)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics  # a cross-check only; library code does not use sklearn

from backend.labels import LABELS
from train.metrics import classification_report, expected_calibration_error, plot_confusion

# Three classes a, b, c; rows = true, columns = predicted:
#
#          a  b  c | support  recall      precision   F1 = 2TP / (2TP + FP + FN)
#     a    3  1  0 |   4      3/4         3/4         6/8  = 3/4
#     b    1  2  0 |   3      2/3         2/4         4/7
#     c    0  1  2 |   3      2/3         2/2         4/5
#
# n = 10, accuracy = (3+2+2)/10 = 0.7
# UAR         = (3/4 + 2/3 + 2/3) / 3         = 25/36  = 0.694444...
# macro-F1    = (3/4 + 4/7 + 4/5) / 3         = 99/140 = 0.707142...
# weighted-F1 = (4*3/4 + 3*4/7 + 3*4/5) / 10  = 249/350 = 0.711428...
THREE = ("a", "b", "c")
TRUE_3 = ["a"] * 4 + ["b"] * 3 + ["c"] * 3
PRED_3 = ["a", "a", "a", "b", "a", "b", "b", "b", "c", "c"]  # rows a | b | c of the table above


def test_three_class_hand_example():
    r = classification_report(TRUE_3, PRED_3, THREE)
    assert r["n"] == 10
    assert r["confusion"] == {"labels": ["a", "b", "c"], "matrix": [[3, 1, 0], [1, 2, 0], [0, 1, 2]]}
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["uar"] == pytest.approx(25 / 36)
    assert r["macro_f1"] == pytest.approx(99 / 140)
    assert r["weighted_f1"] == pytest.approx(249 / 350)
    assert r["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert r["per_class"]["c"]["precision"] == 1.0
    assert r["classes_present"] == ["a", "b", "c"]


def test_ids_and_names_give_the_same_report():
    ids = {name: i for i, name in enumerate(THREE)}
    by_id = classification_report([ids[t] for t in TRUE_3], np.array([ids[p] for p in PRED_3]), THREE)
    assert by_id == classification_report(TRUE_3, PRED_3, THREE)


# Four classes; c is absent and never predicted, d is absent but predicted once:
#
#          a  b  c  d | support
#     a    1  0  0  1 |   2      recall 1/2, F1 = 2/(2+0+1) = 2/3
#     b    0  2  0  0 |   2      recall 1,   F1 = 4/4 = 1
#     c    0  0  0  0 |   0      recall, precision, F1 undefined (None)
#     d    0  0  0  0 |   0      recall None, precision 0/1 = 0, F1 = 0/(0+1+0) = 0
#
# accuracy 3/4; UAR over present {a, b} = (1/2 + 1)/2 = 3/4; macro-F1 = (2/3 + 1)/2 = 5/6;
# weighted-F1 = (2*2/3 + 2*1)/4 = 5/6.
def test_absent_classes_are_left_out_of_uar_and_macro_f1():
    r = classification_report(["a", "a", "b", "b"], ["a", "d", "b", "b"], ("a", "b", "c", "d"))
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["uar"] == pytest.approx(0.75)
    assert r["macro_f1"] == pytest.approx(5 / 6)
    assert r["weighted_f1"] == pytest.approx(5 / 6)
    assert r["classes_present"] == ["a", "b"]
    assert r["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    assert r["confusion"]["matrix"][0] == [1, 0, 0, 1]  # the prediction of an absent class is still counted


def test_present_class_never_predicted_has_no_precision_and_zero_f1():
    r = classification_report(["a", "b"], ["a", "a"], ("a", "b"))
    assert r["per_class"]["b"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["uar"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)  # a: 2/(2+1+0)


def test_default_labels_are_the_taxonomy():
    r = classification_report(["neutral", "happy"], ["neutral", "sad"])
    assert r["confusion"]["labels"] == list(LABELS)
    assert len(r["confusion"]["matrix"]) == len(LABELS)
    assert r["per_class"]["sad"]["support"] == 0 and r["per_class"]["sad"]["precision"] == 0.0


def test_agrees_with_sklearn_on_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(20):
        k = len(LABELS)
        y = rng.choice(k - 2, size=60) if trial % 2 else rng.integers(0, k, size=60)  # some sets lack 2 classes
        p = np.where(rng.random(60) < 0.5, y, rng.integers(0, k, size=60))
        r = classification_report(y, p)
        present = sorted(set(y.tolist()))
        assert r["accuracy"] == pytest.approx(metrics.accuracy_score(y, p))
        assert r["uar"] == pytest.approx(metrics.recall_score(y, p, labels=present, average="macro"))
        assert r["macro_f1"] == pytest.approx(metrics.f1_score(y, p, labels=present, average="macro"))
        assert r["weighted_f1"] == pytest.approx(metrics.f1_score(y, p, average="weighted"))
        assert r["confusion"]["matrix"] == metrics.confusion_matrix(y, p, labels=range(k)).tolist()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [])
    with pytest.raises(ValueError, match="differ in length"):
        classification_report([0, 1], [0])
    with pytest.raises(ValueError, match="calm"):
        classification_report(["calm"], ["neutral"])
    with pytest.raises(ValueError, match="label ids"):
        classification_report([7], [0])


# ECE with 5 bins of width 0.2, bins are (lo, hi]:
#   sample  probs               conf  pred  true  correct  bin
#   1       (0.90, 0.10, 0)     0.90  0     0     1        (0.8, 1.0]
#   2       (0.30, 0.70, 0)     0.70  1     0     0        (0.6, 0.8]
#   3       (0.95, 0.05, 0)     0.95  0     0     1        (0.8, 1.0]
#   4       (0.25, 0.50, 0.25)  0.50  1     1     1        (0.4, 0.6]
# (0.8, 1.0]: 2/4 * |1 - 0.925| = 0.0375;  (0.6, 0.8]: 1/4 * |0 - 0.7| = 0.175;  (0.4, 0.6]: 1/4 * |1 - 0.5| = 0.125
# ECE = 0.3375
def test_ece_hand_example():
    probs = np.array([[0.9, 0.1, 0.0], [0.3, 0.7, 0.0], [0.95, 0.05, 0.0], [0.25, 0.5, 0.25]])
    assert expected_calibration_error(probs, [0, 0, 0, 1], n_bins=5) == pytest.approx(0.3375)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 predictions at confidence 0.8, 8 of them right: one bin, |0.8 - 0.8| = 0.
    probs = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(probs, [0] * 8 + [1] * 2) == pytest.approx(0.0)
    # Confidence 1.0 and always wrong: the worst case, ECE = 1.
    assert expected_calibration_error(np.tile([1.0, 0.0], (3, 1)), [1, 1, 1]) == pytest.approx(1.0)


def test_plot_confusion_writes_a_png(tmp_path):
    r = classification_report(TRUE_3, PRED_3, THREE)
    path = plot_confusion(r, tmp_path / "sub" / "cm.png", title="hand example")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
