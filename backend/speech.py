"""Speech backbone: Whisper (or a self-supervised audio encoder) for features, and Whisper for ASR.

The encoder runs on whole batches in torch so training can fine-tune it; log-mel is computed in torch
(GPU when the model is there) with the numerics of transformers' WhisperFeatureExtractor.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    PreTrainedModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.audio_utils import mel_filter_bank

from backend import whisper_convert
from backend.errors import ModelError
from backend.types import SAMPLE_RATE

log = logging.getLogger(__name__)

N_FFT = 400  # 25 ms window at 16 kHz
HOP_LENGTH = 160  # 10 ms: 100 mel frames per second
CHUNK_SECONDS = 30  # Whisper's context
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames -> 1500 encoder frames
MIN_FRAMES = 100  # trimmed batches are padded to at least 1 s of mel frames
LOUDNESS_TARGET_DBFS = -23.0  # per-utterance level of the speech-active frames after normalisation
LOUDNESS_GATE_DB = 40.0  # frames this far below the loudest one count as silence, not speech
LOUDNESS_MAX_GAIN_DB = 30.0  # a near-silent clip is raised at most this much (noise is not made speech)
LOUDNESS_FRAME = 400  # 25 ms frames for the level measurement

Audio = list[np.ndarray] | list[torch.Tensor] | torch.Tensor  # 16 kHz mono clips, or a (B, n) batch


@dataclass
class SpeechBackbone:
    """A loaded speech model. kind "whisper": model is a WhisperForConditionalGeneration (encoder + ASR),
    processor a WhisperProcessor; kind "ssl": model is e.g. Wav2Vec2Model, processor its feature extractor."""

    name: str
    kind: str
    model: PreTrainedModel
    processor: Any
    hidden_size: int
    num_layers: int
    sampling_rate: int = SAMPLE_RATE
    has_asr: bool = True  # False for SSL encoders and encoder-only Whisper checkpoints

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney mel filter bank, (n_mels, 1 + N_FFT // 2), the one WhisperFeatureExtractor uses."""
    bank = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.T).float()


def log_mel(
    audio: torch.Tensor, n_mels: int = 80, filters: torch.Tensor | None = None, window: torch.Tensor | None = None
) -> torch.Tensor:
    """Whisper log-mel of a batch: audio (B, n) float 16 kHz -> (B, n_mels, n // HOP_LENGTH).

    Same steps as WhisperFeatureExtractor: periodic Hann STFT (center, reflect), power, mel, log10
    clamped at 1e-10, floor at each clip's max - 8, then (x + 4) / 4. Needs n > N_FFT // 2. filters / window:
    mel_filters(n_mels) and the Hann window already on audio's device (no host copy: CUDA graphs capture this).
    """
    assert audio.dim() == 2, f"expected audio (B, n), got shape {tuple(audio.shape)}"
    audio = audio.float()
    window = torch.hann_window(N_FFT, device=audio.device) if window is None else window
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # the last frame is dropped, as HF does
    filters = mel_filters(n_mels).to(audio.device) if filters is None else filters
    mel = filters @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (logs + 4.0) / 4.0


def _split_revision(name: str) -> tuple[str, str | None]:
    if "@" in name and not Path(name).exists():
        repo, revision = name.rsplit("@", 1)
        return repo, revision
    return name, None


def load_speech_backbone(
    name: str, cache: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> SpeechBackbone:
    """Load an offline alias (whisper-base, whisper-small, whisper-tiny.en; converted once into cache),
    a local folder, or a Hub id ("id@revision" pins one) of Whisper or a wav2vec2/HuBERT/WavLM encoder.

    dtype defaults to float32 (the cached conversion is stored as float16, CT2's own precision).
    """
    if name in whisper_convert.ALIASES:
        source, revision = str(whisper_convert.ensure_converted(name, cache)), None
    else:
        source, revision = _split_revision(name)
    dtype = dtype or torch.float32
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
        if config.model_type == "whisper":
            backbone = _load_whisper(name, source, revision, dtype)
        else:
            backbone = _load_ssl(name, source, revision, dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"cannot load speech backbone {name!r}: {exc}. Offline, use one of "
            f"{', '.join(whisper_convert.ALIASES)}, a local folder, or a Hub id already in the HF cache."
        ) from exc
    backbone.model.to(device).eval()
    return backbone


def _load_whisper(name: str, source: str, revision: str | None, dtype: torch.dtype) -> SpeechBackbone:
    model, info = WhisperForConditionalGeneration.from_pretrained(
        source, revision=revision, dtype=dtype, output_loading_info=True
    )
    missing = list(info.get("missing_keys") or [])
    encoder_missing = [k for k in missing if k.startswith("model.encoder.")]
    if encoder_missing or info.get("unexpected_keys") or info.get("mismatched_keys") or info.get("error_msgs"):
        raise ModelError(f"{name}: checkpoint does not match WhisperForConditionalGeneration: {info}")
    if missing:  # e.g. an encoder-only fp16 pack for training machines: features yes, ASR no
        log.warning("%s has no decoder weights (%d missing): encoder only, no ASR", name, len(missing))
    processor = WhisperProcessor.from_pretrained(source, revision=revision)
    config = model.config
    return SpeechBackbone(name, "whisper", model, processor, config.d_model, config.encoder_layers, has_asr=not missing)


def _load_ssl(name: str, source: str, revision: str | None, dtype: torch.dtype) -> SpeechBackbone:
    model = AutoModel.from_pretrained(source, revision=revision, dtype=dtype)
    if getattr(model, "main_input_name", None) != "input_values" or not hasattr(
        model, "_get_feat_extract_output_lengths"
    ):
        raise ModelError(f"{name} is a {model.config.model_type} model, not a raw-audio speech encoder")
    extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision)
    config = model.config
    return SpeechBackbone(name, "ssl", model, extractor, config.hidden_size, config.num_hidden_layers, has_asr=False)


def _pad_batch(audio: Audio, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (arrays or 1-D tensors) or a (B, n) tensor -> zero-padded (B, n_max) float32 on device, lengths (B,)."""
    if isinstance(audio, torch.Tensor):
        batch = audio.unsqueeze(0) if audio.dim() == 1 else audio
        assert batch.dim() == 2, f"expected audio (B, n), got shape {tuple(audio.shape)}"
        lengths = torch.full((batch.shape[0],), batch.shape[1], dtype=torch.long)
        return batch.to(device, torch.float32), lengths.to(device)
    assert len(audio) > 0, "expected at least one clip"
    if any(isinstance(a, torch.Tensor) for a in audio):
        clips = [torch.as_tensor(a).to(device, torch.float32).reshape(-1) for a in audio]
        lengths = torch.tensor([len(c) for c in clips], dtype=torch.long, device=device)
        return nn.utils.rnn.pad_sequence(clips, batch_first=True), lengths
    # numpy clips: pad on the host into one (pinned, on CUDA) buffer and copy it over once, not clip by clip
    host, lengths = pad_on_host(audio, pin=device.type == "cuda")
    return host.to(device, non_blocking=True), lengths.to(device, non_blocking=True)


PARALLEL_FILL_SAMPLES = 4_000_000  # padded batches this big (16 MB) are filled by several threads


FILL_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))  # numpy releases the GIL while copying
_FILL_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _fill_pool() -> ThreadPoolExecutor:
    """Threads that copy clips into a padded batch. One pool per process: a forked child (decoding workers) must
    not inherit a pool whose threads it does not have (work handed to it would wait forever)."""
    key = (os.getpid(), FILL_THREADS)
    if key not in _FILL_POOLS:
        _FILL_POOLS[key] = ThreadPoolExecutor(FILL_THREADS, thread_name_prefix="pad")
    return _FILL_POOLS[key]


def pad_on_host(clips: list[np.ndarray] | list[torch.Tensor], pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips -> one zero-padded (B, n_max) float32 CPU buffer (page-locked if pin and CUDA is there), lengths (B,).

    One buffer means one host-to-device copy per batch; pinned, that copy can overlap with compute.
    """
    arrays = [np.asarray(a, dtype=np.float32).reshape(-1) for a in clips]
    sizes = [len(a) for a in arrays]
    pin = pin and torch.cuda.is_available()
    host = torch.empty(len(arrays), max(sizes), pin_memory=pin)
    view = host.numpy()

    def fill(rows: range) -> None:  # each row written once: the clip, then zeros (no memset of the whole buffer)
        for r in rows:
            view[r, : sizes[r]] = arrays[r]
            view[r, sizes[r] :] = 0.0

    workers = min(FILL_THREADS, len(arrays)) if view.size >= PARALLEL_FILL_SAMPLES else 1
    if workers > 1:  # one core copies ~5 GB/s on a server CPU: a 256-clip batch is 10-50 ms of pure copying
        step = math.ceil(len(arrays) / workers)
        list(_fill_pool().map(fill, [range(a, min(a + step, len(arrays))) for a in range(0, len(arrays), step)]))
    else:
        fill(range(len(arrays)))
    # lengths pinned too: a copy from pageable memory waits for the whole stream (no overlap with earlier batches)
    lengths = torch.tensor(sizes, dtype=torch.long)
    return host, lengths.pin_memory() if pin else lengths


def normalize_loudness(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-padded clips (B, n) with lengths (B,) -> each clip scaled so its speech-active frames sit at
    LOUDNESS_TARGET_DBFS, peaks kept within [-1, 1]; padding stays zero.

    A whisper on a laptop microphone and a shout into a phone reach the encoder at one level, in training and at
    inference alike (Whisper's log-mel keeps absolute level). Active frames: mean square within LOUDNESS_GATE_DB
    of the clip's loudest 25 ms frame (a relative gate, as in EBU R128); the gain is capped at
    LOUDNESS_MAX_GAIN_DB so silence stays quiet.
    """
    assert wave.dim() == 2 and lengths.shape == wave.shape[:1], f"expected (B, n) and (B,), got {tuple(wave.shape)}"
    b, n = wave.shape
    frames = math.ceil(max(n, 1) / LOUDNESS_FRAME)
    power = nn.functional.pad(wave.float(), (0, frames * LOUDNESS_FRAME - n)).pow(2).view(b, frames, -1).mean(-1)
    inside = torch.arange(frames, device=wave.device)[None, :] * LOUDNESS_FRAME < lengths[:, None]
    power = power.masked_fill(~inside, 0.0)
    loudest = power.amax(dim=1, keepdim=True)
    active = inside & (power >= loudest * 10 ** (-LOUDNESS_GATE_DB / 10)) & (power > 1e-10)
    level = (power * active).sum(1) / active.sum(1).clamp_min(1)
    gain = torch.sqrt(10 ** (LOUDNESS_TARGET_DBFS / 10) / level.clamp_min(1e-12))
    gain = gain.clamp(max=10 ** (LOUDNESS_MAX_GAIN_DB / 20))
    peak = wave.abs().amax(dim=1).float() * gain
    gain = torch.where(peak > 1.0, gain / peak.clamp_min(1e-12), gain)
    gain = torch.where(active.any(1), gain, torch.ones_like(gain))  # digital silence: leave it alone
    return wave * gain[:, None].to(wave.dtype)


def encoder_hidden_states(
    backbone: SpeechBackbone,
    audio: Audio,
    trim: bool = True,
    mel_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    frame_multiple: int = 2,
    loudness: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All encoder hidden states (B, num_layers + 1, T', D) and a bool mask (B, T') of frames inside each clip.

    Whisper, trim=True: the batch is padded only to its longest clip (even frame count, >= MIN_FRAMES);
    trim=False: padded to 30 s, the standard computation. Index 0 is the embedding output, the last
    one is after the final layer norm (as transformers returns them). No torch.no_grad here: callers
    that fine-tune get gradients. mel_transform (Whisper only, e.g. SpecAugment for training) maps the
    float32 log-mel (B, n_mels, T) to the same shape before the encoder; SSL encoders ignore it (they
    mask time steps themselves when their config asks for it). frame_multiple (Whisper, trim=True, even):
    round the padded length up to a multiple of this many mel frames, so training batches of every length
    fall into a few shapes and cuBLAS / cuDNN reuse their plans (100 = 1 s buckets). loudness: normalise each
    clip's level first (normalize_loudness; the model config's speech_loudness_norm says whether it was trained so).
    """
    if backbone.kind == "whisper":
        return _whisper_states(backbone, audio, trim, mel_transform, frame_multiple, loudness)
    return _ssl_states(backbone, audio, loudness)


def padded_frames(longest: int, frame_multiple: int = 2) -> int:
    """Mel frames a trimmed batch whose longest clip has `longest` samples is padded to.

    At least N_FFT zero samples follow every clip, so each valid frame's STFT window (centre +- N_FFT / 2,
    then the encoder's two 3-tap convolutions) sees the clip and zeros only, never whatever padding or
    reflection follows in a longer batch: a clip's valid frames are the same alone and in any batch.
    """
    assert frame_multiple > 0 and frame_multiple % 2 == 0, f"frame_multiple must be even, got {frame_multiple}"
    frames = max(MIN_FRAMES, math.ceil((longest + N_FFT) / HOP_LENGTH))
    return min(N_FRAMES, math.ceil(frames / frame_multiple) * frame_multiple)


def valid_frames(lengths: torch.Tensor, mel_frames: int) -> torch.Tensor:
    """Encoder frames (after the stride-2 convolution) that hold each clip: lengths (B,) samples -> (B,)."""
    valid_mel = torch.clamp(torch.div(lengths + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor"), max=mel_frames)
    return torch.div(valid_mel + 1, 2, rounding_mode="floor").clamp(min=1)


def _whisper_states(
    backbone: SpeechBackbone,
    audio: Audio,
    trim: bool,
    mel_transform: Callable[[torch.Tensor], torch.Tensor] | None,
    frame_multiple: int = 2,
    loudness: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    encoder = backbone.model.get_encoder()
    wave, lengths = _pad_batch(audio, backbone.device)
    if loudness:
        wave = normalize_loudness(wave, lengths)
    longest = wave.shape[1]
    if longest > N_SAMPLES:
        raise ValueError(f"Whisper's encoder takes at most {CHUNK_SECONDS} s; split clips of {longest} samples")
    frames = padded_frames(longest, frame_multiple) if trim else N_FRAMES
    wave = nn.functional.pad(wave, (0, frames * HOP_LENGTH - longest))
    mel = log_mel(wave, encoder.config.num_mel_bins)
    if mel_transform is not None:
        mel = mel_transform(mel)
        assert mel.shape == (wave.shape[0], encoder.config.num_mel_bins, frames), "mel_transform changed the shape"
    mask = torch.arange(frames // 2, device=wave.device)[None, :] < valid_frames(lengths, frames)[:, None]
    states = whisper_encoder_states(encoder, mel.to(backbone.dtype), mask)
    return states, mask


def attention_mask_for(encoder: nn.Module, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Key-padding mask (B, T) bool -> the (B, 1, 1, T) mask the encoder's attention implementation takes:
    bool (True = attend) for SDPA / flex, additive float for eager attention."""
    mask = key_mask[:, None, None, :]
    if getattr(encoder.config, "_attn_implementation", "sdpa") != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def whisper_encoder_states(encoder: nn.Module, mel: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run a transformers WhisperEncoder on mel (B, n_mels, T), any even T <= 3000 -> (B, L + 1, T / 2, D).

    transformers' forward() refuses T != 3000; this uses its submodules with the first T / 2 positional
    embeddings, so it equals forward() at T = 3000 and is much faster on short clips. key_mask (B, T / 2)
    bool marks the frames inside each clip: attention never looks at padding, so a clip's states do not
    depend on the batch it shares (None: every frame is a key, Whisper's own 30 s computation).
    """
    n_mels, max_positions = encoder.config.num_mel_bins, encoder.embed_positions.weight.shape[0]
    assert mel.dim() == 3 and mel.shape[1] == n_mels, f"expected mel (B, {n_mels}, T), got {tuple(mel.shape)}"
    assert mel.shape[2] % 2 == 0 and mel.shape[2] <= 2 * max_positions, (
        f"expected an even number of mel frames <= {2 * max_positions}, got {mel.shape[2]}"
    )
    x = nn.functional.gelu(encoder.conv1(mel))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    x = nn.functional.dropout(x, p=encoder.dropout, training=encoder.training)
    attention = None
    if key_mask is not None:
        assert key_mask.shape == x.shape[:2], f"expected key_mask {tuple(x.shape[:2])}, got {tuple(key_mask.shape)}"
        attention = attention_mask_for(encoder, key_mask, x.dtype)
    states = [x]
    for layer in encoder.layers:  # WhisperEncoderLayer.forward(hidden_states, attention_mask, **kwargs)
        x = layer(x, attention)
        states.append(x)
    states[-1] = encoder.layer_norm(x)
    return torch.stack(states, dim=1)


def _ssl_states(backbone: SpeechBackbone, audio: Audio, loudness: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """wav2vec2-style encoders: normalise each clip like their feature extractor, then run with all states."""
    extractor, model = backbone.processor, backbone.model
    wave, lengths = _pad_batch(audio, backbone.device)
    if loudness:
        wave = normalize_loudness(wave, lengths)
    sample_mask = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
    if getattr(extractor, "do_normalize", False):  # zero mean, unit variance over the valid samples
        count = lengths[:, None].float()
        mean = (wave * sample_mask).sum(1, keepdim=True) / count
        var = (((wave - mean) * sample_mask) ** 2).sum(1, keepdim=True) / count
        wave = torch.where(sample_mask, (wave - mean) / torch.sqrt(var + 1e-7), 0.0)
    kwargs: dict[str, Any] = {"output_hidden_states": True}
    if getattr(extractor, "return_attention_mask", False):  # models trained without it must not get one
        kwargs["attention_mask"] = sample_mask.long()
    out = model(wave.to(backbone.dtype), **kwargs)
    states = torch.stack(out.hidden_states, dim=1)
    valid = model._get_feat_extract_output_lengths(lengths)
    mask = torch.arange(states.shape[2], device=states.device)[None, :] < valid[:, None]
    return states, mask


def whisper_pieces(audio: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """30 s pieces of every clip (Whisper's window) and the clip each belongs to; ASR joins their texts."""
    pieces, owners = [], []
    for index, clip in enumerate(audio):
        clip = np.asarray(clip, dtype=np.float32).reshape(-1)
        for start in range(0, max(len(clip), 1), N_SAMPLES):
            pieces.append(clip[start : start + N_SAMPLES])
            owners.append(index)
    return pieces, owners


def transcribe(
    backbone: SpeechBackbone,
    audio: list[np.ndarray],
    language: str | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
) -> list[str]:
    """Whisper ASR: one stripped transcript per clip. Clips over 30 s are cut into 30 s pieces whose
    texts are joined. language None: Whisper detects it per piece (multilingual models)."""
    if backbone.kind != "whisper" or not backbone.has_asr:
        raise ModelError("this speech backbone has no ASR")
    pieces, owners = whisper_pieces(audio)
    texts = []
    for start in range(0, len(pieces), batch_size):
        texts += _generate(backbone, pieces[start : start + batch_size], language, max_new_tokens)
    joined: list[list[str]] = [[] for _ in audio]
    for owner, text in zip(owners, texts):
        joined[owner].append(text.strip())
    return [" ".join(t for t in parts if t) for parts in joined]


def _generate(backbone: SpeechBackbone, pieces: list[np.ndarray], language: str | None, max_new: int) -> list[str]:
    model = backbone.model
    wave, _ = _pad_batch(pieces, backbone.device)
    wave = nn.functional.pad(wave, (0, N_SAMPLES - wave.shape[1]))
    mel = log_mel(wave, model.config.num_mel_bins).to(backbone.dtype)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new}
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs.update(task="transcribe", language=language)
    elif language not in (None, "en"):
        log.warning("%s is English-only; ignoring language=%s", backbone.name, language)
    with torch.no_grad():  # encode once: language detection and decoding both reuse it
        encoded = model.get_encoder()(mel)
        ids = model.generate(encoder_outputs=encoded, **kwargs)
    return backbone.processor.batch_decode(ids, skip_special_tokens=True)


def tiny_whisper_backbone(tmp_dir: Path) -> SpeechBackbone:
    """A tiny random Whisper (d_model 64, 2 layers) with the real multilingual tokenizer, saved and
    loaded back through load_speech_backbone; for fast unit tests of code that needs a backbone."""
    source = whisper_convert.find_source(whisper_convert.DEFAULT_ALIAS)
    tokenizer = _wheel_tokenizer(source.tokenizer)
    ct2_config = json.loads(source.config.read_text(encoding="utf-8"))
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = whisper_convert.build_generation_config(tokenizer, ct2_config, config)
    folder = Path(tmp_dir) / "tiny-whisper"
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(folder)
    return load_speech_backbone(str(folder), cache=Path(tmp_dir))


@functools.lru_cache(maxsize=2)
def _wheel_tokenizer(path: Path) -> Any:
    return whisper_convert.load_wheel_tokenizer(path)
