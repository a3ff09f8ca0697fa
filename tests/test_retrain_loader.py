"""The retraining loop's data path: augmentation split between loader threads (CPU) and the device, and the
threads that build batches ahead of the step - same batches, same order, whatever the number of threads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from train import augment
from train.replay import ReplayPool
from train.retrain import RetrainConfig, RetrainData, host_batches
from train.retrain_step import prepare_batch, to_device


def test_noise_stays_inside_each_clip_at_the_drawn_snr() -> None:
    gen = torch.Generator().manual_seed(0)
    wave = torch.zeros(3, 1000)
    lengths = torch.tensor([1000, 600, 10])
    for row, n in zip(wave, lengths.tolist()):
        row[:n] = torch.sin(torch.arange(n) * 0.3)
    noisy = augment.add_noise(wave, generator=gen, lengths=lengths)
    assert torch.all(noisy[1, 600:] == 0) and torch.all(noisy[2, 10:] == 0)  # padding untouched
    for row, clean, n in zip(noisy, wave, lengths.tolist()):
        noise = (row - clean)[:n]
        snr = 10 * torch.log10(clean[:n].pow(2).mean() / noise.pow(2).mean())
        assert 5 < snr < 40, snr  # drawn in 10-35 dB; a short row's estimate wanders a little
    assert torch.equal(noisy, augment.add_noise(wave, torch.Generator().manual_seed(0), lengths))


def test_spec_augment_masks_bands_with_the_row_mean_and_is_seeded() -> None:
    mel = torch.randn(4, 80, 200)
    out = augment.spec_augment(mel, generator=torch.Generator().manual_seed(3))
    assert out.shape == mel.shape
    changed = out != mel
    fill = mel.mean(dim=(1, 2))
    for i in range(4):
        assert torch.allclose(out[i][changed[i]], fill[i].expand(int(changed[i].sum())))
        rows = changed[i].all(dim=1).sum().item()  # whole frequency bands masked
        cols = changed[i].all(dim=0).sum().item()  # whole time spans masked
        assert rows <= 2 * 12 and cols <= 2 * int(0.08 * 200)
    assert changed.any()
    assert torch.equal(out, augment.spec_augment(mel, generator=torch.Generator().manual_seed(3)))


def test_speed_and_shift_keep_clips_apart() -> None:
    clips = [np.random.default_rng(i).standard_normal(16_000 * (i + 1)).astype(np.float32) for i in range(3)]
    out = augment.speed_and_shift(clips, torch.Generator().manual_seed(0))
    for clip, wave in zip(clips, out):
        assert len(clip) / 1.1 - 1 <= len(wave) <= len(clip) / 0.9 + 1


@pytest.fixture(scope="module")
def data(shared_data: Path) -> RetrainData:
    pool = ReplayPool.load(shared_data, ("speech", "text", "face"), limit=12, seed=0)
    rng = np.random.default_rng(0)
    train = [*pool.sample("speech", 6, rng), *pool.sample("text", 6, rng), *pool.sample("face", 6, rng)]
    return RetrainData(train, [], ("speech", "text", "face"), pool)


def loop_with(data: RetrainData, workers: int) -> SimpleNamespace:
    config = RetrainConfig(db="unused.db", replay_per_batch=2, max_seconds=2.0, loader_workers=workers)
    accelerator = SimpleNamespace(process_index=0, device=torch.device("cpu"))
    return SimpleNamespace(config=config, accelerator=accelerator, data=data)


def test_loader_threads_give_the_same_batches_in_the_same_order(data: RetrainData) -> None:
    batches = [torch.tensor(b) for b in ([0, 6, 12], [1, 7, 13], [2, 3, 14], [4, 5, 15], [8, 9, 16], [10, 11, 17])]
    inline = list(host_batches(loop_with(data, 0), batches, step=40))
    threaded = list(host_batches(loop_with(data, 3), batches, step=40))
    assert len(inline) == len(threaded) == 6
    for a, b in zip(inline, threaded):
        assert a.seed == b.seed and a.text == b.text
        assert torch.equal(a.speech, b.speech) and torch.equal(a.lengths, b.lengths) and torch.equal(a.face, b.face)
        assert all(torch.equal(a.targets[m].target, b.targets[m].target) for m in a.targets)
    assert len({b.seed for b in inline}) == 6  # each step draws its own augmentation


def test_a_failing_batch_surfaces_in_the_loop(data: RetrainData) -> None:
    batches = [torch.tensor([0, 1]), torch.tensor([999])]  # no item 999
    with pytest.raises(IndexError):
        list(host_batches(loop_with(data, 2), batches, step=0))


def test_device_half_adds_noise_and_masks_only_when_training(data: RetrainData) -> None:
    rows = data.train[:6]
    train = prepare_batch(rows, ("speech",), seed=5, max_seconds=2.0)
    inputs, targets = to_device(train, torch.device("cpu"))
    assert "mel_transform" in inputs and len(inputs["speech"]) == 6 == len(targets["speech"].owner)
    assert [len(w) for w in inputs["speech"]] == train.lengths.tolist()
    assert not torch.equal(inputs["speech"][0], train.speech[0, : train.lengths[0]])  # noise added
    plain = prepare_batch(rows, ("speech",))
    inputs, _ = to_device(plain, torch.device("cpu"))
    assert "mel_transform" not in inputs
    assert np.array_equal(inputs["speech"][0].numpy(), rows[0].audio[: 30 * 16_000])
