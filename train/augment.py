"""Augmentation from the seed article: noise, time shift, speed, SpecAugment masks; and face image jitter.

All functions work on batched tensors on any device, so they run on the GPU next to the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NOISE_SNR_DB = (10.0, 35.0)  # white noise at a random SNR per clip
SHIFT_SECONDS = 0.25  # random circular time shift up to this much
SPEED_RANGE = (0.9, 1.1)  # resampling factor (changes tempo and pitch together)
SAMPLE_RATE = 16_000


def add_noise(wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """wave (B, N) -> wave + white noise at a random SNR per row."""
    lo, hi = NOISE_SNR_DB
    snr = lo + (hi - lo) * torch.rand(wave.shape[0], 1, device=wave.device, generator=generator)
    power = wave.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    noise = torch.randn(wave.shape, device=wave.device, generator=generator)
    return wave + noise * torch.sqrt(power / 10 ** (snr / 10))


def time_shift(wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Circularly shift each row by up to SHIFT_SECONDS (the silence around speech absorbs the wrap)."""
    limit = int(SHIFT_SECONDS * SAMPLE_RATE)
    shifts = torch.randint(-limit, limit + 1, (wave.shape[0],), generator=generator, device="cpu").tolist()
    return torch.stack([torch.roll(row, s) for row, s in zip(wave, shifts)])


def change_speed(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """wave (N,) played `factor` times faster (linear interpolation)."""
    n = max(1, round(wave.shape[-1] / factor))
    return F.interpolate(wave.view(1, 1, -1), size=n, mode="linear", align_corners=False).view(-1)


def random_speed(waves: list[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    lo, hi = SPEED_RANGE
    factors = (lo + (hi - lo) * torch.rand(len(waves), generator=generator)).tolist()
    return [change_speed(w, f) for w, f in zip(waves, factors)]


def spec_augment(
    mel: torch.Tensor,
    freq_masks: int = 2,
    freq_width: int = 12,
    time_masks: int = 2,
    time_frac: float = 0.08,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment on log-mel (B, n_mels, T): zero-mean-ish masks filled with each row's mean."""
    out = mel.clone()
    b, n_mels, t = out.shape
    fill = out.mean(dim=(1, 2))
    for i in range(b):
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
            f0 = int(torch.randint(0, max(1, n_mels - w), (1,), generator=generator))
            out[i, f0 : f0 + w, :] = fill[i]
        for _ in range(time_masks):
            w = int(torch.randint(0, max(1, int(time_frac * t)) + 1, (1,), generator=generator))
            t0 = int(torch.randint(0, max(1, t - w), (1,), generator=generator))
            out[i, :, t0 : t0 + w] = fill[i]
    return out


def augment_faces(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, 1, H, W) in [0, 1] -> flipped, rotated/scaled/shifted, contrast-jittered, randomly erased."""
    b, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

    flip = (rand(b) < 0.5).float() * 2 - 1
    angle = (rand(b) - 0.5) * 2 * math.radians(12)
    scale = 1 + (rand(b) - 0.5) * 0.2
    tx, ty = (rand(b) - 0.5) * 0.2, (rand(b) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast = 1 + (rand(b, 1, 1, 1) - 0.5) * 0.4
    bright = (rand(b, 1, 1, 1) - 0.5) * 0.2
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + bright).clamp(0, 1)
    # random erasing: one box of up to a quarter of the image on half the batch
    eh, ew = (rand(b) * h / 2).long(), (rand(b) * w / 2).long()
    y0, x0 = (rand(b) * h).long(), (rand(b) * w).long()
    ys, xs = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
    box = (
        (ys >= y0.view(b, 1, 1))
        & (ys < (y0 + eh).view(b, 1, 1))
        & (xs >= x0.view(b, 1, 1))
        & (xs < (x0 + ew).view(b, 1, 1))
    )
    box &= (rand(b) < 0.5).view(b, 1, 1)
    return out.masked_fill(box.unsqueeze(1), 0.5)
