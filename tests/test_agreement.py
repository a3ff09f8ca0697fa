"""Agreement figures against published worked examples."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest

from backend.labels import LABELS
from labeling import Store, agreement_report
from labeling.agreement import consensus_agreement, count_tables, fleiss_kappa, krippendorff_alpha

# Fleiss (1971) as worked on Wikipedia "Fleiss' kappa": 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 coders x 12 units; None = missing.
KRIPPENDORFF_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def krippendorff_counts() -> np.ndarray:
    counts = np.zeros((12, 5))
    for coder in KRIPPENDORFF_DATA:
        for unit, value in enumerate(coder):
            if value is not None:
                counts[unit, value - 1] += 1
    return counts


def test_fleiss_kappa_reproduces_the_published_example():
    assert fleiss_kappa(np.array(FLEISS_TABLE)) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_edge_cases():
    assert fleiss_kappa(np.array([[3, 0], [0, 3]])) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[3, 0], [3, 0]])) is None  # one category only: undefined
    assert fleiss_kappa(np.array([[1, 0]])) is None  # nobody rated twice


def test_fleiss_kappa_with_varying_raters_averages_unit_agreement():
    # Units with 2 and 3 raters: P_i = 1 and 1/3; p = (3/5, 2/5); P_e = 13/25.
    kappa = fleiss_kappa(np.array([[2, 0], [1, 2]]))
    assert kappa == pytest.approx(((1 + 1 / 3) / 2 - 13 / 25) / (1 - 13 / 25))


def test_krippendorff_alpha_reproduces_the_published_example():
    assert krippendorff_alpha(krippendorff_counts()) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_undefined_is_none():
    assert krippendorff_alpha(np.array([[2, 0], [3, 0]])) is None
    assert krippendorff_alpha(np.zeros((0, 7))) is None


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "studio.db", k=4, gold_rate=0.0, synchronous="NORMAL")
    yield s
    s.close()


def fill_krippendorff_example(store: Store) -> list[str]:
    clips = [store.add_clip(f"unit{u}".encode(), modalities=["speech"], consent=True) for u in range(12)]
    for c, coder in enumerate(KRIPPENDORFF_DATA):
        for unit, value in enumerate(coder):
            if value is not None:
                store.vote(clips[unit], f"coder{c}", [LABELS[value - 1]])
    return clips


def test_report_from_the_store_matches_the_published_alpha(store):
    fill_krippendorff_example(store)
    report = agreement_report(store)
    assert report["alpha"] == pytest.approx(0.743, abs=5e-4)
    assert report["clips_rated_twice"] == 11 and report["votes"] == 41
    assert report["fleiss_kappa"] is not None and -1 <= report["fleiss_kappa"] <= 1
    assert set(report["annotators"]) == {"coder0", "coder1", "coder2", "coder3"}
    assert report["annotators"]["coder3"]["votes"] == 11


def test_per_class_figures_are_one_vs_rest(store):
    fill_krippendorff_example(store)
    report = agreement_report(store)
    # The same one-vs-rest question asked of the package directly, from coder x unit data.
    label = LABELS[1]  # value 2 in the example
    binary = [[np.nan if v is None else float(v == 2) for v in coder] for coder in KRIPPENDORFF_DATA]
    expected = krippendorff.alpha(reliability_data=binary, level_of_measurement="nominal")
    assert report["per_class"][label]["alpha"] == pytest.approx(expected)
    assert report["per_class"][label]["votes_with_label"] == 13
    assert report["per_class"][LABELS[6]]["alpha"] is None  # 'surprised' never used


def test_count_tables_use_first_label_overall_and_membership_per_class():
    overall, per_class = count_tables({"c": [("a", ["sad", "happy"]), ("b", ["happy"])]})
    assert overall[0].tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert per_class["happy"][0].tolist() == [0, 2]
    assert per_class["sad"][0].tolist() == [1, 1]


def test_consensus_agreement_is_leave_one_out():
    votes = {
        "c1": [("a", ["sad"]), ("b", ["sad"]), ("spam", ["happy"])],
        "c2": [("a", ["angry"]), ("b", ["angry"]), ("spam", ["happy"])],
        "c3": [("a", ["sad"]), ("b", ["happy"])],
    }
    result = consensus_agreement(votes)
    assert result["spam"] == (2, 0.0)
    assert result["a"] == (3, 1.0)  # c1, c2: others tie (sad/happy, angry/happy) -> 1/2 each; c3: 0


def test_gold_accuracy_in_report(store):
    gold = store.add_clip(b"g", modalities=["speech"], consent=True)
    store.add_gold(gold, "sad")
    store.vote(gold, "right", ["sad"])
    store.vote(gold, "wrong", ["happy"])
    annotators = agreement_report(store)["annotators"]
    assert annotators["right"]["gold_accuracy"] == 1.0
    assert annotators["wrong"]["gold_accuracy"] == 0.0
    assert annotators["right"]["consensus_agreement"] == 0.0
