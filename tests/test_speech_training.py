"""The pieces of multi-corpus speech training: absent classes masked, balanced sampling, channel simulation,
loudness normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.labels import LABELS, label_id
from backend.speech import LOUDNESS_TARGET_DBFS, normalize_loudness
from train import augment, conditions
from train.corpora import ASED_LABELS, Example
from train.fit_speech import allowed_classes, balanced_weights, masked_cross_entropy


def _ex(corpus: str, label: str) -> Example:
    meta = {"corpus": corpus}
    if corpus == "ased":
        meta["corpus_labels"] = ASED_LABELS
    return Example("speech", label_id(label), path=Path("x.flac"), meta=meta)


def test_absent_classes_get_no_gradient_from_a_corpus_without_them():
    examples = [_ex("ased", "happy"), _ex("ravdess", "happy")]
    allowed = allowed_classes(examples)
    assert allowed[0].sum() == 5 and not allowed[0, LABELS.index("disgust")] and allowed[1].all()
    logits = torch.zeros(2, len(LABELS), requires_grad=True)
    masked_cross_entropy(logits, torch.tensor([e.label for e in examples]), allowed, smoothing=0.1).backward()
    grad = logits.grad
    for absent in ("disgust", "surprised"):
        assert grad[0, LABELS.index(absent)] == 0  # ASED never says "disgust does not happen"
        assert grad[1, LABELS.index(absent)] > 0  # RAVDESS, which has it, does push it down for a happy clip


def test_masked_cross_entropy_equals_plain_cross_entropy_when_all_classes_are_allowed():
    logits, labels = torch.randn(6, 7), torch.randint(0, 7, (6,))
    full = torch.ones(6, 7, dtype=torch.bool)
    want = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    assert torch.allclose(masked_cross_entropy(logits, labels, full, smoothing=0.2), want, atol=1e-6)


def test_balanced_sampling_gives_corpora_and_classes_equal_shares():
    examples = [_ex("ravdess", "neutral")] * 90 + [_ex("ravdess", "angry")] * 10 + [_ex("ased", "sad")] * 5
    w = balanced_weights(examples)
    share = {
        key: float(w[[i for i, e in enumerate(examples) if (e.meta["corpus"], e.label_name) == key]].sum())
        for key in {("ravdess", "neutral"), ("ravdess", "angry"), ("ased", "sad")}
    }
    assert share[("ased", "sad")] == pytest.approx(0.5)
    assert share[("ravdess", "neutral")] == pytest.approx(0.25) == share[("ravdess", "angry")]


def test_loudness_normalisation_removes_the_microphone_level_and_keeps_padding_silent():
    rng = np.random.default_rng(0)
    speech = torch.from_numpy(rng.standard_normal(16_000).astype(np.float32)) * 0.1
    wave = torch.zeros(3, 24_000)
    wave[0, :16_000], wave[1, :16_000], wave[2, :8_000] = speech, speech * 0.05, speech[:8_000] * 3
    out = normalize_loudness(wave, torch.tensor([16_000, 16_000, 8_000]))
    assert torch.allclose(out[0], out[1], atol=1e-4)  # 26 dB quieter microphone, same input to the encoder
    level = 10 * torch.log10(out[0, :16_000].pow(2).mean())
    assert abs(float(level) - LOUDNESS_TARGET_DBFS) < 1.0 or out[0].abs().max() == pytest.approx(1.0, abs=1e-4)
    assert out[2, 8_000:].abs().max() == 0 and out.abs().max() <= 1.0 + 1e-6
    silent = normalize_loudness(torch.zeros(1, 1000), torch.tensor([1000]))
    assert silent.abs().max() == 0 and torch.isfinite(silent).all()


def test_channel_simulation_changes_only_the_rows_it_picks_and_keeps_padding():
    torch.manual_seed(0)
    wave = torch.randn(16, 20_000) * 0.1
    lengths = torch.tensor([20_000, 12_000] * 8)
    wave[1::2, 12_000:] = 0
    none = augment.real_conditions(
        wave, lengths, torch.Generator().manual_seed(0), dict.fromkeys(augment.CONDITION_PROBS, 0.0)
    )
    assert torch.equal(none, wave)
    every = augment.real_conditions(
        wave, lengths, torch.Generator().manual_seed(0), dict.fromkeys(augment.CONDITION_PROBS, 1.0)
    )
    assert torch.isfinite(every).all() and every.abs().max() <= 1.0 and (every[1::2, 12_000:] == 0).all()
    assert not torch.allclose(every, wave, atol=1e-3)


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_background_noise_lands_at_the_asked_snr(snr):
    torch.manual_seed(0)
    wave = torch.randn(4, 32_000) * 0.05
    lengths = torch.full((4,), 32_000)
    for kind in ("white", "pink", "brown", "babble"):
        noisy = augment.background_noise(wave, lengths, torch.full((4,), snr), kind)
        measured = 10 * torch.log10(wave.pow(2).mean(1) / (noisy - wave).pow(2).mean(1))
        assert torch.allclose(measured, torch.full((4,), snr), atol=0.5), (kind, measured)


def test_telephone_band_removes_low_and_high_frequencies():
    t = torch.arange(16_000) / 16_000
    low, mid, high = (torch.sin(2 * torch.pi * f * t) * 0.3 for f in (100.0, 1000.0, 6000.0))
    out = augment.telephone_band(torch.stack([low, mid, high]), torch.full((3,), 16_000))
    energy = out.pow(2).mean(1) / torch.stack([low, mid, high]).pow(2).mean(1)
    assert energy[1] > 0.8 and energy[0] < 0.05 and energy[2] < 0.05


def test_every_fixed_condition_keeps_clip_lengths_and_is_repeatable():
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.05 for n in (8_000, 20_000)]
    for name in conditions.WAVE_CONDITIONS:
        a, b = conditions.degrade(name, clips), conditions.degrade(name, clips)
        assert [len(x) for x in a] == [8_000, 20_000] and all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="paths"):
        conditions.degrade("opus_16kbps", clips)


def test_not_sure_threshold_is_where_the_clips_under_it_are_mostly_wrong():
    from train.speech_calibration import coverage_curve, pick_threshold

    rng = np.random.default_rng(0)
    top = rng.uniform(0.5, 0.95, 2000)  # the top class keeps the top probability
    labels = np.zeros(2000, dtype=int)
    right = rng.uniform(size=2000) < np.where(top < 0.55, 0.3, 0.9)  # right 30% below 0.55, 90% above
    probs = np.zeros((2000, 7))
    probs[np.arange(2000), np.where(right, 0, 1)] = top
    probs[np.arange(2000), np.where(right, 1, 0)] = 1 - top
    assert pick_threshold(probs, labels) == 0.55
    curve = {row["threshold"]: row for row in coverage_curve(probs, labels)}
    assert curve[0.55]["accuracy_answered"] > 0.85 > 0.4 > curve[0.55]["accuracy_not_sure"]


def test_train_speech_runs_end_to_end_on_both_corpora(tiny_backbones, shared_data, tmp_path):
    """A tiny backbone, four clips per corpus and split: the real loader, masked loss, channel simulation,
    selection, calibration and the files swap-speech reads."""
    import json

    from train.fit_speech import SpeechFitConfig, train_speech

    cfg = SpeechFitConfig(
        data=shared_data,
        out=tmp_path,
        cache=Path(tiny_backbones["cache"]),
        backbone=tiny_backbones["speech"],
        lora_rank=2,
        epochs=1,
        batch_size=4,
        limit=4,
        robustness=False,
    )
    summary = train_speech(cfg)
    assert set(summary["dev_sets"]) == {"ravdess", "ased"} and summary["dev_sets"]["ased"]["n"] == 4
    assert summary["calibration"]["temperature"] > 0 and summary["model_config"]["speech_loudness_norm"]
    saved = json.loads((tmp_path / "speech.json").read_text())
    assert saved["best_epoch"] == 0 and (tmp_path / "speech.safetensors").is_file()
    arrays = np.load(tmp_path / "speech_dev.npz")
    assert arrays["ased_emb"].shape[0] == 4 and arrays["train_emb_mean"].ndim == 1
