"""Predictor: Sample(s) in, Prediction(s) out. One cached instance per process (load_predictor)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from backend.adapt import SpeakerStats
from backend.branches import (
    face_eval_logits,
    shifted_speech_logits,
    speech_embed_batched,
    speech_forward_batched,
    text_forward,
)
from backend.errors import MediaError
from backend.fast_speech import GRAPH_MAX_BATCH, FastSpeech
from backend.labels import LABELS, MODALITIES
from backend.model import EmotionModel
from backend.priority_lock import PriorityLock
from backend.settings import Settings, load_settings
from backend.speech import whisper_pieces
from backend.types import SAMPLE_RATE, Face, ModalityResult, Prediction, Sample, Segment, probs_dict

log = logging.getLogger(__name__)

WHISPER_MAX_SECONDS = 30.0  # Whisper's positional table covers 30 s; longer audio is windowed
LONG_CLIP_SECONDS = WHISPER_MAX_SECONDS  # longer audio can be analysed in steps (predict_steps)
# timeline windows per step of a long analysis; between steps waiting requests go first. On a CPU one window
# (~0.1 s): a text-only request during a 10-minute analysis waits at most about one step (p95 0.19-0.23 s against
# 0.27-0.29 s with two windows a step), and the analysis takes 106-112 s against 82-92 s (bench/RESULTS.md). On
# CUDA a step fits one captured graph (one launch)
STEP_WINDOWS = {"cpu": 1, "cuda": GRAPH_MAX_BATCH}


def pick_device(setting: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def windows(n_samples: int, seconds: float, hop: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges of fixed windows with overlap, the last one flush with the end."""
    size, step = int(seconds * SAMPLE_RATE), int(hop * SAMPLE_RATE)
    if n_samples <= size:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - size + 1, step))
    if starts[-1] + size < n_samples:
        starts.append(n_samples - size)
    return [(s, s + size) for s in starts]


@dataclass
class _Work:
    """Per-batch scratch: which sample each unit of work belongs to."""

    speech_units: list[tuple[int, str, int, int]] = field(default_factory=list)  # (sample, kind, start, end)
    speech_probs: dict[int, np.ndarray] = field(default_factory=dict)
    segments: dict[int, list[Segment]] = field(default_factory=dict)
    text_probs: dict[int, np.ndarray] = field(default_factory=dict)
    transcripts: dict[int, str] = field(default_factory=dict)
    faces: dict[int, list[Face]] = field(default_factory=dict)
    face_probs: dict[int, np.ndarray] = field(default_factory=dict)
    notes: dict[int, list[str]] = field(default_factory=dict)
    speakers: list[SpeakerStats | None] = field(default_factory=list)  # per sample, for unlabelled adaptation


class Predictor:
    """Runs every present modality of each sample, then the fusion gate."""

    def __init__(self, model: EmotionModel, settings: Settings | None = None) -> None:
        self.model = model.eval()
        self.settings = settings or load_settings()
        self.lock = PriorityLock()  # one forward at a time per process; requests before long jobs' steps
        # the text branch, one call at a time (a fast tokenizer must not be shared between threads). Text-only
        # requests take only this one, so a long clip's speech step never makes them wait
        self.text_lock = threading.RLock()
        self.fast_speech = self._fast_speech()
        if self.settings.asr and getattr(model.speech, "kind", "") == "whisper":
            from backend.asr import preload

            preload(model.speech, self.device)  # CTranslate2 Whisper loads while the app starts serving

    def _fast_speech(self) -> FastSpeech | None:
        """The inference speech path (built once per loaded model): bf16 + CUDA graphs on a GPU, float32 with the
        adapters merged on a CPU (the same numbers to 1e-6, ~15% fewer FLOPs); None when off or not buildable."""
        if not self.settings.fast_speech or getattr(self.model.speech, "kind", "") != "whisper":
            return None
        try:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            return FastSpeech(self.model, dtype=dtype)
        except Exception:  # an unusual backbone must not stop the app: the reference path computes the same
            log.warning("fast speech path unavailable; using the reference path", exc_info=True)
            return None

    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def device(self) -> torch.device:
        return self.model.device

    def predict(self, sample: Sample) -> Prediction:
        return self.predict_batch([sample])[0]

    def predict_batch(
        self,
        samples: list[Sample],
        faces_are_crops: bool = False,
        speakers: list[SpeakerStats | None] | None = None,
        update_speakers: bool = True,
    ) -> list[Prediction]:
        """Predict many samples; faces_are_crops: frames are already face crops (e.g. FER2013 images).

        speakers: per sample, the statistics of its speaker's (session's, folder's) earlier clips (backend.adapt):
        speech is read after moving that speaker's mean to the training mean once there are enough clips; each
        sample's whole-clip embedding is then added to its stats (update_speakers=False: leave them as given).
        """
        start = time.perf_counter()
        work = _Work(notes={i: [] for i in range(len(samples))}, speakers=list(speakers or [None] * len(samples)))
        assert len(work.speakers) == len(samples), "one SpeakerStats (or None) per sample"
        text_only = all(s.text_only for s in samples)
        with self.text_lock if text_only else self.lock, torch.inference_mode(), self._autocast():
            transcripts = self._start_asr(samples)  # CTranslate2 transcribes while the audio branch runs
            self._run_speech(samples, work, update_speakers)
            work.transcripts.update(transcripts() if transcripts else {})
            self._run_text(samples, work)
            self._run_faces(samples, work, faces_are_crops)
            fused = self._fuse_all(len(samples), work)
            elapsed = (time.perf_counter() - start) * 1000 / max(1, len(samples))
            return [self._prediction(i, s, work, *fused[i], elapsed) for i, s in enumerate(samples)]

    def is_long(self, sample: Sample) -> bool:
        """Audio long enough to be analysed in steps (predict_steps) rather than in one go."""
        return sample.audio is not None and sample.duration > LONG_CLIP_SECONDS

    def predict_steps(self, sample: Sample) -> Iterator[float | Prediction]:
        """predict(sample) in short steps for a long clip: yields the fraction done after each step, then the
        Prediction (the same as predict's). Between steps the lock is free and waiting requests go first; the
        transcription of a long clip runs on CTranslate2's own low-priority threads, outside the lock."""
        if not self.is_long(sample):
            yield self.predict(sample)
            return
        start, work = time.perf_counter(), _Work(notes={0: []})
        ranges = windows(len(sample.audio), self.settings.segment_seconds, self.settings.segment_hop)
        size = STEP_WINDOWS.get(self.device.type, STEP_WINDOWS["cpu"])
        groups = [ranges[k : k + size] for k in range(0, len(ranges), size)]
        pieces = self._asr_pieces(sample)
        total, done = len(groups) + len(pieces) + 1, 0
        segments: list[Segment] = []
        for group in groups:
            with self.lock.low(), torch.inference_mode(), self._autocast():
                segments += self._segments(sample.audio, group)
            done += 1
            yield done / total
        work.segments[0] = segments
        work.speech_probs[0] = np.mean([[seg.probs[k] for k in LABELS] for seg in segments], axis=0)
        texts = []
        for piece in pieces:
            texts.append(self._transcribe_step(piece))
            done += 1
            yield done / total
        if pieces:
            work.transcripts[0] = " ".join(t for t in texts if t)
        with self.lock.low(), torch.inference_mode(), self._autocast():
            self._run_text([sample], work)
            self._run_faces([sample], work, False)
            fused = self._fuse_all(1, work)[0]
            prediction = self._prediction(0, sample, work, *fused, (time.perf_counter() - start) * 1000)
        yield prediction  # outside the lock: the caller may close the generator from another thread

    def _segments(self, audio: np.ndarray, ranges: list[tuple[int, int]]) -> list[Segment]:
        """Timeline segments of audio[a:b] for each (a, b)."""
        probs = self._calibrated(speech_forward_batched(self.model, [audio[a:b] for a, b in ranges]), "speech")
        return [Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, probs_dict(p)) for (a, b), p in zip(ranges, probs)]

    def _asr_pieces(self, sample: Sample) -> list[np.ndarray]:
        """The 30 s pieces of this sample to transcribe (none without ASR or with given text)."""
        if not self.settings.asr or getattr(self.model.speech, "kind", "") != "whisper" or sample.text:
            return []
        return whisper_pieces([sample.audio])[0] if len(sample.audio) else []

    def _transcribe_step(self, piece: np.ndarray) -> str:
        """One piece of a long clip: CTranslate2's low-priority engine needs no lock (it shares no state with
        the model); the transformers fallback switches adapters off in the model, so it takes the lock."""
        from backend import asr

        language = self.settings.asr_language
        engine = asr.ct2_engine(self.model.speech, self.device, background=True)
        if engine is not None:
            return asr.ct2_transcribe(engine, [piece], language=language)[0]
        with self.lock.low(), torch.inference_mode():
            return asr.transformers_transcribe(self.model.speech, [piece], language=language)[0]

    def predict_chunked(self, samples: list[Sample], chunk: int = 16) -> list[Prediction]:
        """predict_batch over a long list, `chunk` samples at a time: bounded memory for evaluation jobs."""
        return [p for a in range(0, len(samples), chunk) for p in self.predict_batch(samples[a : a + chunk])]

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _calibrated(self, logits: torch.Tensor, modality: str) -> np.ndarray:
        return self.model.heads.gate.calibrated(logits.to(self.device), modality).float().cpu().numpy()

    def _run_speech(self, samples: list[Sample], work: _Work, update_speakers: bool = True) -> None:
        s = self.settings
        for i, sample in enumerate(samples):
            if sample.audio is None:
                continue
            n = len(sample.audio)
            if sample.duration <= WHISPER_MAX_SECONDS:
                work.speech_units.append((i, "whole", 0, n))
            if sample.duration >= s.timeline_min_seconds or sample.duration > WHISPER_MAX_SECONDS:
                for a, b in windows(n, s.segment_seconds, s.segment_hop):
                    work.speech_units.append((i, "segment", a, b))
        if not work.speech_units:
            return
        clips = [samples[i].audio[a:b] for i, _, a, b in work.speech_units]
        logits, emb = speech_embed_batched(self.model, clips, fast=self.fast_speech)
        logits = self._adapted(logits, emb, [i for i, *_ in work.speech_units], work.speakers, work.notes)
        if update_speakers:
            for row, (i, kind, *_) in enumerate(work.speech_units):
                if kind == "whole" and work.speakers[i] is not None:
                    work.speakers[i].add(emb[row].numpy())
        probs = self._calibrated(logits, "speech")
        for (i, kind, a, b), p in zip(work.speech_units, probs):
            if kind == "whole":
                work.speech_probs[i] = p
            else:
                work.segments.setdefault(i, []).append(Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, probs_dict(p)))
        for i, segs in work.segments.items():
            if i not in work.speech_probs:  # longer than Whisper's window: average the timeline
                work.speech_probs[i] = np.mean([[seg.probs[k] for k in LABELS] for seg in segs], axis=0)

    def _adapted(
        self,
        logits: torch.Tensor,
        emb: torch.Tensor,
        owners: list[int],
        speakers: list[SpeakerStats | None],
        notes: dict[int, list[str]],
    ) -> torch.Tensor:
        """Logits of the rows whose speaker has enough earlier clips, re-read from shifted embeddings."""
        reference = self.model.heads.speech_head.reference_mean.float().cpu().numpy()
        shifts = {i: st.shift(reference) for i, st in enumerate(speakers) if st is not None}
        rows = [r for r, i in enumerate(owners) if shifts.get(i) is not None]
        if not rows:
            return logits
        for i in sorted({owners[r] for r in rows}):
            notes[i].append(f"Speech read after adapting to this voice ({speakers[i].count} earlier clips).")
        shift = torch.from_numpy(np.stack([shifts[owners[r]] for r in rows]))
        logits = logits.clone()
        logits[rows] = shifted_speech_logits(self.model, emb[rows], shift)
        return logits

    def _start_asr(self, samples: list[Sample]) -> Callable[[], dict[int, str]] | None:
        """Start transcribing the samples' audio (none without ASR or with given text); returns what collects the
        transcripts per sample. CTranslate2 runs on its own threads without the GIL, so it is submitted now and
        overlaps the audio branch; the transformers fallback runs when collected, in turn, because it shares the
        backbone (its adapters switched off while it runs). Both split clips over 30 s and join their texts."""
        owners = [i for i, smp in enumerate(samples) if smp.audio is not None and self._asr_pieces(smp)]
        if not owners:
            return None
        from backend import asr

        clips, language = [samples[i].audio for i in owners], self.settings.asr_language
        engine = asr.ct2_engine(self.model.speech, self.device)
        if engine is None:
            texts = lambda: asr.transformers_transcribe(self.model.speech, clips, language=language)  # noqa: E731
        elif not self.settings.asr_beside_audio:
            texts = lambda: asr.ct2_transcribe(engine, clips, language=language)  # noqa: E731
        else:
            texts = self._asr_pool.submit(asr.ct2_transcribe, engine, clips, language=language).result
        return lambda: {i: text.strip() for i, text in zip(owners, texts())}

    @functools.cached_property
    def _asr_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")

    def _run_text(self, samples: list[Sample], work: _Work) -> None:
        idx, texts = [], []
        for i, smp in enumerate(samples):
            text = smp.text or work.transcripts.get(i, "")
            if text.strip():
                idx.append(i)
                texts.append(text)
        with self.text_lock:
            for a in range(0, len(texts), 64):
                logits, _ = text_forward(self.model, texts[a : a + 64])
                for i, p in zip(idx[a : a + 64], self._calibrated(logits, "text")):
                    work.text_probs[i] = p

    def _run_faces(self, samples: list[Sample], work: _Work, faces_are_crops: bool) -> None:
        import cv2

        from backend.face import crop_faces, detect_faces, normalize_face, to_gray

        size = self.model.config.face_size
        crops, owners = [], []  # owners: (sample, frame, box, is_main)
        for i, smp in enumerate(samples):
            for f, frame in enumerate(smp.frames or []):
                if faces_are_crops:
                    h, w = frame.shape[:2]
                    crops.append(normalize_face(cv2.resize(to_gray(frame), (size, size), interpolation=cv2.INTER_AREA)))
                    owners.append((i, f, (0, 0, w, h), True))
                    continue
                boxes = detect_faces(frame)
                for k, crop in enumerate(crop_faces(frame, boxes, size=size)):
                    crops.append(crop)
                    owners.append((i, f, tuple(int(v) for v in boxes[k]), k == 0))
            if smp.frames and not any(o[0] == i for o in owners):
                work.notes[i].append("No face found in the image or video; the face was not read.")
        if not crops:
            return
        probs = self._calibrated(face_eval_logits(self.model, np.stack(crops)), "face")
        main: dict[int, list[np.ndarray]] = {}
        for (i, f, box, is_main), p in zip(owners, probs):
            work.faces.setdefault(i, []).append(Face(box=box, frame_index=f, probs=probs_dict(p)))
            if is_main:
                main.setdefault(i, []).append(p)
        for i, ps in main.items():
            work.face_probs[i] = np.mean(ps, axis=0)

    def _fuse_all(self, n: int, work: _Work) -> list[tuple[np.ndarray, dict[str, tuple[np.ndarray, float]]]]:
        """The fusion gate over every sample in one batched call (absent modalities masked out).
        Returns per sample (fused probs, modality -> (its probs, the weight fusion gave it))."""
        sources = {"speech": work.speech_probs, "text": work.text_probs, "face": work.face_probs}
        probs = np.full((n, len(MODALITIES), len(LABELS)), 1.0 / len(LABELS), dtype=np.float32)
        present = np.zeros((n, len(MODALITIES)), dtype=bool)
        for j, m in enumerate(MODALITIES):
            for i, p in sources[m].items():
                probs[i, j], present[i, j] = p, True
        if not present.any(axis=1).all():
            raise MediaError("nothing to predict: the sample has no usable audio, text or face")
        if n == 0:
            return []
        gate = self.model.heads.gate
        with torch.inference_mode():
            fused, weights = gate.fuse(torch.from_numpy(probs).to(gate.bias.device), torch.from_numpy(present))
        fused, weights = fused.float().cpu().numpy(), weights.float().cpu().numpy()
        return [
            (fused[i], {m: (probs[i, j], float(weights[i, j])) for j, m in enumerate(MODALITIES) if present[i, j]})
            for i in range(n)
        ]

    def _prediction(
        self, i: int, sample: Sample, work: _Work, fused: np.ndarray, present: dict, latency_ms: float
    ) -> Prediction:
        modalities = {
            m: ModalityResult(probs=probs_dict(present[m][0]), weight=present[m][1]) for m in MODALITIES if m in present
        }
        text = sample.text or work.transcripts.get(i)
        words = self.model.lexicon.tag_words(text) if text else []
        uncertain, alternatives = not_sure(fused, self.model.config.uncertain_threshold)
        return Prediction(
            uncertain=uncertain,
            alternatives=alternatives,
            probs=probs_dict(fused),
            modalities=modalities,
            model_version=self.model_version,
            transcript=work.transcripts.get(i),
            words=words,
            faces=work.faces.get(i, []),
            timeline=work.segments.get(i, []),
            duration=sample.duration,
            latency_ms=latency_ms,
            notes=work.notes[i],
        )


def not_sure(probs: np.ndarray, threshold: float) -> tuple[bool, list[str]]:
    """(uncertain, the two likeliest labels) when the top probability is below threshold (0: never unsure)."""
    if threshold <= 0 or float(np.max(probs)) >= threshold:
        return False, []
    return True, [LABELS[k] for k in np.argsort(probs)[::-1][:2]]


@functools.lru_cache(maxsize=2)
def _cached_predictor(name: str, settings: Settings) -> Predictor:
    device = pick_device(settings.device)
    log.info("loading model %s on %s", name, device)
    return Predictor(EmotionModel.from_pretrained(name, cache=settings.cache, device=device), settings)


def load_predictor(model: str | None = None, settings: Settings | None = None) -> Predictor:
    """The process's predictor for a model path/Hub id; loaded once per process and model.

    Without `model`: the registry's choice (EMO_MODEL if pinned, else the last promoted version, else the
    shipped default), checked on every call so a promotion is picked up without a restart.
    """
    from backend.registry import current_model

    settings = settings or load_settings()
    return _cached_predictor(str(model or current_model(settings)), settings)
