"""Retraining speed: wall time and samples/s of the production retraining job on N crowd corrections + replay.

N clips go into a fresh store as the app keeps them (champion prediction, three simulated annotators, 10% gold);
then train.retrain runs as in production (gate off: only training is timed) while nvidia-smi is sampled every
200 ms for GPU utilisation. The clips come from ASED's adaptation (train) speakers by default, speakers v1 never
trained on, so the run's held-out figure (the hash-chosen corrections slice, scored at the last epoch) is a real
held-out figure; a base model whose card mentions ASED gets no held-out figure (null, with the reason).
--corpus ravdess uses RAVDESS train actors 1-16 (speed only: then the held-out figure is null too).

    python bench/train.py --model models/default --out /tmp/trainbench --corrections 1000          # GPU
    python bench/train.py --model models/default --out /tmp/tb --corrections 16 --epochs 1 --cpu   # smoke check

Prints one JSON object: clips, train items, steps, samples/s (corrections + replay rows per second of training:
the loop's own clock of waiting for batches + training steps, so the per-epoch held-out evaluation is excluded),
seconds the loop waited for its loader threads vs spent in steps, wall times (store fill, setup + loop, loop with
its evaluations from the run log), GPU utilisation mean/median during the run. --loader-workers 0 builds every batch inside the
loop, as before the loaders existed (the baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from retrain_gain import fill_store  # noqa: E402

from backend.model import EmotionModel  # noqa: E402
from backend.settings import DEFAULT_MODEL_DIR, load_settings  # noqa: E402
from train.corpora import ASED_TRAIN_SPEAKERS, SPEECH_TRAIN_ACTORS, ased, ravdess, shared_data_dir  # noqa: E402
from train.fit_speech import load_clips  # noqa: E402
from train.retrain import RetrainConfig, run  # noqa: E402


class GpuMonitor:
    """nvidia-smi utilization.gpu / memory.used every 200 ms in a thread (nothing on machines without it)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuMonitor:
        if shutil.which("nvidia-smi"):
            cmd = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def summary(self, start: float, end: float) -> dict:
        window = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not window:
            return {"samples": 0}
        util = np.array([u for u, _ in window])
        return {
            "samples": len(window),
            "util_mean": float(util.mean()),
            "util_median": float(np.median(util)),
            "util_busy_share": float((util > 50).mean()),
            "mem_max_mib": float(max(m for _, m in window)),
        }


@contextlib.contextmanager
def profiled(on: bool) -> Iterator[torch.profiler.profile | None]:
    if not on:
        yield None
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        yield prof


def loop_window(log_file: Path) -> tuple[float, float] | None:
    """(start, end) epoch seconds of the training loop from the run log's 'start' and 'trained' events."""
    events = {}
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") in ("start", "trained"):
            events[record["event"]] = datetime.fromisoformat(record["time"]).timestamp()
    if "start" in events and "trained" in events:
        return events["start"], events["trained"]
    return None


def correction_clips(data: Path, corpus: str, n: int) -> list:
    """The first n clips of the corpus's speakers that the base model (v1) never trained on, or RAVDESS train
    actors (speed only)."""
    if corpus == "ravdess":
        return ravdess(data / "ravdess-speech-16k", SPEECH_TRAIN_ACTORS)[:n]
    clips = ased(data / "ased-speech-16k", ASED_TRAIN_SPEAKERS)
    order = np.random.default_rng(0).permutation(len(clips))[:n]
    return [clips[i] for i in sorted(order)]


def held_out_figure(result: dict, corpus: str, model: str) -> dict:
    """The run's last held-out figure, or null with the reason when its speakers may be training speakers."""
    seen = any(
        re.search(r"\based\b", (Path(model) / name).read_text(errors="replace"), re.IGNORECASE)
        for name in ("README.md", "training_summary.json")
        if (Path(model) / name).is_file()
    )
    figure = {"clips": result.get("held"), "source": f"{corpus} (hash-chosen corrections slice)"}
    if corpus == "ravdess" or seen:
        return {**figure, "scores": None, "why_none": "these speakers are in the base model's training data"}
    return {**figure, "scores": result.get("holdout")}


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--out", required=True, help="work folder; must not exist")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--corrections", type=int, default=1000)
    p.add_argument("--corpus", choices=["ased", "ravdess"], default="ased", help="where the corrections come from")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--replay-per-batch", type=int, default=16)
    p.add_argument("--loader-workers", type=int, default=-1, help="0 = build batches inside the loop (the old way)")
    p.add_argument("--bucket-seconds", type=float, default=1.0, help="0 = pad each batch to its longest clip")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--profile", action="store_true", help="run under torch.profiler; tables of the top ops to stderr")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    t0 = time.perf_counter()
    champion = EmotionModel.from_pretrained(args.model, cache=load_settings().cache, device=device)
    clips = correction_clips(Path(args.data), args.corpus, args.corrections)
    audio = load_clips(clips)
    fill_store(out / "studio.db", clips, audio, champion, gold=0.1, seed=0)
    del champion
    filled = time.perf_counter()
    config = RetrainConfig(
        db=str(out / "studio.db"),
        out=str(out / "run"),
        base_model=args.model,
        data=args.data,
        data_dir=str(out / "data"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        replay_per_batch=args.replay_per_batch,
        checkpoint_every=0,
        gate=False,
        cpu=args.cpu,
        loader_workers=args.loader_workers,
        bucket_seconds=args.bucket_seconds,
    )
    with GpuMonitor() as gpu, profiled(args.profile) as prof:
        start_wall = time.time()
        result = run(config)
        end_wall = time.time()
    if prof is not None:
        for key in ("self_cpu_time_total", "self_cuda_time_total" if device == "cuda" else "cpu_time_total"):
            print(prof.key_averages().table(sort_by=key, row_limit=25), file=sys.stderr)
    done = time.perf_counter()
    window = loop_window(out / "run" / "log.jsonl") or (start_wall, end_wall)
    loop_s = max(window[1] - window[0], 1e-9)  # includes held-out evaluation and recalibration
    clock = result.get("loop") or {}
    train_s = max(clock.get("step_s", 0.0) + clock.get("data_wait_s", 0.0), 1e-9)  # training only
    rows = result["step"] * (args.batch_size + args.replay_per_batch)
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "clips": len(clips),
        "train_items": result["train"]["items"] if isinstance(result.get("train"), dict) else result.get("train"),
        "corpus": args.corpus,
        "held_out": held_out_figure(result, args.corpus, args.model),
        "epochs": args.epochs,
        "steps": result["step"],
        "rows_per_step": args.batch_size + args.replay_per_batch,
        "bucket_seconds": args.bucket_seconds,
        "precision": result.get("precision"),
        "samples_per_s_loop": rows / train_s,
        "samples_per_s_incl_eval": rows / loop_s,
        "loader": result.get("loop"),  # workers; seconds the loop waited for data vs spent in steps
        "seconds": {
            "store_fill_incl_champion_predictions": round(filled - t0, 1),
            "retrain_setup_and_loop": round(done - filled, 1),
            "train_steps_and_waits": round(train_s, 1),
            "loop_incl_eval_and_recalibration_from_log": round(loop_s, 1),
            "train_summary": result.get("seconds"),
        },
        "gpu_during_loop": gpu.summary(*window),
        "gpu_whole_run": gpu.summary(start_wall, end_wall),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
