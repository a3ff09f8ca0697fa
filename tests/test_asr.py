"""Transcription through CTranslate2 (the wheels' own model.bin) with transformers as the fallback."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from backend import asr
from backend.speech import N_FRAMES, N_SAMPLES, load_speech_backbone, log_mel
from backend.types import SAMPLE_RATE
from tests.conftest import RAVDESS

CLIPS = [  # (file, what the old transformers path transcribed)
    ("Actor_17/03-01-01-01-01-01-17.flac", "Kids are talking by the door."),
    ("Actor_18/03-01-05-02-02-01-18.flac", "Dogs are sitting by the door."),
    ("Actor_20/03-01-03-01-01-02-20.flac", "Kids are talking by the door."),
]


def _words(texts: list[str]) -> list[list[str]]:
    """Lower-case words: int8 CTranslate2 and float32 transformers may differ in punctuation ("!" or ".")."""
    return [re.findall(r"[a-z']+", t.lower()) for t in texts]


def _read(name: str) -> np.ndarray:
    audio, rate = sf.read(str(RAVDESS / name), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


@pytest.mark.parametrize("seconds", [0.1, 1.0, 3.5, 4.0, 12.0, 25.0, 29.9, 30.0])
def test_mel_keeps_a_margin_of_silence_and_stays_within_30_s(seconds):
    n = int(seconds * SAMPLE_RATE)
    frames = asr.padded_frames(n)
    clip_frames = -(-n // 160)
    assert frames % asr.FRAME_BUCKET == 0 and asr.MIN_FRAMES <= frames <= N_FRAMES
    assert frames >= min(clip_frames + asr.MARGIN_FRAMES, N_FRAMES)
    assert asr.MIN_TOKENS <= asr.token_cap(n) <= asr.MAX_TOKENS
    assert asr.token_cap(n, max_new_tokens=10) == 10


def test_trimmed_features_are_the_first_frames_of_the_30_s_mel():
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(int(3.7 * SAMPLE_RATE))).astype(np.float32)
    frames = asr.padded_frames(len(clip))
    trimmed = asr.features([clip], frames)
    full = log_mel(torch.nn.functional.pad(torch.from_numpy(clip)[None], (0, N_SAMPLES - len(clip))), 80)
    assert trimmed.shape == (1, 80, frames)
    np.testing.assert_allclose(trimmed, full[:, :, :frames].numpy(), atol=1e-5)


def test_loops_are_recognised():
    assert asr.looks_looping("Dogs are sitting by the door! " * 4)
    assert not asr.looks_looping("Kids are talking by the door.")
    assert not asr.looks_looping("")


def test_a_statement_said_over_and_over_is_cut_to_one():
    assert asr.repeated_unit([1, 2, 3, 4, 1, 2, 3, 4, 1, 2]) == [1, 2, 3, 4]  # the last repeat cut off by the cap
    assert asr.repeated_unit([1, 2, 3, 4, 5, 6]) is None
    assert asr.repeated_unit([7, 7, 7, 7, 7, 7]) is None  # "no no no no": people say that
    assert asr.repeated_unit([1, 2, 3, 4, 1, 2, 3]) is None  # less than twice


def test_text_of_a_timestamped_decode():
    first = 100  # <|0.00|>; ids below it are text
    decoded = [100, 5, 6, 7, 150, 150, 8, 9]  # one closed segment, then one the token cap cut off
    assert asr.text_ids(decoded, first, capped=True) == [5, 6, 7]
    assert asr.text_ids(decoded, first, capped=False) == [5, 6, 7, 8, 9]  # ended by the transcript: kept
    assert asr.text_ids([5, 6], first, capped=True) == [5, 6]  # no timestamp to cut at
    assert asr.text_ids([100, 5, 6, 7], first, capped=True) == [5, 6, 7]  # one cut segment: kept, not emptied


def test_a_request_transcribes_on_half_the_cores_a_long_job_on_all(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert (asr.cpu_threads(background=False), asr.cpu_threads(background=True)) == (4, 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert (asr.cpu_threads(background=False), asr.cpu_threads(background=True)) == (1, 1)


def test_hub_backbones_fall_back_to_transformers(tiny_backbones, monkeypatch):
    backbone = load_speech_backbone(tiny_backbones["speech"], cache=Path(tiny_backbones["cache"]))
    assert asr.ct2_engine(backbone, torch.device("cpu")) is None  # not an offline alias: no CT2 model for it
    calls = []
    monkeypatch.setattr(
        asr, "transformers_transcribe", lambda b, audio, language=None: calls.append(len(audio)) or [""]
    )
    assert asr.transcribe(backbone, [np.zeros(SAMPLE_RATE, np.float32)]) == [""]
    assert calls == [1]


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory):
    return load_speech_backbone("whisper-base", cache=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_ct2_transcribes_like_transformers(whisper_base):
    engine = asr.ct2_engine(whisper_base, torch.device("cpu"))
    assert engine is not None and (engine.device, engine.compute_type) == ("cpu", "int8")
    audio = [_read(name) for name, _ in CLIPS]
    expected = [text for _, text in CLIPS]
    assert _words(asr.transcribe(whisper_base, audio)) == _words(expected)  # batched, one mel length
    for clip, text in zip(audio, expected):  # one at a time, as the app calls it; clip 2 loops on 8 s of mel
        assert _words(asr.transcribe(whisper_base, [clip], language="en")) == _words([text])
    assert asr.transformers_transcribe(whisper_base, audio[:1]) == [CLIPS[0][1]]  # the fallback is the old path


LOOPED_WITHOUT_TIMESTAMPS = "Actor_19/03-01-03-02-02-02-19.flac"  # "Dogs are sitting by the door." x4 on 10 s


@pytest.mark.slow
def test_a_clip_is_decoded_once_and_timestamps_stop_at_its_end(whisper_base, caplog):
    engine = asr.ct2_engine(whisper_base, torch.device("cpu"))
    late = asr.late_timestamps(engine, 4 * SAMPLE_RATE)  # 4 s + 0.5 s of slack
    assert engine.tokenizer.convert_ids_to_tokens([late[0], late[-1]]) == ["<|4.52|>", "<|30.00|>"]
    clip = _read(LOOPED_WITHOUT_TIMESTAMPS)
    with caplog.at_level("INFO", logger="backend.asr"):
        assert _words(asr.ct2_transcribe(engine, [clip])) == _words(["Dogs are sitting by the door."])
    assert not [r for r in caplog.records if "looped" in r.getMessage()]  # no second decode on 30 s of mel


@pytest.mark.slow
def test_long_and_silent_audio(whisper_base):
    engine = asr.ct2_engine(whisper_base, torch.device("cpu"))
    first, second = _read(CLIPS[0][0]), _read(CLIPS[1][0])
    gap = np.zeros(N_SAMPLES - len(first), np.float32)  # the second statement starts the second 30 s piece
    [text] = asr.ct2_transcribe(engine, [np.concatenate([first, gap, second])])
    assert _words([text]) == _words([f"{CLIPS[0][1]} {CLIPS[1][1]}"])
    [quiet] = asr.ct2_transcribe(engine, [np.zeros(2 * SAMPLE_RATE, np.float32)])
    # digital silence: "you", at the edge of the no-speech test (mean log-probability ~-1.0); the app refuses
    # silent audio before transcribing it (backend.media)
    assert len(quiet.split()) <= asr.token_cap(2 * SAMPLE_RATE)  # whatever it hears, it does not loop on


def _noise(seconds: float, seed: int, level_db: float = -20.0) -> np.ndarray:
    """Pink noise (1/f power) at an RMS level: what a room, a fan or a street sounds like."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), n)
    return (noise / np.sqrt(np.mean(noise**2)) * 10 ** (level_db / 20)).astype(np.float32)


def _hum(seconds: float) -> np.ndarray:
    """Mains hum: 50 Hz and its harmonics, a little noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * 50 * h * t) / h for h in range(1, 8)) / 4
    return (wave + 0.01 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


@pytest.mark.slow
def test_noise_and_hum_get_no_words_and_speech_keeps_them(whisper_base):
    """Whisper writes words nobody said on noise ("1.5m de rin", "1.5%"); its no-speech test blanks those, and
    leaves speech as it was, also speech in the same call."""
    engine = asr.ct2_engine(whisper_base, torch.device("cpu"))
    speech = _read(CLIPS[0][0])
    texts = asr.ct2_transcribe(engine, [_noise(2, seed=1), _noise(4, seed=2, level_db=-30), _hum(2), speech])
    assert texts[:3] == ["", "", ""]
    assert _words(texts[3:]) == _words([CLIPS[0][1]])


def test_the_no_speech_test_needs_both_signs():
    """Whisper's rule: the no-speech token likely AND the words unlikely (a confident transcript stays)."""

    class Result:  # the two fields of a CTranslate2 WhisperGenerationResult it reads
        def __init__(self, no_speech_prob: float, mean_logprob: float, n: int = 9) -> None:
            self.no_speech_prob, self.sequences_ids = no_speech_prob, [list(range(n))]
            self.scores = [mean_logprob * (n + 1) / n]

    assert asr.no_speech(Result(0.8, -1.5))
    assert not asr.no_speech(Result(0.8, -0.3))  # likely silence, but the words are sure: kept
    assert not asr.no_speech(Result(0.3, -1.5))  # unsure words, but speech is likely: kept


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread priorities are read from Linux /proc")
def test_background_engine_threads_run_at_the_lowest_priority(whisper_base):
    normal = asr.ct2_engine(whisper_base, torch.device("cpu"))
    asr._engines.pop((whisper_base.name, "cpu", True), None)  # an earlier test may have built it: build it here
    before = set(os.listdir("/proc/self/task"))
    engine = asr.ct2_engine(whisper_base, torch.device("cpu"), background=True)
    assert engine is not None and engine is not normal
    assert asr.ct2_transcribe(engine, [_read(CLIPS[0][0])]) == [CLIPS[0][1]]
    new = set(os.listdir("/proc/self/task")) - before
    nice = {tid: int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16]) for tid in new}
    assert nice and all(value == 19 for value in nice.values()), nice
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the caller's own priority is untouched


@pytest.mark.slow
def test_the_predictor_transcribes_while_the_audio_branch_runs(monkeypatch):
    """CTranslate2 works on its own threads: the Predictor submits the transcription before the audio branch
    and collects it after, so the two overlap in time; the transcript is the one transcribe() gives."""
    import dataclasses
    import threading
    import time

    from backend.model import EmotionModel
    from backend.predictor import Predictor
    from backend.settings import DEFAULT_MODEL_DIR, load_settings
    from backend.types import Sample

    settings = load_settings(asr=True)
    predictor = Predictor(EmotionModel.from_pretrained(DEFAULT_MODEL_DIR, cache=settings.cache), settings)
    spans: dict[str, tuple[float, float, int]] = {}

    def timed(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[name] = (start, time.perf_counter(), threading.get_ident())

        return run

    monkeypatch.setattr(asr, "ct2_transcribe", timed("asr", asr.ct2_transcribe))
    monkeypatch.setattr(predictor, "_run_speech", timed("speech", predictor._run_speech))
    clip = _read(CLIPS[0][0])
    prediction = predictor.predict(Sample(audio=clip))
    assert _words([prediction.transcript]) == _words([CLIPS[0][1]])
    (a0, a1, asr_thread), (s0, s1, speech_thread) = spans["asr"], spans["speech"]
    assert asr_thread != speech_thread == threading.get_ident()
    assert a0 < s1 and s0 < a1, spans  # the two intervals intersect
    in_turn = Predictor(predictor.model, dataclasses.replace(settings, asr_beside_audio=False))  # the switch
    monkeypatch.setattr(in_turn, "_run_speech", timed("speech", in_turn._run_speech))
    assert _words([in_turn.predict(Sample(audio=clip)).transcript]) == _words([CLIPS[0][1]])
    (a0, a1, asr_thread), (s0, s1, _) = spans["asr"], spans["speech"]
    assert asr_thread == threading.get_ident() and s1 <= a0, spans  # after the audio branch, in this thread
