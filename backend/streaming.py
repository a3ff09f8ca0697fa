"""Live voice: emotion while the person is still speaking.

A LiveStream takes microphone chunks as they arrive (any rate, any channels), keeps the recording,
runs Silero VAD on it, and reads the emotion of the last `window` seconds of the current speech segment
at most every `hop` seconds of audio, through the process's Predictor (speech branch only: no ASR per
update). Silence and breaths never produce a reading; speech segments are the timeline. When the person
stops, `utterance()` gives the recording (trimmed to its speech) for the usual full analysis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from backend.labels import LABELS
from backend.media import MIN_AUDIO_SECONDS, prepare_audio
from backend.settings import Settings
from backend.types import SAMPLE_RATE, Sample
from backend.vad import FRAME, FRAME_SECONDS, StreamingVad, VadConfig

log = logging.getLogger(__name__)

NOT_SURE = "not sure"
MIN_READ_SECONDS = 0.5  # a speech segment needs this much before its first reading (shorter: breath, click)
MIN_VOICED_SECONDS = 0.3  # ... and this much of it clearly voiced (Silero >= threshold): a breath has ~0.1 s
HOP_SLACK_SECONDS = 0.1  # a reading may come this much before a full hop has passed
EDGE_SECONDS = 0.2  # kept around the speech when trimming the utterance for the full analysis

_THREADS = threading.Lock()  # torch's thread count is process-wide: one live reading sets it at a time

Reader = Callable[[list[np.ndarray]], list[dict[str, float]]]  # 16 kHz clips -> label -> probability


@dataclass(frozen=True)
class LiveConfig:
    """How often and over what the live reading looks; see bench/streaming.py for the figures."""

    window_s: float = 1.5
    hop_s: float = 0.5
    uncertain_threshold: float = 0.5
    min_read_s: float = MIN_READ_SECONDS
    min_voiced_s: float = MIN_VOICED_SECONDS
    max_seconds: float = 120.0
    vad: VadConfig = field(default_factory=VadConfig)

    @classmethod
    def from_settings(cls, settings: Settings, model_threshold: float | None = None) -> LiveConfig:
        """Settings' live_* fields; a calibrated `uncertain_threshold` from the model config wins."""
        threshold = settings.live_uncertain_threshold if model_threshold is None else float(model_threshold)
        return cls(
            window_s=settings.live_window_seconds,
            hop_s=settings.live_hop_seconds,
            uncertain_threshold=threshold,
            max_seconds=min(settings.live_max_seconds, settings.max_audio_seconds),
        )


@dataclass
class Reading:
    """One live reading: the emotion of the window [start, end] s of the stream."""

    start: float
    end: float
    probs: dict[str, float]
    threshold: float
    latency_ms: float = 0.0  # chunk arrival -> this reading ready

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)

    @property
    def confidence(self) -> float:
        return self.probs[self.label]

    @property
    def sure(self) -> bool:
        return self.confidence >= self.threshold

    @property
    def shown(self) -> str:
        """The label, or "not sure" when the top probability is under the threshold."""
        return self.label if self.sure else NOT_SURE


@dataclass
class LiveSegment:
    """A stretch of speech (VAD) and the readings taken in it; end is None while it goes on."""

    start: float
    end: float | None = None
    readings: list[Reading] = field(default_factory=list)
    voiced_s: float = 0.0  # seconds of frames at or above the VAD threshold

    @property
    def probs(self) -> dict[str, float]:
        """Mean of the segment's readings, weighted by how much speech each one saw (early ones saw little)."""
        if not self.readings:
            return {}
        weights = [r.end - r.start for r in self.readings]
        return {k: float(np.average([r.probs[k] for r in self.readings], weights=weights)) for k in LABELS}

    def to_dict(self, threshold: float) -> dict:
        probs = self.probs
        label = max(probs, key=probs.get) if probs else None
        sure = bool(label) and probs[label] >= threshold
        return {
            "start": round(self.start, 2),
            "end": None if self.end is None else round(self.end, 2),
            "label": label if sure else NOT_SURE,
            "top": label,
            "confidence": round(probs[label], 3) if label else None,
        }


@dataclass
class LiveUpdate:
    """What one chunk changed: the newest reading (None if this chunk gave none) and the state to show."""

    reading: Reading | None
    latest: Reading | None
    speaking: bool
    seconds: float
    segments: list[LiveSegment]
    threshold: float
    finished: bool = False

    def to_dict(self) -> dict:
        """JSON for the API: the current reading and the timeline of speech segments."""
        latest = self.latest
        return {
            "label": latest.shown if latest else None,
            "top": latest.label if latest else None,
            "confidence": round(latest.confidence, 3) if latest else None,
            "probs": {k: round(v, 4) for k, v in latest.probs.items()} if latest else {},
            "new_reading": self.reading is not None,
            "speaking": self.speaking,
            "seconds": round(self.seconds, 2),
            "threshold": self.threshold,
            "finished": self.finished,
            "segments": [s.to_dict(self.threshold) for s in self.segments if s.readings],
        }


@dataclass
class LiveStream:
    """One microphone's live state; keep it per session (gr.State). Not thread-safe: one stream, one caller."""

    config: LiveConfig = field(default_factory=LiveConfig)
    vad: StreamingVad | None = None
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # grows by doubling
    n_samples: int = 0
    frames_done: int = 0
    segments: list[LiveSegment] = field(default_factory=list)
    last_read_end: float = -1e9
    latest: Reading | None = None
    finished: bool = False

    def __post_init__(self) -> None:
        self.vad = self.vad or StreamingVad(self.config.vad)

    @property
    def seconds(self) -> float:
        return self.n_samples / SAMPLE_RATE

    @property
    def open_segment(self) -> LiveSegment | None:
        return self.segments[-1] if self.segments and self.segments[-1].end is None else None

    def push(self, audio: np.ndarray, reader: Reader, arrived: float | None = None) -> LiveUpdate:
        """Add 16 kHz mono samples; read the emotion when a hop of speech has passed since the last reading."""
        arrived = time.perf_counter() if arrived is None else arrived
        room = int(self.config.max_seconds * SAMPLE_RATE) - self.n_samples
        audio = np.asarray(audio, dtype=np.float32)[: max(0, room)]
        self._append(audio)
        closed = self._track_speech(*self.vad.push_probs(audio))
        reading = self._maybe_read(reader, closed, arrived)
        return self.update(reading)

    def finish(self, reader: Reader | None = None) -> LiveUpdate:
        """The person stopped: close the open segment (one last reading of its end when a reader is given)."""
        segment = self.open_segment
        reading = None
        if segment is not None:
            segment.end = self.frames_done * FRAME_SECONDS
            if reader is not None:
                reading = self._read_closed(reader, segment, time.perf_counter())
        self.segments = [s for s in self.segments if s.readings]
        self.finished = True
        return self.update(reading)

    def update(self, reading: Reading | None = None) -> LiveUpdate:
        return LiveUpdate(
            reading=reading,
            latest=self.latest,
            speaking=self.open_segment is not None,
            seconds=self.seconds,
            segments=list(self.segments),
            threshold=self.config.uncertain_threshold,
            finished=self.finished,
        )

    def recording(self) -> np.ndarray:
        """Everything heard so far, 16 kHz mono float32 (a view: copy it to keep it)."""
        return self.buffer[: self.n_samples]

    def utterance(self) -> np.ndarray | None:
        """The recording from the first to the last speech (with a small margin); None if nobody spoke."""
        spoken = [s for s in self.segments if s.readings]
        if not spoken:
            return None
        audio = self.recording()
        end = spoken[-1].end if spoken[-1].end is not None else self.seconds
        a = max(0, int((spoken[0].start - EDGE_SECONDS) * SAMPLE_RATE))
        b = min(len(audio), int((end + EDGE_SECONDS) * SAMPLE_RATE))
        return audio[a:b]

    # ------------------------------------------------------------------------------------------ internals

    def _append(self, audio: np.ndarray) -> None:
        """Amortised O(1) append: the buffer doubles when full (a reading then slices only its window)."""
        end = self.n_samples + len(audio)
        if end > len(self.buffer):
            grown = np.zeros(max(end, 2 * len(self.buffer), SAMPLE_RATE), dtype=np.float32)
            grown[: self.n_samples] = self.buffer[: self.n_samples]
            self.buffer = grown
        self.buffer[self.n_samples : end] = audio
        self.n_samples = end

    def _track_speech(self, flags: np.ndarray, probs: np.ndarray) -> LiveSegment | None:
        """Open/close segments from the VAD's per-frame flags; returns a segment closed by this chunk."""
        closed = None
        for on, p in zip(flags, probs):
            t = self.frames_done * FRAME_SECONDS
            segment = self.open_segment
            if on and segment is None:
                segment = LiveSegment(start=t)
                self.segments.append(segment)
            elif not on and segment is not None:
                segment.end = t
                closed, segment = segment, None
            if segment is not None and p >= self.config.vad.threshold:
                segment.voiced_s += FRAME_SECONDS
            self.frames_done += 1
        if closed is not None and not closed.readings and not self._readable(closed, closed.end):
            self.segments.remove(closed)  # a breath or a click: never read, never shown
            return None
        return closed

    def _readable(self, segment: LiveSegment, now: float) -> bool:
        """Long enough and clearly voiced enough to be speech worth reading."""
        return now - segment.start >= self.config.min_read_s and segment.voiced_s >= self.config.min_voiced_s

    def _maybe_read(self, reader: Reader, closed: LiveSegment | None, arrived: float) -> Reading | None:
        if closed is not None:
            return self._read_closed(reader, closed, arrived)
        segment = self.open_segment
        now = self.frames_done * FRAME_SECONDS
        if segment is None or not self._readable(segment, now):
            return None
        slack = min(HOP_SLACK_SECONDS, self.config.hop_s / 3)  # chunks end off the hop grid: don't skip a hop
        if now - self.last_read_end < self.config.hop_s - slack:
            return None
        return self._read(reader, segment, now, arrived)

    def _read_closed(self, reader: Reader, segment: LiveSegment, arrived: float) -> Reading | None:
        """A segment just ended: one reading of its last window unless the latest one already covers it."""
        if not self._readable(segment, segment.end):
            return None
        if segment.readings and segment.end - segment.readings[-1].end < self.config.hop_s / 2:
            return None
        return self._read(reader, segment, segment.end, arrived)

    def _read(self, reader: Reader, segment: LiveSegment, end: float, arrived: float) -> Reading:
        start = max(segment.start, end - self.config.window_s)
        audio = self.recording()[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        probs = reader([audio])[0]
        reading = Reading(start, end, probs, self.config.uncertain_threshold)
        reading.latency_ms = (time.perf_counter() - arrived) * 1000.0
        segment.readings.append(reading)
        self.last_read_end = end
        self.latest = reading
        return reading


def to_16k(rate: int, samples: np.ndarray, settings: Settings) -> np.ndarray:
    """A browser chunk (rate, int16 (n,) or (n, channels)) as 16 kHz mono float32 (backend.media's rules)."""
    samples = np.asarray(samples)
    if len(samples) < MIN_AUDIO_SECONDS * max(1, int(rate)):  # the last scrap when recording stops
        return np.zeros(0, dtype=np.float32)
    relaxed = dataclasses.replace(settings, silence_rms=0.0)  # a quiet chunk is data here, not an error
    return prepare_audio(samples, int(rate), relaxed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n torch threads, then put the process's number back (n = 0: leave it alone)."""
    import torch

    if n <= 0:
        yield
        return
    with _THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def speech_reader(predictor, threads: int = 0) -> Reader:
    """Speech-only readings through the Predictor: same model and lock, ASR and timelines off.

    threads: torch threads per reading on the CPU. A 1.5 s window is a small forward: on the shared 2-core box
    one thread gave p50/p95 139/171 ms against 197/331 ms with two (they wait on each other under load)."""
    from backend.predictor import Predictor

    settings = dataclasses.replace(predictor.settings, asr=False, timeline_min_seconds=float("inf"))
    live = Predictor(predictor.model, settings)
    live.lock = predictor.lock  # one forward at a time across the full analysis and live readings
    threads = threads if predictor.device.type == "cpu" else 0

    def read(clips: list[np.ndarray]) -> list[dict[str, float]]:
        with torch_threads(threads):
            return [p.probs for p in live.predict_batch([Sample(audio=c) for c in clips])]

    return read


def model_threshold(predictor) -> float | None:
    """The model config's calibrated `uncertain_threshold`, when it has one (0 or absent: not calibrated)."""
    value = getattr(predictor.model.config, "uncertain_threshold", None)
    return float(value) if value else None


__all__ = [
    "FRAME",
    "NOT_SURE",
    "LiveConfig",
    "LiveSegment",
    "LiveStream",
    "LiveUpdate",
    "Reading",
    "model_threshold",
    "speech_reader",
    "to_16k",
]
