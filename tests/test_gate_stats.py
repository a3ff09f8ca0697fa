"""The gate's statistics on answers known in closed form: exact McNemar, Holm, the paired bootstrap, margins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train import gate_stats
from train.metrics import classification_report


def test_mcnemar_exact_matches_the_binomial_closed_form() -> None:
    # discordant pairs b=1 (champion only right), c=9 (challenger only right): 2 * P(X <= 1 | n=10, 1/2) = 22/1024
    result = gate_stats.mcnemar_exact(1, 9)
    assert result["p_two_sided"] == pytest.approx(22 / 1024)
    assert result["p_one_sided"] == pytest.approx(11 / 1024)
    # b=5, c=15: 2 * P(X <= 5 | n=20, 1/2) = 0.0414 (scipy.stats.binomtest(15, 20) gives the same)
    assert gate_stats.mcnemar_exact(5, 15)["p_two_sided"] == pytest.approx(0.041389, abs=1e-6)
    assert gate_stats.mcnemar_exact(0, 0)["p_two_sided"] == 1.0
    assert gate_stats.mcnemar_exact(9, 1)["p_one_sided"] == pytest.approx(1 - 1 / 1024)


def test_holm_steps_down_and_stops_at_the_first_failure() -> None:
    assert gate_stats.holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    assert gate_stats.holm([0.01, 0.02, 0.03], 0.05) == [True, True, True]  # 0.01<=.0167, .02<=.025, .03<=.05
    assert gate_stats.holm([0.02, 0.02], 0.03) == [False, False]  # 0.02 > 0.03 / 2


def test_metrics_of_the_bootstrap_agree_with_the_report() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)  # two classes absent: left out of UAR and macro-F1 as in the report
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, 300))
    report = classification_report(y, pred)
    for metric in gate_stats.METRICS:
        assert gate_stats.metric_value(y, pred, metric) == pytest.approx(report[metric])


def test_paired_bootstrap_degenerate_cases() -> None:
    y = np.arange(40) % 7
    same = gate_stats.paired_bootstrap(y, y, y, n_boot=200)
    assert np.all(same == 0) and gate_stats.p_at_most(same, 0.0) == 1.0
    wrong = (y + 1) % 7
    better = gate_stats.paired_bootstrap(y, wrong, y, n_boot=200)
    assert np.all(better == 1.0) and gate_stats.lower_bound(better, 0.05) == 1.0
    assert gate_stats.p_at_most(better, 0.0) == pytest.approx(1 / 201)


def test_paired_bootstrap_spread_matches_the_paired_standard_error() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 7, n)
    a_right, b_right = rng.random(n) < 0.6, rng.random(n) < 0.7
    a, b = np.where(a_right, y, (y + 1) % 7), np.where(b_right, y, (y + 2) % 7)
    d = b_right.astype(float) - a_right.astype(float)
    deltas = gate_stats.paired_bootstrap(y, a, b, n_boot=4000, seed=3)
    assert deltas.mean() == pytest.approx(d.mean(), abs=0.005)
    assert deltas.std() == pytest.approx(d.std() / math.sqrt(n), rel=0.1)


def test_noninferiority_margin_follows_the_set_size() -> None:
    assert gate_stats.noninferiority_margin(240) == pytest.approx(0.5 / math.sqrt(240))  # 0.032
    assert gate_stats.noninferiority_margin(1000) == pytest.approx(0.0158, abs=1e-4)
    assert gate_stats.noninferiority_margin(10**7) == 0.01 and gate_stats.noninferiority_margin(0) == 0.01
