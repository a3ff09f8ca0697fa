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


# --- what real microphones and channels do (issue: voices it has never heard) ---------------------------------
BACKGROUND_SNR_DB = (0.0, 20.0)  # background noise level relative to the speech
REVERB_RT60 = (0.2, 1.0)  # seconds for the simulated room's reverberation to decay by 60 dB
REVERB_TAIL_SECONDS = 0.5  # simulated impulse responses are cut here
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # narrow-band telephone channel
GAIN_DB = (-24.0, 12.0)  # microphone level; loudness normalisation at the encoder undoes most of it
CLIP_GAIN_DB = (6.0, 20.0)  # overdriven input, then clipped at full scale
CONDITION_PROBS = {"reverb": 0.3, "telephone": 0.15, "noise": 0.5, "gain": 0.3, "clip": 0.1}


def _valid(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


def room_reverb(wave: torch.Tensor, lengths: torch.Tensor, rt60: torch.Tensor) -> torch.Tensor:
    """Convolve each row with a simulated room impulse response: a direct path plus exponentially decaying noise
    whose decay time is rt60 (B,) seconds; FFT convolution on the batch, output cut to the input's length."""
    b, n = wave.shape
    taps = int(REVERB_TAIL_SECONDS * SAMPLE_RATE)
    t = torch.arange(taps, device=wave.device) / SAMPLE_RATE
    rir = torch.randn(b, taps, device=wave.device) * torch.exp(-6.908 * t[None, :] / rt60[:, None])
    rir[:, 0] = 0.0
    rir = rir / rir.norm(dim=1, keepdim=True).clamp_min(1e-8)
    rir[:, 0] = 1.0  # direct path at unit gain; the reverberant energy matches it (DRR about 0 dB)
    size = 1 << (n + taps - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(wave.float(), size) * torch.fft.rfft(rir, size), size)[:, :n]
    return (out / 2.0).to(wave.dtype) * _valid(wave, lengths)


def telephone_band(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A narrow-band phone line: 300-3400 Hz band-pass (FFT mask) and 8-bit mu-law quantisation."""
    n = wave.shape[1]
    spectrum = torch.fft.rfft(wave.float(), n)
    freqs = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE).to(wave.device)
    lo, hi = TELEPHONE_BAND_HZ
    out = torch.fft.irfft(spectrum * ((freqs >= lo) & (freqs <= hi)), n)
    peak = out.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    x = (out / peak).clamp(-1, 1)
    mu = 255.0
    coded = torch.round(torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu) * 127.5) / 127.5
    decoded = torch.sign(coded) * ((1 + mu) ** coded.abs() - 1) / mu
    return (decoded * peak).to(wave.dtype) * _valid(wave, lengths)


def coloured_noise(shape: tuple[int, int], exponent: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Noise whose power falls as 1 / f**exponent (B,): 0 white, 1 pink, 2 brown; unit RMS per row."""
    b, n = shape
    spectrum = torch.fft.rfft(torch.randn(b, n, device=device), n)
    freqs = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE).to(device).clamp_min(20.0)
    noise = torch.fft.irfft(spectrum / freqs[None, :] ** (exponent[:, None] / 2), n)
    return noise / noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)


def babble(wave: torch.Tensor, lengths: torch.Tensor, talkers: int = 3) -> torch.Tensor:
    """Other people talking: the sum of `talkers` other rows of the batch, each shifted, at unit RMS."""
    valid = _valid(wave, lengths)
    rms = ((wave.pow(2) * valid).sum(1) / lengths.clamp_min(1)).sqrt().clamp_min(1e-8)
    voices = wave / rms[:, None]
    mix = sum(torch.roll(torch.roll(voices, k, dims=0), k * 4_000, dims=1) for k in range(1, talkers + 1))
    return mix / mix.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)


def background_noise(
    wave: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor, kind: str = "mixed"
) -> torch.Tensor:
    """Add noise at snr_db (B,) relative to each clip's own power. kind: white, pink, brown, babble, or mixed
    (each row picks one of the four; babble needs a batch of at least 2)."""
    b, n = wave.shape
    device = wave.device
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if kind == "mixed":
        choice = torch.randint(0, 4 if b > 1 else 3, (b,), device=device)
        coloured = coloured_noise((b, n), torch.tensor([0.0, 1.0, 2.0, 0.0], device=device)[choice], device)
        noise = torch.where((choice == 3)[:, None], babble(wave, lengths), coloured) if b > 1 else coloured
    elif kind == "babble":
        noise = babble(wave, lengths)
    else:
        noise = coloured_noise((b, n), torch.full((b,), exponents[kind], device=device), device)
    valid = _valid(wave, lengths)
    power = (wave.float().pow(2) * valid).sum(1) / lengths.clamp_min(1)
    scale = torch.sqrt(power.clamp_min(1e-10) / 10 ** (snr_db / 10))
    return wave + (noise * scale[:, None] * valid).to(wave.dtype)


def gain_and_clip(wave: torch.Tensor, gain_db: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """Scale each row by gain_db (B,); rows where clip (B,) is True are then clipped at full scale."""
    out = wave * (10 ** (gain_db / 20))[:, None]
    return torch.where(clip[:, None], out.clamp(-1.0, 1.0), out)


def real_conditions(
    wave: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator | None = None,
    probs: dict[str, float] | None = None,
) -> torch.Tensor:
    """Training-time channel simulation on a padded batch (B, N): each of room reverb, telephone band, background
    noise (0-20 dB SNR, white/pink/brown/babble), gain and clipping is applied to a random subset of rows.
    Codecs come from pre-encoded copies (train.codec_views), speed and shift from speed_and_shift."""
    p = {**CONDITION_PROBS, **(probs or {})}
    b, dev = wave.shape[0], wave.device

    def pick(name: str) -> torch.Tensor:
        return _rand(b, generator, dev) < p[name]

    def where(rows: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return torch.where(rows[:, None], changed, wave)

    lo, hi = REVERB_RT60
    if p["reverb"] > 0:
        wave = where(pick("reverb"), room_reverb(wave, lengths, lo + (hi - lo) * _rand(b, generator, dev)))
    if p["telephone"] > 0:
        wave = where(pick("telephone"), telephone_band(wave, lengths))
    lo, hi = BACKGROUND_SNR_DB
    if p["noise"] > 0:
        wave = where(pick("noise"), background_noise(wave, lengths, lo + (hi - lo) * _rand(b, generator, dev)))
    lo, hi = GAIN_DB
    gain = torch.where(pick("gain"), lo + (hi - lo) * _rand(b, generator, dev), torch.zeros(b, device=dev))
    clip = pick("clip")
    lo, hi = CLIP_GAIN_DB
    gain = torch.where(clip, lo + (hi - lo) * _rand(b, generator, dev), gain)
    return gain_and_clip(wave, gain, clip)
