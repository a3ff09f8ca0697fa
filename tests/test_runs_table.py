"""The Model tab's retraining history shows each decision's test, interval, McNemar p, dev checks, the crowd's
labels against gold and ECE."""

from __future__ import annotations

from backend import present


def test_runs_table_shows_the_gate_figures() -> None:
    metrics = {
        "superiority": {
            "n": 40,
            "delta": 0.15,
            "ci_low": 0.05,
            "ci_high": 0.25,
            "ci_level": 0.9,
            "mcnemar": {"b": 2, "c": 8, "p_one_sided": 0.0546875},
        },
        "checks": [
            {"set": "ravdess_dev", "metric": "accuracy", "delta": -0.01, "ci_low": -0.03, "margin": 0.032, "ok": True},
            {"set": "goemotions_dev", "metric": "accuracy", "delta": 0.0, "ci_low": 0.0, "margin": 0.016, "ok": True},
        ],
        "test": "paired bootstrap ...",
        "audit": {"n": 40, "agree": 38, "accuracy": 0.95, "min": 0.9, "min_n": 10},
        "training": {
            "calibration": {
                "branches": {
                    "speech": {"refit": True, "calibration_before": {"ece": 0.2}, "calibration_after": {"ece": 0.05}}
                }
            }
        },
    }
    runs = [
        {"started": "2026-12-01T10:00:00+00:00", "decision": "promoted", "reason": "better", "metrics": metrics},
        {"started": "2026-11-25T10:00:00+00:00", "decision": "rejected", "reason": "worse"},  # an older run
    ]
    table = present.runs_table(runs)
    first = table.iloc[0]
    assert first["held-out n"] == 40 and first["gain [CI]"] == "+0.150 [+0.050, +0.250] (90%)"
    assert first["McNemar p"] == 0.0547 and first["test"] == "paired bootstrap ..."
    assert first["dev checks"] == "2/2 ok; worst ravdess_dev accuracy -0.010 (margin 0.032)"
    assert first["ECE before->after"] == "speech 0.200->0.050"
    assert first["crowd vs gold"] == "38/40 (95%)" and table.iloc[1]["crowd vs gold"] == ""  # no interval recorded
    metrics["audit"] |= {"ci_low": 0.8597, "ci_high": 0.9833}
    assert present.runs_table(runs).iloc[0]["crowd vs gold"] == "38/40 (95%, 90% CI 86-98%)"
    assert table.iloc[1]["gain [CI]"] == "" and table.iloc[1]["decision"] == "rejected"
