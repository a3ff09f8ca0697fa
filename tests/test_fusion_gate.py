"""FusionGate (product of calibrated experts with learned reliabilities): agreement, neutral words, missing
modalities, the weights it reports; and the combination data it is fitted on keeps fit and report rows apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.heads import FusionGate
from backend.labels import LABEL_TO_ID, LABELS, MODALITIES
from backend.settings import DEFAULT_MODEL_DIR
from train.fit_gate import load_gate
from train.fusion_combos import build_combos, split_masks
from train.fusion_data import BranchCache


def reading(label: str, p: float) -> torch.Tensor:
    rest = (1.0 - p) / (len(LABELS) - 1)
    return torch.tensor([[p if name == label else rest for name in LABELS]])


@pytest.fixture(scope="module")
def shipped() -> FusionGate:
    return load_gate(DEFAULT_MODEL_DIR).eval().requires_grad_(False)


def test_agreeing_modalities_are_surer_than_any_one(shipped: FusionGate) -> None:
    probs = {"speech": reading("sad", 0.6), "text": reading("sad", 0.5), "face": reading("sad", 0.4)}
    fused, weights = shipped(probs)
    assert LABELS[int(fused.argmax())] == "sad"
    assert float(fused[0, LABEL_TO_ID["sad"]]) > 0.6
    assert sum(float(w) for w in weights.values()) == pytest.approx(1.0)


def test_a_modality_alone_passes_through_unchanged(shipped: FusionGate) -> None:
    p = torch.softmax(torch.randn(4, len(LABELS)) * 3, -1)
    for m in MODALITIES:
        fused, weights = shipped({m: p})
        assert torch.allclose(fused, p) and torch.allclose(weights[m], torch.ones(4))


def test_missing_modalities_are_left_out(shipped: FusionGate) -> None:
    probs = torch.softmax(torch.randn(5, len(MODALITIES), len(LABELS)), -1)
    present = torch.tensor([[True, True, False]] * 5)
    a, wa = shipped.fuse(probs, present)
    probs[:, 2] = torch.softmax(torch.randn(5, len(LABELS)) * 5, -1)  # whatever sits in an absent row
    b, wb = shipped.fuse(probs, present)
    assert torch.allclose(a, b) and torch.allclose(wa, wb) and bool((wa[:, 2] == 0).all())
    dict_fused, dict_w = shipped({"speech": probs[:, 0], "text": probs[:, 1]})
    assert torch.allclose(dict_fused, a) and torch.allclose(dict_w["text"], wa[:, 1])


def test_neutral_words_do_not_drag_a_confident_voice(shipped: FusionGate) -> None:
    """The text branch's average reading of RAVDESS's own (neutral) sentences beside a confident angry voice."""
    voice = reading("angry", 0.85)
    words = torch.tensor([[0.63, 0.06, 0.03, 0.12, 0.05, 0.06, 0.05]])
    fused, _ = shipped({"speech": voice, "text": words})
    assert LABELS[int(fused.argmax())] == "angry"
    assert float(fused[0, LABEL_TO_ID["angry"]]) >= 0.5  # diluted from 0.85 (see the fusion table), never flipped
    assert float(fused[0, LABEL_TO_ID["neutral"]]) < 0.2


def test_the_issue_case_is_not_decided_by_the_voice_alone(shipped: FusionGate) -> None:
    """Angry voice 97%, happy face 92%, happy words 97%: two agreeing modalities must count."""
    fused, weights = shipped(
        {"speech": reading("angry", 0.97), "text": reading("happy", 0.97), "face": reading("happy", 0.92)}
    )
    assert LABELS[int(fused.argmax())] == "happy"
    assert max(float(w) for w in weights.values()) < 0.6 and min(float(w) for w in weights.values()) > 0.15


def test_fresh_gate_is_a_plain_product_of_experts() -> None:
    gate = FusionGate()
    a, b = reading("fearful", 0.5), reading("sad", 0.3)
    fused, weights = gate({"speech": a, "face": b})
    assert torch.allclose(fused, a * b / (a * b).sum(), atol=1e-6)
    assert weights["speech"].item() == pytest.approx(0.5)


def test_two_agreeing_modalities_outweigh_one_surer_one(shipped: FusionGate) -> None:
    """An 80% face does not outvote voice and words that agree at 80%."""
    fused, _ = shipped({"speech": reading("sad", 0.8), "text": reading("sad", 0.8), "face": reading("happy", 0.8)})
    assert LABELS[int(fused.argmax())] == "sad"


def synthetic_cache(seed: int = 0) -> BranchCache:
    rng = np.random.default_rng(seed)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % len(LABELS)
        logits = rng.normal(size=(n, len(LABELS)))
        logits[np.arange(n), y] += 2.0
        p = np.exp(logits)
        return (p / p.sum(1, keepdims=True)).astype(np.float32), y

    sp, sy = rows(56)
    tp, ty = rows(700)
    fp, fy = rows(700)
    return BranchCache(
        speech=sp,
        speech_y=sy,
        speech_group=np.repeat([17, 18, 19, 20], 14),
        asr_text=np.tile(np.eye(len(LABELS), dtype=np.float32)[:1] * 0.7 + 0.3 / 7, (56, 1)),
        transcript=np.array(["Kids are talking by the door."] * 56),
        text=tp,
        text_y=ty,
        text_group=rng.integers(0, 1000, 700),
        text_source=np.array(["goemotions"] * 700),
        face=fp,
        face_y=fy,
        face_group=rng.integers(0, 1000, 700),
    )


def test_fit_and_report_combinations_use_disjoint_rows() -> None:
    cache = synthetic_cache()
    fit, report = split_masks(cache, "fit"), split_masks(cache, "report")
    for m in MODALITIES:
        assert not (fit[m] & report[m]).any() and fit[m].any() and report[m].any()
    combos = build_combos(cache, "report", draws=2)
    assert set(cache.speech_group[combos.anchor]) == {19, 20}
    face_rows = {tuple(r) for r in cache.face[fit["face"]].round(6)}
    used = combos.probs[combos.present[:, 2], 2].round(6)
    assert not any(tuple(r) in face_rows for r in used)
    kinds = {k.split(":")[0] for k in combos.kind}
    assert kinds == {
        "agree",
        "ravdess-asr",
        "ravdess-asr+face",
        "neutral-words",
        "flat-words",
        "odd-one-out",
        "one-vs-one",
    }
    agree = combos.kind == "agree:speech+text+face"
    assert (combos.probs[agree].argmax(-1) == combos.y[agree, None]).mean() > 0.5


def test_cluster_bootstrap_resamples_whole_clips() -> None:
    from bench.fusion import cluster_ci

    clusters = np.repeat(np.arange(20), 5)
    fused = np.repeat(np.arange(20) % 2 == 0, 5)  # half the clips always right, half always wrong
    ci = cluster_ci({"fused": fused, "speech": np.zeros(100, bool)}, clusters)
    assert ci["fused"][0] < 0.5 < ci["fused"][1] and ci["speech"] == [0.0, 0.0]
    assert ci["fused-speech"] == ci["fused"]
    narrow = cluster_ci({"fused": fused}, np.arange(100))["fused"]  # rows as independent: narrower
    assert narrow[1] - narrow[0] < ci["fused"][1] - ci["fused"][0]
