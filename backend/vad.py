"""Voice activity detection for live audio: Silero VAD (the onnx model the `silero-vad` wheel ships).

One onnxruntime session per process (sessions are thread-safe); each stream keeps its own recurrent state,
so many microphones can share the model. Audio in is 16 kHz mono float32, in any chunk sizes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.types import SAMPLE_RATE

log = logging.getLogger(__name__)

FRAME = 512  # samples per VAD decision at 16 kHz (32 ms), fixed by the Silero model
CONTEXT = 64  # samples of the previous frame the model sees before each frame
STATE_SHAPE = (2, 1, 128)  # Silero's recurrent state for one stream
FRAME_SECONDS = FRAME / SAMPLE_RATE


@functools.cache
def _session():
    """The Silero onnx model, loaded once (1 thread: a frame costs ~0.1 ms; threads only add overhead)."""
    import onnxruntime

    spec = importlib.util.find_spec("silero_vad")  # the file only: importing the package would import torch
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the silero-vad wheel is needed for live voice: pip install silero-vad")
    path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    log.info("loading Silero VAD from %s", path)
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class VadConfig:
    """Hysteresis on Silero's per-frame speech probability, as in silero-vad's own VADIterator."""

    threshold: float = 0.5  # a frame at or above this starts (or continues) speech
    neg_threshold: float = 0.35  # speech ends only after frames below this ...
    min_silence_s: float = 0.3  # ... for this long (short pauses inside a phrase stay speech)


@dataclass
class StreamingVad:
    """Per-stream VAD: push 16 kHz audio, get one speech/non-speech flag per 32 ms frame."""

    config: VadConfig = field(default_factory=VadConfig)
    _state: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, dtype=np.float32))
    _context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, dtype=np.float32))
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    _speaking: bool = False
    _quiet_frames: int = 0

    def probability(self, frame: np.ndarray) -> float:
        """Silero's speech probability for one 512-sample frame (advances this stream's state)."""
        assert frame.shape == (FRAME,), f"expected a ({FRAME},) frame, got {frame.shape}"
        x = np.concatenate([self._context, frame]).astype(np.float32)[None, :]
        inputs = {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)}
        out, self._state = _session().run(None, inputs)
        self._context = x[0, -CONTEXT:]
        return float(out[0, 0])

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Flags (bool, one per complete frame) for the audio pushed so far; a partial frame waits for more."""
        return self.push_probs(audio)[0]

    def push_probs(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flags, probabilities) per complete frame: flags after hysteresis, Silero's raw probabilities."""
        samples = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        n = len(samples) // FRAME
        self._pending = samples[n * FRAME :]
        flags = np.zeros(n, dtype=bool)
        probs = np.zeros(n, dtype=np.float32)
        hang = max(1, round(self.config.min_silence_s / FRAME_SECONDS))
        for i in range(n):
            p = probs[i] = self.probability(samples[i * FRAME : (i + 1) * FRAME])
            if p >= self.config.threshold:
                self._speaking, self._quiet_frames = True, 0
            elif self._speaking and p < self.config.neg_threshold:
                self._quiet_frames += 1
                if self._quiet_frames >= hang:
                    self._speaking = False
            flags[i] = self._speaking
        return flags, probs

    @property
    def buffered(self) -> int:
        """Samples waiting for a complete frame."""
        return len(self._pending)


def speech_spans(audio: np.ndarray, config: VadConfig | None = None) -> list[tuple[float, float]]:
    """(start, end) seconds of speech in a whole 16 kHz clip (offline use: tests, choosing clips)."""
    flags = StreamingVad(config or VadConfig()).push(audio)
    spans: list[tuple[float, float]] = []
    start = None
    for i, on in enumerate([*flags, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append((start * FRAME_SECONDS, i * FRAME_SECONDS))
            start = None
    return spans
