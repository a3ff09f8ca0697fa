"""Live voice (backend.streaming, backend.vad, backend.live_view): VAD gating, windows, hops, "not sure".

The reader is a fake that records what it was asked to read, so these run in seconds; the real model is
exercised by tests/test_live_e2e.py. The VAD is the real Silero model on real RAVDESS speech.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from backend.labels import LABELS
from backend.live_view import now_html, timeline_html
from backend.settings import load_settings
from backend.streaming import NOT_SURE, LiveConfig, LiveStream, model_threshold, to_16k
from backend.types import SAMPLE_RATE
from backend.vad import StreamingVad, speech_spans
from tests.conftest import RAVDESS

CLIP = RAVDESS / "Actor_19" / "03-01-05-02-01-02-19.flac"  # angry, speech ~1.0-4.0 s of 4.8 s


class FakeReader:
    """Returns a fixed distribution and remembers every clip it was given."""

    def __init__(self, top: str = "angry", p: float = 0.9) -> None:
        rest = (1.0 - p) / (len(LABELS) - 1)
        self.probs = {k: (p if k == top else rest) for k in LABELS}
        self.calls: list[np.ndarray] = []

    def __call__(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        self.calls.extend(clips)
        return [dict(self.probs) for _ in clips]


def clip() -> np.ndarray:
    audio, rate = sf.read(CLIP, dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def breaths(seconds: float, seed: int = 0) -> np.ndarray:
    """Breath-like noise bursts (smoothed noise under a Hann envelope, 0.6 s each, loud) with pauses."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(map(len, out)) < seconds * SAMPLE_RATE:
        burst = np.convolve(rng.standard_normal(int(0.6 * SAMPLE_RATE)), np.ones(8) / 8, "same")
        out += [(burst * np.hanning(len(burst)) * 0.8).astype(np.float32), silence(0.5)]
    return np.concatenate(out)[: int(seconds * SAMPLE_RATE)]


def feed(stream: LiveStream, audio: np.ndarray, reader: FakeReader, chunk_s: float = 0.5) -> list:
    step = int(chunk_s * SAMPLE_RATE)
    return [stream.push(audio[a : a + step], reader) for a in range(0, len(audio), step)]


# ------------------------------------------------------------------------------------------ VAD


def test_vad_finds_the_speech_of_a_real_clip_and_nothing_in_silence_or_breaths():
    spans = speech_spans(clip())
    assert len(spans) == 1
    start, end = spans[0]
    assert 0.7 < start < 1.3 and 3.7 < end < 4.4, spans
    assert speech_spans(silence(3.0)) == []
    assert speech_spans(breaths(4.0)) == []
    assert speech_spans((np.random.default_rng(1).standard_normal(48_000) * 0.02).astype(np.float32)) == []


def test_vad_flags_do_not_depend_on_chunk_sizes():
    audio = clip()
    whole = StreamingVad().push(audio)
    vad = StreamingVad()
    pieces = [vad.push(audio[a : a + 777]) for a in range(0, len(audio), 777)]
    assert np.array_equal(np.concatenate(pieces), whole)


# ------------------------------------------------------------------------------------------ stream


def test_silence_and_breaths_never_produce_a_reading():
    reader = FakeReader()
    stream = LiveStream(LiveConfig())
    updates = feed(stream, np.concatenate([silence(2.0), breaths(4.0), silence(1.0)]), reader)
    stream.finish(reader)
    assert reader.calls == []
    assert all(u.latest is None and not u.speaking for u in updates)
    assert stream.segments == [] and stream.utterance() is None


def test_readings_only_in_speech_every_hop_over_the_window():
    config = LiveConfig(window_s=1.0, hop_s=0.5)
    reader = FakeReader()
    stream = LiveStream(config)
    recording = np.concatenate([silence(1.0), clip(), breaths(2.0), silence(1.0)])
    updates = feed(stream, recording, reader, chunk_s=0.25)
    final = stream.finish(reader)
    readings = [u.reading for u in updates if u.reading] + ([final.reading] if final.reading else [])
    spans = speech_spans(clip())
    speech_start, speech_end = 1.0 + spans[0][0], 1.0 + spans[0][1]
    assert len(readings) >= 3
    for r in readings:  # every window lies inside the speech (VAD margin: 0.35 s of hang-over)
        assert speech_start - 0.1 <= r.start < r.end <= speech_end + 0.4, (r.start, r.end)
        assert r.end - r.start <= config.window_s + 1e-6
    gaps = np.diff([r.end for r in readings])
    assert (gaps[:-1] >= config.hop_s - 0.1).all() and (gaps[:-1] <= config.hop_s + 0.3).all(), gaps
    assert gaps[-1] >= config.hop_s / 2  # the closing reading of a segment, when the last one is old enough
    assert max(len(c) for c in reader.calls) <= config.window_s * SAMPLE_RATE + 1
    assert len(final.segments) == 1 and final.segments[0].end is not None
    assert final.to_dict()["segments"][0]["label"] == "angry"
    utterance = stream.utterance()
    assert speech_end - speech_start < len(utterance) / SAMPLE_RATE < speech_end - speech_start + 0.6


def test_at_least_two_readings_a_second_of_speech():
    reader = FakeReader()
    stream = LiveStream(LiveConfig(window_s=2.0, hop_s=0.5))
    long_speech = np.concatenate([clip()[16_000:46_000]] * 3)  # ~5.6 s of nearly continuous speech
    feed(stream, long_speech, reader, chunk_s=0.25)
    speech = sum((s.end or stream.seconds) - s.start for s in stream.segments)
    assert len(reader.calls) / speech >= 1.6  # 2/s once the first 0.5 s of a segment is in
    assert len(reader.calls) >= 2 * (speech - len(stream.segments) * 0.5) - 1


def test_not_sure_below_the_threshold_and_model_threshold_wins():
    stream = LiveStream(LiveConfig(uncertain_threshold=0.5))
    feed(stream, np.concatenate([silence(0.5), clip()]), FakeReader("sad", p=0.4))
    update = stream.finish(FakeReader("sad", p=0.4))
    assert update.latest.label == "sad" and update.latest.shown == NOT_SURE
    info = update.to_dict()
    assert info["label"] == NOT_SURE and info["top"] == "sad" and info["segments"][0]["label"] == NOT_SURE
    assert 'data-label="not sure"' in now_html(update) and "maybe sad" in now_html(update)
    assert 'data-label="not sure"' in timeline_html(update)
    settings = load_settings(live_uncertain_threshold=0.3)
    assert LiveConfig.from_settings(settings).uncertain_threshold == 0.3
    assert LiveConfig.from_settings(settings, model_threshold=0.62).uncertain_threshold == 0.62

    class Config:
        uncertain_threshold = 0.0  # the model config's "not calibrated"

    class Model:
        config = Config()

    class Predictor:
        model = Model()

    assert model_threshold(Predictor()) is None
    Config.uncertain_threshold = 0.45
    assert model_threshold(Predictor()) == 0.45


def test_browser_chunks_become_16k_mono_and_scraps_are_dropped():
    settings = load_settings()
    stereo = (np.random.default_rng(0).standard_normal((24_000, 2)) * 3000).astype(np.int16)
    audio = to_16k(48_000, stereo, settings)
    assert audio.dtype == np.float32 and audio.shape == (8_000,)
    assert to_16k(48_000, stereo[:100], settings).shape == (0,)
    quiet = np.zeros((24_000, 2), dtype=np.int16)
    assert to_16k(48_000, quiet, settings).shape == (8_000,)  # silence is data here, not an error


def test_recording_is_capped_at_max_seconds():
    stream = LiveStream(LiveConfig(max_seconds=2.0))
    feed(stream, silence(5.0), FakeReader())
    assert stream.seconds == pytest.approx(2.0)


def test_torch_threads_are_put_back():
    import torch

    from backend.streaming import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before
