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


def add_noise(
    wave: torch.Tensor, generator: torch.Generator | None = None, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """wave (B, N) -> wave + white noise at a random SNR per row. With lengths (B,) the rows are zero-padded
    clips: the SNR is taken over each clip's own samples and the padding stays zero."""
    lo, hi = NOISE_SNR_DB
    snr = lo + (hi - lo) * torch.rand(wave.shape[0], 1, device=wave.device, generator=generator)
    noise = torch.randn(wave.shape, device=wave.device, generator=generator)
    if lengths is None:
        power = wave.pow(2).mean(dim=1, keepdim=True)
    else:
        valid = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
        power = wave.pow(2).sum(dim=1, keepdim=True) / lengths.clamp_min(1)[:, None]
        noise = noise * valid
    return wave + noise * torch.sqrt(power.clamp_min(1e-10) / 10 ** (snr / 10))


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


def speed_and_shift(clips: list, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The per-clip half of waveform augmentation (random speed, then a circular shift) on the CPU: work a
    loader thread does while the GPU trains; noise follows on the padded batch (add_noise with lengths)."""
    waves = random_speed([torch.as_tensor(c, dtype=torch.float32).reshape(-1) for c in clips], generator=generator)
    return [time_shift(w.unsqueeze(0), generator=generator)[0] for w in waves]


def noisy_views(
    host: torch.Tensor, lengths: torch.Tensor, device: torch.device, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """A padded host batch (B, N) -> on device, noise added inside each clip -> per-clip 1-D views."""
    wave = host.to(device, non_blocking=True)
    wave = add_noise(wave, generator=generator, lengths=lengths.to(device))
    return [wave[i, :n] for i, n in enumerate(lengths.tolist())]


def spec_augment(
    mel: torch.Tensor,
    freq_masks: int = 2,
    freq_width: int = 12,
    time_masks: int = 2,
    time_frac: float = 0.08,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment on log-mel (B, n_mels, T): masks filled with each row's mean. The mask bounds are drawn on
    the CPU (generator: a CPU one) and applied in one pass on mel's device, not a kernel per mask."""
    b, n_mels, t = mel.shape
    fw = torch.randint(0, freq_width + 1, (b, freq_masks), generator=generator)
    f0 = (torch.rand(b, freq_masks, generator=generator) * (n_mels - fw).clamp_min(1)).long()
    tw = torch.randint(0, max(1, int(time_frac * t)) + 1, (b, time_masks), generator=generator)
    t0 = (torch.rand(b, time_masks, generator=generator) * (t - tw).clamp_min(1)).long()

    def spans(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
        pos = torch.arange(size).view(1, 1, size)
        return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)  # (B, size)

    mask = spans(f0, fw, n_mels)[:, :, None] | spans(t0, tw, t)[:, None, :]
    fill = mel.mean(dim=(1, 2), keepdim=True)
    return torch.where(mask.to(mel.device, non_blocking=True), fill, mel)


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
