"""Speech-branch inference speed: the naive way and a plain encoder beside the project's Predictor, same clips.

Each step separated, like for like (same clips, same lengths, same batches):
naive:      a per-clip loop as a transformers pipeline does it - WhisperFeatureExtractor on the CPU (pads to 30 s),
            the encoder's own forward in float32 over 3000 mel frames, then the same head and calibration.
naive_trim: the same per-clip float32 loop, input trimmed to the clip (+ margin) instead of 30 s: the trimming gain.
eager:      Predictor.predict_batch with fast_speech off: batched, length buckets, log-mel on the device, bf16
            autocast over float32 weights, LoRA as extra matmuls (the path before backend.fast_speech).
ours:       Predictor.predict_batch (audio only, no ASR, no timeline): backend.fast_speech on CUDA (LoRA merged,
            bf16 weights, fused qkv, masked SDPA, layer mix accumulated, CUDA graphs for batches <= 16, one
            torch.compile with dynamic shapes above; the compile happens in the untimed warm-up call).
branch:     the Predictor's audio branch alone (speech_embed_batched + calibration), without Prediction objects.
plain:      the anchor: transformers' Whisper-base encoder layers in bf16 (no LoRA, no mask, no loudness
            normalisation), trimmed the same way, mean-pooled last state, a linear head. plain30: padded to 30 s.
With --accuracy-data, the accuracy of naive, naive_trim, eager and ours on RAVDESS dev actors 17-20 (same clips).

    python bench/inference.py --model models/default --device cpu --batches 1,8 --out runs/bench/infer_cpu.json
    python bench/inference.py --model models/default --device cuda --out $OUT/infer_gpu.json   # H100

Prints a table and one JSON object (rows: impl, device, batch, seconds, p50/p95 latency per batch, clips/s,
audio seconds/s, peak memory) plus, on CUDA, the roofline: analytic encoder FLOPs per clip against a measured
bf16 matrix-product rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.branches import speech_embed_batched, speech_forward
from backend.model import EmotionModel
from backend.predictor import Predictor
from backend.settings import DEFAULT_MODEL_DIR, load_settings
from backend.speech import HOP_LENGTH, N_FRAMES, log_mel, pad_on_host, padded_frames, whisper_encoder_states
from backend.types import SAMPLE_RATE, Sample

log = logging.getLogger(__name__)


def with_backbones(model: str, speech: str | None, text: str | None) -> str:
    """A copy of the model folder whose config points at local backbone folders (offline GPU machines)."""
    if not speech and not text:
        return model
    folder = Path(tempfile.mkdtemp(prefix="emo-model-")) / "model"
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update({k: v for k, v in (("speech_backbone", speech), ("text_backbone", text)) if v})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return str(folder)


def make_clips(n: int, seconds: float, seed: int) -> list[np.ndarray]:
    """Speech-like random clips (harmonics + noise, lengths jittered by up to -10%); never zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(seconds * SAMPLE_RATE * rng.uniform(0.9, 1.0))
        t = np.arange(size) / SAMPLE_RATE
        f0 = rng.uniform(90, 250)
        wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        out.append((0.05 * wave + 0.01 * rng.standard_normal(size)).astype(np.float32))
    return out


class NaiveSpeech:
    """Per clip: CPU feature extractor padded to 30 s, encoder.forward (float32), head, calibration."""

    def __init__(self, model: EmotionModel) -> None:
        self.model = model
        self.extractor = model.speech.processor.feature_extractor
        self.encoder = model.speech.model.get_encoder()

    @torch.inference_mode()
    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        out = []
        for clip in clips:
            mel = self.extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            states = self.encoder(mel.to(self.model.device), output_hidden_states=True).hidden_states
            states = torch.stack(states, dim=1)
            valid = (len(clip) // 160 + 1) // 2
            mask = torch.arange(states.shape[2], device=states.device)[None] < valid
            logits, _ = self.model.heads.speech_head(states, mask)
            out.append(self.model.heads.gate.calibrated(logits, "speech").float().cpu().numpy()[0])
        return np.stack(out)


class NaiveTrimSpeech:
    """naive's per-clip float32 loop with the input trimmed to the clip: only the trimming differs."""

    def __init__(self, model: EmotionModel) -> None:
        self.model = model

    @torch.inference_mode()
    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.autocast(self.model.device.type, enabled=False):
            for clip in clips:
                logits, _ = speech_forward(self.model, [clip])
                out.append(self.model.heads.gate.calibrated(logits, "speech").float().cpu().numpy()[0])
        return np.stack(out)


class PlainEncoder:
    """The anchor: transformers' Whisper encoder layers, bf16 weights, no mask, mean-pooled, linear head."""

    def __init__(self, model: EmotionModel, pad30: bool = False) -> None:
        import copy

        from backend.lora import LoRALinear

        self.device, self.pad30 = model.device, pad30
        encoder = copy.deepcopy(model.speech.model.get_encoder())
        for module in list(encoder.modules()):  # the pretrained Linear inside every LoRA wrap, unwrapped
            for child_name, child in list(module.named_children()):
                if isinstance(child, LoRALinear):
                    setattr(module, child_name, child.base)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.encoder = encoder.to(self.device, dtype).eval()
        self.dtype = dtype
        self.head = torch.nn.Linear(encoder.config.d_model, 7).to(self.device, dtype)

    @torch.inference_mode()
    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        host, _ = pad_on_host(clips, pin=self.device.type == "cuda")
        return self.forward(host.to(self.device, non_blocking=True)).float().softmax(-1).cpu().numpy()

    @torch.inference_mode()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """A zero-padded batch already on the device (B, n) -> logits (B, 7) on the device."""
        frames = N_FRAMES if self.pad30 else padded_frames(wave.shape[1])
        wave = torch.nn.functional.pad(wave, (0, frames * HOP_LENGTH - wave.shape[1]))
        mel = log_mel(wave, self.encoder.config.num_mel_bins).to(self.dtype)
        last = whisper_encoder_states(self.encoder, mel)[:, -1]
        return self.head(last.mean(1))


class OursSpeech:
    """The project's Predictor on audio-only samples (fast: backend.fast_speech; off: the reference path)."""

    def __init__(self, model: EmotionModel, fast: bool = True) -> None:
        settings = load_settings(asr=False, timeline_min_seconds=1e9, fast_speech=fast)
        self.predictor = Predictor(model, settings)

    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        preds = self.predictor.predict_batch([Sample(audio=c) for c in clips])
        return np.array([[p.probs[k] for k in p.probs] for p in preds])


class OursBranch:
    """The Predictor's audio branch alone: its fast path through speech_embed_batched (length buckets, padding,
    copy, forward) and calibration to probabilities, without building Prediction objects."""

    def __init__(self, ours: OursSpeech, varlen: bool = True, group: tuple[float, int] | None = None) -> None:
        """group: (seconds, clips) per forward instead of backend.branches' GPU defaults."""
        self.predictor, self.group = ours.predictor, group or (None, None)
        fast = self.predictor.fast_speech
        if not varlen and fast is not None:  # the masked scaled-dot-product attention instead
            fast.varlen = None

    @torch.inference_mode()
    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        p = self.predictor
        seconds, batch = self.group
        logits, _ = speech_embed_batched(p.model, clips, max_batch=batch, max_seconds=seconds, fast=p.fast_speech)
        return p.model.heads.gate.calibrated(logits.to(p.device), "speech").float().cpu().numpy()


class PeakRss:
    """Peak resident memory over a region (sampled every 2 ms from /proc/self/statm), in MiB above the start."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * 4096 / 2**20
        except OSError:
            return 0.0

    @property
    def mib(self) -> float:
        return self.peak - self.base


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[list[np.ndarray]], np.ndarray],
    sets: list[list[np.ndarray]],
    device: torch.device,
    min_reps: int,
    budget_s: float,
    max_reps: int = 200,
) -> dict:
    """Warm up once, then time whole calls (synchronised) rotating over input sets until both limits are met."""
    fn(sets[0])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    with PeakRss() as rss:
        start = time.perf_counter()
        while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
            clips = sets[len(times) % len(sets)]
            t0 = time.perf_counter()
            fn(clips)
            sync(device)
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else rss.mib
    return {
        "reps": len(times),
        "p50_ms": 1000 * float(np.median(times)),
        "p95_ms": 1000 * float(np.percentile(times, 95)),
        "peak_mib": round(peak, 1),
    }


def encoder_flops(model: EmotionModel, samples: int) -> float:
    """Multiply-adds x 2 of one trimmed Whisper encoder pass (convs, projections, attention, MLP) and the head."""
    c = model.speech.model.config
    frames = padded_frames(samples)
    t, d, f, n = frames // 2, c.d_model, c.encoder_ffn_dim, c.encoder_layers
    conv = 2 * frames * c.num_mel_bins * 3 * d + 2 * t * d * 3 * d
    per_layer = 2 * t * (4 * d * d + 2 * d * f) + 2 * 2 * t * t * d
    return float(conv + n * per_layer)


def matmul_peak(device: torch.device, n: int = 8192) -> float:
    """Measured bf16 matrix-product rate (FLOP/s) on random data: the compute ceiling used for the roofline."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def branch_variant(model: EmotionModel, name: str) -> OursBranch:
    """'branch@S' / 'branch@S/B': at most S seconds of audio (and B clips) per forward; 'branch_nographs': no CUDA
    graphs. Each its own Predictor (no shared state)."""
    if name == "branch_nographs":  # batches of <= 16 clips packed too, not replayed from a CUDA graph
        branch = OursBranch(OursSpeech(model))
        if branch.predictor.fast_speech is not None:
            branch.predictor.fast_speech.graphs_enabled = False
        return branch
    head, _, spec = name.partition("@")
    if head != "branch" or not spec:
        raise SystemExit(f"unknown impl {name!r}")
    seconds, _, batch = spec.partition("/")
    return OursBranch(OursSpeech(model), group=(float(seconds), int(batch) if batch else 256))


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    settings = load_settings(device=args.device)
    folder = with_backbones(args.model, args.speech_backbone, None)
    t0 = time.perf_counter()
    model = EmotionModel.from_pretrained(folder, cache=settings.cache, device=device)
    load_s = time.perf_counter() - t0
    makers = {
        "naive": lambda: NaiveSpeech(model),
        "naive_trim": lambda: NaiveTrimSpeech(model),
        "eager": lambda: OursSpeech(model, fast=False),
        "ours": lambda: OursSpeech(model),
        "branch": lambda: OursBranch(impls.get("ours") or OursSpeech(model)),
        "branch_sdpa": lambda: OursBranch(OursSpeech(model), varlen=False),
        "plain": lambda: PlainEncoder(model),
        "plain30": lambda: PlainEncoder(model, pad30=True),
    }
    impls: dict = {}
    for k in args.impls.split(","):
        impls[k] = makers[k]() if k in makers else branch_variant(model, k)
    rows = []
    batches = [int(b) for b in args.batches.split(",")]
    for seconds in [float(s) for s in args.seconds.split(",")]:
        pool = make_clips(2 * max(batches), seconds, seed=int(seconds))
        for batch in batches:
            for name, fn in impls.items():
                # naive loops clip by clip: its clips/s does not depend on the batch, so big batches are timed on fewer
                looped = name.startswith("naive")
                measured = args.naive_max_batch if looped and batch > args.naive_max_batch else batch
                if device.type == "cpu" and measured * seconds > args.cpu_max_audio:
                    continue
                sets = [pool[:measured], pool[measured : 2 * measured]]
                reps = 1 if measured * seconds > 60 and device.type == "cpu" else 3
                r = measure(fn, sets, device, min_reps=reps, budget_s=args.budget_s)
                audio = sum(len(c) for c in sets[0]) / SAMPLE_RATE
                row = {
                    "impl": name,
                    "device": device.type,
                    "batch": batch,
                    "measured_batch": measured,
                    "seconds": seconds,
                    **r,
                }
                row["clips_per_s"] = measured / (r["p50_ms"] / 1000)
                row["audio_s_per_s"] = audio / (r["p50_ms"] / 1000)
                rows.append(row)
                log.warning("%s", {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model_load_s": round(load_s, 2),
        "rows": rows,
        "speedup": speedups(rows),
    }
    if args.accuracy_data:
        report["accuracy"] = accuracy(impls, Path(args.accuracy_data))
    if device.type == "cuda":
        report["roofline"] = roofline(model, rows, device)
        if args.profile and "ours" in impls:
            report["profile"] = profile_ours(impls["ours"], device)
        if args.stages:
            report["stages"] = [stages(impls, device, b, s, args.variants) for b, s in ((256, 4.0), (136, 30.0))]
        if args.compile:
            try:
                report["compiled"] = compiled_rows(model, impls["ours"], device, args)
            except Exception as exc:  # a compiler failure must not lose the eager figures
                report["compiled"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return report


def accuracy(impls: dict, data: Path) -> dict:
    """Accuracy of each emotion-reading implementation on RAVDESS dev actors 17-20 (the same 240 clips), and how
    far its probabilities are from the float32 trimmed loop (the reference computation)."""
    from train.corpora import SPEECH_DEV_ACTORS, ravdess
    from train.fit_speech import load_clips

    clips = ravdess(data / "ravdess-speech-16k", SPEECH_DEV_ACTORS)
    audio, labels = load_clips(clips), np.array([c.label for c in clips])
    probs = {name: fn(audio) for name, fn in impls.items() if not name.startswith("plain")}
    ref = probs.get("naive_trim")
    return {
        name: {
            "n": len(labels),
            "accuracy": float((p.argmax(1) == labels).mean()),
            **({"max_abs_diff_vs_naive_trim": float(np.abs(p - ref).max())} if ref is not None else {}),
        }
        for name, p in probs.items()
    }


def profile_ours(ours: OursSpeech, device: torch.device, batch: int = 256, seconds: float = 4.0) -> dict:
    """Where one big batch spends its time: wall, and the top ops by self CPU and by self device time."""
    from torch.profiler import ProfilerActivity, profile

    clips = make_clips(batch, seconds, seed=99)
    ours(clips)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        ours(clips)
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    device_total = sum(e.self_device_time_total for e in events) / 1000

    def top(key: str) -> list:
        rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:12]
        return [[e.key[:60], e.count, round(getattr(e, key) / 1000, 2)] for e in rows]

    return {
        "batch": batch,
        "seconds": seconds,
        "wall_ms_profiled": wall * 1000,
        "device_busy_ms": device_total,
        "top_self_cpu_ms": top("self_cpu_time_total"),
        "top_self_device_ms": top("self_device_time_total"),
    }


def timed_ms(fn: Callable[[], object], device: torch.device, reps: int = 10) -> float:
    """p50 wall time of fn() in ms, synchronised, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def stages(impls: dict, device: torch.device, batch: int = 256, seconds: float = 4.0, variants: str = "") -> dict:
    """Where a whole call's time goes, ours beside the plain anchor on the same clips: padding on the host,
    the host-to-device copy, the forward alone (inputs already on the device), and the whole call."""
    clips = make_clips(batch, seconds, seed=7)
    host, lengths = pad_on_host(clips, pin=device.type == "cuda")
    wave, dev_lengths = host.to(device), lengths.to(device)
    out: dict = {
        "batch": batch,
        "seconds": seconds,
        "pad_on_host_ms": timed_ms(lambda: pad_on_host(clips, pin=device.type == "cuda"), device),
        "host_to_device_ms": timed_ms(lambda: host.to(device, non_blocking=True), device),
    }
    if "ours" in impls and impls["ours"].predictor.fast_speech is not None:
        fast = impls["ours"].predictor.fast_speech
        out["ours_forward_ms"] = timed_ms(lambda: fast(wave, dev_lengths, host_lengths=lengths), device)
        out["ours_call_ms"] = timed_ms(lambda: impls["ours"](clips), device)
        model = impls["ours"].predictor.model
        out["ours_embed_batched_ms"] = timed_ms(lambda: speech_embed_batched(model, clips, fast=fast), device)
        if device.type == "cuda":
            out["ours_compiled_forward"] = forward_variants(fast, wave, dev_lengths, lengths, device, variants)
    if "plain" in impls:
        out["plain_forward_ms"] = timed_ms(lambda: impls["plain"].forward(wave), device)
        out["plain_call_ms"] = timed_ms(lambda: impls["plain"](clips), device)
    return out


def forward_variants(
    fast, wave: torch.Tensor, lengths: torch.Tensor, host_lengths: torch.Tensor, device, only: str = ""
) -> dict:
    """The fast path's forward on one big batch, each way it can run: attention (masked scaled-dot-product vs
    flash varlen) x compilation (eager; torch.compile static, batch-dynamic, fully dynamic), with each compile's
    cost; then the shipped big-batch path (packed valid frames). Which pays, at this shape?
    only: the padded variants to time, e.g. "sdpa_eager,varlen_static" (all when empty)."""
    from backend.fast_speech import _varlen_attn
    from backend.speech import valid_frames

    raw, frames = wave, padded_frames(wave.shape[1])
    wave = torch.nn.functional.pad(wave, (0, frames * HOP_LENGTH - wave.shape[1]))
    unpadded = bool((valid_frames(host_lengths, frames) >= frames // 2).all())
    kept, out = fast.varlen, {"unpadded": unpadded}
    attentions = {"sdpa": None, "varlen": _varlen_attn()}
    for attention, fn in attentions.items():
        if attention == "varlen" and fn is None:
            out["varlen"] = "unavailable in this torch"
            continue
        fast.varlen = fn
        for mode in ("eager", "static", "batch_dynamic", "dynamic"):
            if only and f"{attention}_{mode}" not in only.split(","):
                continue
            torch._dynamo.reset()
            try:
                t0 = time.perf_counter()
                run = fast._forward if mode == "eager" else torch.compile(fast._forward, dynamic=mode == "dynamic")
                args = (wave.clone(), lengths.clone())  # mark_dynamic tags a tensor: fresh ones per variant
                if mode == "batch_dynamic":
                    torch._dynamo.mark_dynamic(args[0], 0)
                    torch._dynamo.mark_dynamic(args[1], 0)
                with torch.inference_mode(), torch.autocast(device.type, enabled=False):
                    run(*args, unpadded)
                sync(device)
                compile_s = time.perf_counter() - t0

                def call(run=run, args=args) -> None:
                    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
                        run(*args, unpadded)

                out[f"{attention}_{mode}"] = {"first_call_s": compile_s, "forward_ms": timed_ms(call, device)}
            except Exception as exc:  # a compiler or kernel failure must not lose the other figures
                out[f"{attention}_{mode}"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    fast.varlen = kept
    try:  # the shipped big-batch path: the valid frames packed end to end (eager)
        t0 = time.perf_counter()
        fast(raw, lengths, host_lengths=host_lengths)
        sync(device)
        out["packed"] = {
            "first_call_s": time.perf_counter() - t0,
            "forward_ms": timed_ms(lambda: fast(raw, lengths, host_lengths=host_lengths), device),
        }
    except Exception as exc:
        out["packed"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    torch._dynamo.reset()
    return out


def speedups(rows: list[dict]) -> list[dict]:
    """ours / naive clips per second at each (batch, seconds)."""
    by = {(r["impl"], r["batch"], r["seconds"]): r for r in rows}
    out = []
    for (impl, batch, seconds), r in by.items():
        naive = by.get(("naive", batch, seconds))
        if impl == "ours" and naive:
            out.append({"batch": batch, "seconds": seconds, "speedup": r["clips_per_s"] / naive["clips_per_s"]})
    return out


def roofline(model: EmotionModel, rows: list[dict], device: torch.device) -> dict:
    peak = matmul_peak(device)
    out = {"bf16_matmul_peak_tflops": peak / 1e12, "rows": []}
    for r in rows:
        if r["impl"] not in ("ours", "branch"):
            continue
        flops = encoder_flops(model, int(r["seconds"] * SAMPLE_RATE))  # upper end: clips are 90-100% of this
        achieved = flops * r["clips_per_s"]
        out["rows"].append(
            {
                "impl": r["impl"],
                "batch": r["batch"],
                "seconds": r["seconds"],
                "gflop_per_clip": flops / 1e9,
                "achieved_tflops": achieved / 1e12,
                "fraction_of_peak": achieved / peak,
                "roofline_clips_per_s": peak / flops,
            }
        )
    return out


def compiled_rows(model: EmotionModel, ours: OursSpeech, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """The same Predictor with each encoder layer under torch.compile (dynamic shapes), 4 s clips."""
    encoder = model.speech.model.get_encoder()
    original = list(encoder.layers)
    t0 = time.perf_counter()
    for i, layer in enumerate(original):
        encoder.layers[i] = torch.compile(layer, dynamic=True)
    rows = []
    try:
        pool = make_clips(512, 4.0, seed=4)
        for batch in (1, 256):
            r = measure(ours, [pool[:batch], pool[batch : 2 * batch]], device, min_reps=3, budget_s=args.budget_s)
            rows.append(
                {
                    "impl": "ours+compile",
                    "batch": batch,
                    "seconds": 4.0,
                    **r,
                    "clips_per_s": batch / (r["p50_ms"] / 1000),
                    "first_call_s_incl_compile": None,
                }
            )
        rows[0]["compile_and_measure_s"] = time.perf_counter() - t0
    finally:
        for i, layer in enumerate(original):
            encoder.layers[i] = layer
    return rows


def table(report: dict) -> str:
    lines = [
        f"{'impl':<11}{'dev':<5}{'batch':>6}{'sec':>5}{'p50 ms':>10}{'p95 ms':>10}{'clips/s':>10}{'audio s/s':>11}{'peak MiB':>10}"
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['impl']:<11}{r['device']:<5}{r['batch']:>6}{r['seconds']:>5.0f}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}"
            f"{r['clips_per_s']:>10.1f}{r['audio_s_per_s']:>11.1f}{r['peak_mib']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--speech-backbone", default=None, help="local Whisper folder to use instead of the config's")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--seconds", default="2,4,10,30")
    p.add_argument("--naive-max-batch", type=int, default=32, help="naive loop timed on at most this many clips")
    p.add_argument("--cpu-max-audio", type=float, default=300.0, help="CPU: skip configs with more audio per call")
    p.add_argument("--budget-s", type=float, default=2.0, help="time per configuration after the minimum reps")
    p.add_argument(
        "--impls",
        default="naive,ours",
        help="naive,naive_trim,eager,ours,branch,branch_sdpa,branch_nographs,branch@S[/B],plain,plain30",
    )
    p.add_argument("--accuracy-data", default=None, help="shared data folder: accuracy on RAVDESS dev per impl")
    p.add_argument("--profile", action="store_true", help="also profile one batch of 256 x 4 s (CUDA)")
    p.add_argument("--stages", action="store_true", help="also time each step of one call, ours beside plain")
    p.add_argument("--variants", default="", help="--stages: padded forward variants to time (all when empty)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd encoder layers (CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(table(report))
    summary = {"speedup": report["speedup"], "roofline": report.get("roofline", {}).get("rows", [])[:16]}
    print(json.dumps(summary | ({"accuracy": report["accuracy"]} if "accuracy" in report else {})))
    return report


if __name__ == "__main__":
    main()
