"""Retrain the emotion model on the crowd's corrections, judge it against the champion, publish if it wins.

One process (CPU, or one GPU in bf16):
    python -m train.retrain --db data/studio.db --out runs/retrain-1 [--base-model models/default] [--push me/emo]
Same, through accelerate (one GPU, bf16):
    accelerate launch --num_processes 1 --mixed_precision bf16 -m train.retrain --db data/studio.db --out runs/retrain-1
Several GPUs of one host (DDP, bf16):
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 -m train.retrain --db data/studio.db --out runs/retrain-1
Several CPU processes (DDP over gloo; without ACCELERATE_USE_CPU=true, --multi_gpu on a CPU box starts independent copies):
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m train.retrain --db data/studio.db --out runs/retrain-1
A run that was stopped or killed continues from its last checkpoint with the same --out and --resume.

Each step takes a batch of corrections (soft labels, reliability weights, hard negatives) plus a replay of the
base corpora for every branch being trained; loss = cross-entropy + unlikelihood on the hard negative +
supervised contrastive (with a per-class memory queue), see train.retrain_step. Heads, projections and existing
LoRA adapters of the branches with data train; the backbones stay frozen. The corrections split three ways by a
hash of (clip, rotation): training, calibration (15%: the trained branches' temperatures and the fusion gate are
refitted on it plus a hold-back of replay examples, train.recalibrate; ECE before/after in the summary) and the
gate's held-out slice (20%); the rotation is the number of runs the store has recorded, so each run is judged on
a fresh slice. Before recalibration, --merge < 1 pulls the trained weights back toward the champion's (a
weight-space ensemble, WiSE-FT: most of the gain, less forgetting of the base corpora). The gate (train.gate:
paired tests, see there) then compares challenger and champion and records its decision, figures and intervals
in the store; a promoted model is published (train.publish).
--out holds retrain_config.json, data_manifest.json, log.jsonl, checkpoints/step_N/, challenger/, decision.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from backend.labels import LABELS, NUM_LABELS
from backend.model import EmotionModel
from backend.registry import current_model
from backend.settings import DEFAULT_MODEL_DIR, Settings, load_settings
from labeling.store import Store, now_iso
from train.contrastive import ClassMemory
from train.corpora import CorpusError, shared_data_dir
from train.corrections import CorrectionItem, Partition, load_corrections, partition, summarize
from train.metrics import classification_report
from train.replay import ReplayPool
from train.retrain_step import (
    HostBatch,
    LossConfig,
    RetrainNet,
    build_inputs,
    fused_probs,
    fusion_loss,
    prepare_batch,
    retrain_loss,
    to_device,
)
from train.run_files import JsonLog, checkpoint_step, last_checkpoint, save_checkpoint, trainable_only

log = logging.getLogger(__name__)

CONFIG_FILE = "retrain_config.json"
MANIFEST_FILE = "data_manifest.json"
LOG_FILE = "log.jsonl"
BRANCH_PREFIXES = {
    "speech": ("heads.speech_head.", "heads.projections.speech.", "speech_encoder."),
    "text": ("heads.text_head.", "heads.projections.text.", "text_encoder."),
    "face": ("heads.face_net.", "heads.projections.face."),
}


class RetrainError(RuntimeError):
    """A run that cannot go ahead; the message says what to do."""


@dataclass
class RetrainConfig:
    db: str
    out: str | None = None
    base_model: str | None = None
    push: str | None = None
    data: str = str(shared_data_dir())
    data_dir: str | None = None
    cache: str | None = None
    seed: int = 0
    epochs: int = 16
    batch_size: int = 16
    replay_per_batch: int = 48
    replay_limit: int = 0
    replay_distill: float = 0.8
    grad_accum: int = 1
    lr: float = 3e-4
    lora_lr: float = 1e-4
    gate_lr: float = 0.03
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    correction_weight: float = 1.0
    supcon_weight: float = 0.5
    negative_weight: float = 0.5
    temperature: float = 0.1
    hard_weight: float = 1.0
    fusion_weight: float = 1.0
    queue_size: int = 64
    soft_mix: float = 0.5
    min_votes: int = 1
    min_eval_votes: int = 2
    holdout: float = 0.2
    calibration: float = 0.15
    holdout_rotation: int = -1
    recalibrate: bool = True
    calib_replay: int = 120
    min_calib: int = 30
    max_seconds: float = 12.0
    bucket_seconds: float = 1.0
    loader_workers: int = -1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    stop_after_steps: int = 0
    resume: bool = False
    mixed_precision: str | None = None
    cpu: bool = False
    log_every: int = 10
    gate: bool = True
    tolerance: float | None = None
    min_gain: float = 0.0
    gate_alpha: float = 0.05
    min_holdout: int = 30
    gate_test: str = "bootstrap"
    gold_audit_min: float = 0.9
    speech_dev_actors: str = "17-20"
    speech_dev_size: int = 0
    text_dev_size: int = 1000
    face_dev_size: int = 1000
    lock: bool = True
    merge: float = 0.5


HELP = {
    "db": "the labelling store (SQLite file)",
    "out": "run folder: config, log, checkpoints, challenger (default <data_dir>/retrain/runs/<time>)",
    "base_model": "champion to start from: folder or Hub id[@tag] (default: the model the app serves)",
    "push": "Hub repo id to push a promoted model to (token from HF_TOKEN), tagged vN",
    "data": "base corpora for replay and dev sets (../shared/data)",
    "data_dir": "where promoted versions go (<data_dir>/models/vN); default EMO_DATA_DIR or the db's folder",
    "replay_per_batch": "base-corpus examples per trained branch in every batch",
    "replay_limit": "use a fixed subset of N replay examples per branch (0 = all)",
    "replay_distill": "share of the champion's own probabilities in a replayed example's target (0 = labels only)",
    "correction_weight": "scale of a correction's loss relative to a replayed example",
    "fusion_weight": "weight of the fused-prediction loss that trains the gate on multimodal corrections",
    "lora_lr": "learning rate of the LoRA adapters (0: adapters frozen, only heads train: less drift, faster on CPU)",
    "gate_lr": "learning rate of the fusion gate's biases and confidence slopes (no weight decay)",
    "min_eval_votes": "votes a held-out clip needs (with a majority) to be judged on; gold always counts",
    "holdout": "share of corrections held out for the gate, chosen by a hash of (clip id, rotation)",
    "calibration": "share of corrections set aside (same hash, disjoint from the held-out slice) to recalibrate",
    "holdout_rotation": "rotation index of the held-out/calibration slices (-1 = runs the store has recorded)",
    "recalibrate": "refit the trained branches' temperatures and the fusion gate on the calibration split",
    "calib_replay": "base-corpus examples per branch held back from replay for recalibration",
    "min_calib": "calibration examples a branch (or the fusion gate) needs to be refitted",
    "gate_alpha": "the gate's significance level (one-sided superiority; Holm family for the dev checks)",
    "min_holdout": "trusted held-out corrections needed to promote",
    "gold_audit_min": "promote only if the crowd's labels match gold on at least this share of the voted gold clips "
    "(checked once 10 gold clips have votes): a poisoned crowd also poisons the held-out labels that judge",
    "gate_test": "bootstrap (lower confidence bound of the gain > min_gain) or mcnemar (exact one-sided p < alpha)",
    "max_seconds": "training crop of long recordings",
    "bucket_seconds": "pad each speech batch to a multiple of this (few shapes: GPU kernels keep their plans; 0 = to its longest clip)",
    "loader_workers": "threads that build batches ahead of the training step (-1 = up to 4 by CPU count, 0 = none)",
    "checkpoint_every": "save a checkpoint every N steps (0 = never)",
    "stop_after_steps": "stop after N steps without finishing (to test --resume)",
    "resume": "continue from the last complete checkpoint in --out",
    "mixed_precision": "no | bf16 | fp16 (default: bf16 on GPU, no on CPU)",
    "tolerance": "fixed non-inferiority margin on every dev set (default: 0.5/sqrt(n) of each set, >= 0.01)",
    "min_gain": "the bound the lower confidence limit of the held-out gain must exceed",
    "lock": "take the store's retraining lock (a caller that holds it passes --no-lock)",
    "cpu": "train on the CPU even where a GPU is present",
    "gate": "judge the challenger and publish a winner (--no-gate: train only)",
    "speech_dev_actors": "RAVDESS actors of the gate's speech dev set, e.g. 17-20 or 19,20",
    "speech_dev_size": "fixed subset sizes of the dev sets (0 = all, -1 = leave out); also --text/--face-dev-size",
    "merge": "share of the fine-tuned change kept: trained parameters become champion + merge x (trained - champion), "
    "a weight-space ensemble with the champion (WiSE-FT) that keeps most of the gain and less of the forgetting; "
    "1 = the trained weights as they are",
}


def unit_share(text: str) -> float:
    """argparse type of --merge: a share in [0, 1], refused at the command line rather than after loading."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


# fields whose values need more than type(default): a default of None, or a checked range
FIELD_TYPES = {"tolerance": float, "merge": unit_share, "gold_audit_min": unit_share}


def build_parser() -> argparse.ArgumentParser:
    """One flag per RetrainConfig field (--base-model, --no-gate, ...); --model is an alias of --base-model."""
    parser = argparse.ArgumentParser(
        prog="python -m train.retrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in dataclasses.fields(RetrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "db":
            parser.add_argument(flag, required=True, help=HELP[f.name])
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=HELP.get(f.name))
        else:
            kind = FIELD_TYPES.get(f.name, type(f.default) if f.default is not None else str)
            parser.add_argument(flag, type=kind, default=f.default, help=HELP.get(f.name))
    parser.add_argument("--model", dest="base_model", help=argparse.SUPPRESS)
    return parser


def check_config(config: RetrainConfig) -> None:
    """Refuse values the parser cannot see (a RetrainConfig built in Python) before anything loads."""
    if not 0.0 <= config.merge <= 1.0:
        raise RetrainError(f"--merge is the share of the fine-tuned change kept: between 0 and 1, got {config.merge}.")


def resolve_settings(config: RetrainConfig) -> Settings:
    """Settings for media limits, the backbone cache and the registry (<data_dir>/models)."""
    overrides: dict = {}
    if config.data_dir:
        overrides["data_dir"] = Path(config.data_dir)
    elif "EMO_DATA_DIR" not in os.environ:
        overrides["data_dir"] = Path(config.db).resolve().parent
    if config.cache:
        overrides["cache"] = Path(config.cache)
    return load_settings(**overrides)


def base_model_name(config: RetrainConfig, settings: Settings) -> str:
    """The champion: a pinned model as given; the default path means whatever the app serves (last promoted)."""
    return current_model(dataclasses.replace(settings, model=config.base_model or str(DEFAULT_MODEL_DIR)))


def make_accelerator(config: RetrainConfig) -> Accelerator:
    precision = config.mixed_precision or ("bf16" if torch.cuda.is_available() and not config.cpu else "no")
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=precision,
        # the loaders run ahead of the step, so accelerate's "last batch of the loader" is seen early: sync every
        # grad_accum steps instead (an epoch's last partial group carries into the next epoch)
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.grad_accum, sync_with_dataloader=False
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.replay_per_batch == 0)],
    )


@dataclass
class RetrainData:
    train: list[CorrectionItem]
    held: list[CorrectionItem]
    branches: tuple[str, ...]
    pool: ReplayPool
    calib: list[CorrectionItem] = dataclasses.field(default_factory=list)  # corrections + replay hold-back
    rotation: int = 0

    @functools.cached_property
    def fuse(self) -> bool:
        """Whether the gate trains: some correction has two or more modalities (replay never has). Read every
        step, so worked out once."""
        return any(len(it.modalities) >= 2 for it in self.train)


def read_corrections(config: RetrainConfig, store: Store, settings: Settings) -> Partition:
    """Training, calibration and held-out trusted items; a resumed run reuses its manifest so the data stay the
    same. The rotation is the number of runs the store has recorded, unless pinned by --holdout-rotation."""
    from train.gate import next_rotation

    manifest = Path(config.out) / MANIFEST_FILE
    ids = json.loads(manifest.read_text()) if config.resume and manifest.exists() else None
    items = load_corrections(
        store,
        min_votes=config.min_votes,
        min_eval_votes=config.min_eval_votes,
        soft_mix=config.soft_mix,
        clip_ids=ids["train"] + ids.get("calib", []) + ids["held"] if ids else None,
        settings=settings,
    )
    if ids is None:
        rotation = config.holdout_rotation if config.holdout_rotation >= 0 else next_rotation(store)
        return partition(items, config.holdout, config.calibration, rotation)
    by_id = {it.clip_id: it for it in items}
    train, calib, held = ([by_id[c] for c in ids.get(k, []) if c in by_id] for k in ("train", "calib", "held"))
    return Partition(train, calib, held, int(ids.get("rotation", 0)))


def get_dataloaders(
    config: RetrainConfig, store: Store, accelerator: Accelerator
) -> tuple[DataLoader, DataLoader | None, RetrainData]:
    """Loaders of item indices (the items themselves stay in RetrainData), and the replay pool."""
    parts = read_corrections(config, store, resolve_settings(config))
    train_items, held = parts.train, parts.held
    if not train_items:
        raise RetrainError("There are no labelled, consented corrections to train on yet (or all are held out).")
    for item in train_items:
        item.weight *= config.correction_weight
    if accelerator.is_main_process:
        manifest = {
            "train": [it.clip_id for it in train_items],
            "calib": [it.clip_id for it in parts.calib],
            "held": [it.clip_id for it in held],
            "rotation": parts.rotation,
        }
        (Path(config.out) / MANIFEST_FILE).write_text(json.dumps(manifest) + "\n")
    branches = tuple(m for m in ("speech", "text", "face") if any(m in it.modalities for it in train_items))
    pool = ReplayPool()
    try:
        if config.replay_per_batch:
            pool = ReplayPool.load(Path(config.data), branches, config.replay_limit, config.seed)
    except CorpusError as exc:
        raise RetrainError(f"Replay needs the base corpora ({exc}); pass --data or set EMO_SHARED_DATA.") from exc
    calib = list(parts.calib)
    if config.recalibrate and config.calib_replay:
        from train.recalibrate import hold_back

        pool, replay_calib = hold_back(pool, config.calib_replay, config.seed)
        calib += replay_calib
    gen = torch.Generator().manual_seed(config.seed)
    train_dl = DataLoader(range(len(train_items)), batch_size=config.batch_size, shuffle=True, generator=gen)
    eval_dl = DataLoader(range(len(held)), batch_size=config.batch_size) if held else None
    return train_dl, eval_dl, RetrainData(train_items, held, branches, pool, calib, parts.rotation)


def trainable_groups(
    model: EmotionModel, branches: tuple[str, ...], config: RetrainConfig, fuse: bool = False
) -> list[dict]:
    """Freeze everything, then unfreeze heads, projections and existing LoRA adapters of the given branches
    (and the fusion gate's weights with fuse)."""
    model.requires_grad_(False)
    prefixes = tuple(p for b in branches for p in BRANCH_PREFIXES[b]) + (("heads.gate.",) if fuse else ())
    heads, adapters, gate = [], [], []
    for name, param in model.named_parameters():
        adapter = ".lora_" in name
        if not name.startswith(prefixes) or (name.startswith(("speech_encoder.", "text_encoder.")) and not adapter):
            continue
        if adapter and config.lora_lr <= 0:  # adapters frozen: nothing back-propagates into the encoders
            continue
        param.requires_grad_(True)
        (gate if name.startswith("heads.gate.") else adapters if adapter else heads).append(param)
    groups = [{"params": heads, "lr": config.lr}]
    groups += [{"params": adapters, "lr": config.lora_lr}] if adapters else []
    # the gate is six scalars on the scale of logits: a head's learning rate would barely move them in a run,
    # and weight decay would pull its fitted slopes back to zero
    return groups + ([{"params": gate, "lr": config.gate_lr, "weight_decay": 0.0}] if gate else [])


def champion_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU float32 copies of the parameters that will train, keyed by name: what --merge interpolates toward.
    Taken before a checkpoint is resumed, so a resumed run still merges with the champion."""
    return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def merge_into(
    model: torch.nn.Module | Iterable[tuple[str, torch.Tensor]], champion: dict[str, torch.Tensor], share: float
) -> int:
    """Weight-space ensemble (WiSE-FT) in place: each parameter named in `champion` becomes
    champion + share * (trained - champion); the others stay as they are. Returns how many were merged.

    LoRA adapters interpolate A and B each linearly, so their product B.A (the actual weight change) is only
    approximately interpolated: off by share * (1 - share) * dB.dA, second order in the change; accepted.
    """
    named = model.named_parameters() if isinstance(model, torch.nn.Module) else model
    merged = 0
    for name, param in named:
        old = champion.get(name)
        if old is None:
            continue
        new = old + share * (param.detach().float().cpu() - old)
        param.copy_(new.to(param.device, param.dtype))
        merged += 1
    return merged


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Loop:
    """What a training step needs."""

    accelerator: Accelerator
    config: RetrainConfig
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    memory: ClassMemory
    data: RetrainData
    params: list[torch.nn.Parameter]
    loss: LossConfig
    champion: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # trained params before training


def step_seed(seed: int, step: int, rank: int) -> int:
    """Augmentation, replay draws and dropout of a step depend on (seed, step, rank) only: resume replays them."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def host_batch(loop: Loop, indices: torch.Tensor, step: int) -> HostBatch:
    """The CPU side of a step (runs in a loader thread): its corrections, replay draws, augmented media."""
    a, cfg = loop.accelerator, loop.config
    seed = step_seed(cfg.seed, step, a.process_index)
    rng = np.random.default_rng(seed)
    rows = [loop.data.train[i] for i in indices.tolist()]
    for branch in loop.data.branches:
        rows += loop.data.pool.sample(branch, cfg.replay_per_batch, rng)
    return prepare_batch(rows, loop.data.branches, seed, cfg.max_seconds, pin=a.device.type == "cuda")


def loader_workers(config: RetrainConfig) -> int:
    if config.loader_workers >= 0:
        return config.loader_workers
    return min(4, max(1, (os.cpu_count() or 2) - 1))


def host_batches(loop: Loop, batches: Iterable[torch.Tensor], step: int) -> Iterator[HostBatch]:
    """Each step's HostBatch in order, built by a pool of threads up to 2 x workers steps ahead of the GPU (the
    decoding, cropping and resampling release the GIL), so data loading does not stall training."""
    workers = loader_workers(loop.config)
    if workers == 0:
        for i, indices in enumerate(batches):
            yield host_batch(loop, indices, step + i)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="retrain-loader")
    pending: deque[Future] = deque()
    try:
        for i, indices in enumerate(batches):
            pending.append(pool.submit(host_batch, loop, indices, step + i))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def train_step(loop: Loop, batch: HostBatch) -> dict:
    a, cfg = loop.accelerator, loop.config
    torch.manual_seed(batch.seed)  # dropout: the same on a resumed run
    inputs, targets = to_device(batch, a.device)
    inputs["frame_multiple"] = max(2, 2 * round(cfg.bucket_seconds * 50))  # 100 mel frames a second, even
    with a.accumulate(loop.net):
        out = loop.net(inputs)
        loss, parts, z, labels = retrain_loss(out, targets, loop.memory, loop.loss)
        if loop.data.fuse:
            fused = fusion_loss(out, targets, a.unwrap_model(loop.net).model, batch.rows)
            loss = loss + cfg.fusion_weight * fused
            parts["fusion"] = fused.item()
        a.backward(loss)
        if a.sync_gradients and cfg.max_grad_norm:
            a.clip_grad_norm_(loop.params, cfg.max_grad_norm)
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
    push_memory(a, loop.memory, z, labels)
    return {"loss": loss.item(), **parts}


def push_memory(accelerator: Accelerator, memory: ClassMemory, z: torch.Tensor, labels: torch.Tensor) -> None:
    """Every process pushes the rows of all processes, so the queues stay identical."""
    if accelerator.num_processes > 1:
        z = accelerator.gather(accelerator.pad_across_processes(z, dim=0))
        labels = accelerator.gather(accelerator.pad_across_processes(labels, dim=0, pad_index=-1))
    memory.push(z, labels)


def replicas_agree(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> bool:
    """Whether every process ends with the same weights (DDP averaged the gradients); trivially true alone."""
    total = torch.stack([p.detach().float().sum() for p in params]).sum().reshape(1)
    sums = accelerator.gather(total)
    return bool(torch.allclose(sums, sums[:1].expand_as(sums), rtol=1e-5, atol=1e-6))


def evaluate_holdout(loop: Loop, eval_dl: DataLoader | None) -> dict | None:
    """Fused accuracy / macro-F1 of the model being trained on the held-out corrections (all processes)."""
    if eval_dl is None:
        return None
    a, held = loop.accelerator, loop.data.held
    model = a.unwrap_model(loop.net).model
    loop.net.eval()
    preds, labels = [], []
    with torch.no_grad():
        for indices in eval_dl:
            rows = [held[i] for i in indices.tolist()]
            inputs, targets = build_inputs(rows, ("speech", "text", "face"), a.device)
            probs = fused_probs(loop.net(inputs), targets, model, len(rows))
            y = torch.tensor([r.label for r in rows], device=a.device)
            p, y = a.gather_for_metrics((probs.argmax(-1), y))
            preds.append(p.cpu())
            labels.append(y.cpu())
    loop.net.train()
    report = classification_report(torch.cat(labels).numpy(), torch.cat(preds).numpy(), LABELS)
    return {k: report[k] for k in ("n", "accuracy", "uar", "macro_f1")}


def setup(config: RetrainConfig, accelerator: Accelerator) -> tuple[Loop, DataLoader, DataLoader | None, EmotionModel]:
    settings = resolve_settings(config)
    with accelerator.main_process_first():
        model = EmotionModel.from_pretrained(
            base_model_name(config, settings), cache=settings.cache, device=accelerator.device
        )
        store = Store.open(config.db)
        try:
            train_dl, eval_dl, data = get_dataloaders(config, store, accelerator)
        finally:
            store.close()
    data.pool.attach_teacher(model, config.replay_distill)
    groups = trainable_groups(model, data.branches, config, data.fuse)
    # before prepare and resume_step: a resumed run's weights are a checkpoint's, not the champion's
    champion = champion_weights(model) if config.merge < 1 and accelerator.is_main_process else {}
    fused = accelerator.device.type == "cuda"  # one kernel for all parameters, not a few per tensor
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=fused)
    scheduler = warmup_cosine(optimizer, config.epochs * math.ceil(len(train_dl) / config.grad_accum), config.warmup)
    memory = ClassMemory(NUM_LABELS, config.queue_size, model.config.proj_dim).to(accelerator.device)
    prepared = accelerator.prepare(RetrainNet(model), optimizer, train_dl, scheduler, *([eval_dl] if eval_dl else []))
    net, optimizer, train_dl, scheduler = prepared[:4]
    accelerator.register_for_checkpointing(memory)
    accelerator.register_save_state_pre_hook(trainable_only)
    params = [p for g in groups for p in g["params"]]
    loss = LossConfig(config.supcon_weight, config.negative_weight, config.temperature, config.hard_weight)
    loop = Loop(accelerator, config, net, optimizer, scheduler, memory, data, params, loss, champion)
    return loop, train_dl, prepared[4] if eval_dl else None, model


def resume_step(loop: Loop, out: Path) -> int:
    if not loop.config.resume:
        return 0
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", out)
        return 0
    loop.accelerator.load_state(str(checkpoint), strict=False)
    log.info("resumed from %s", checkpoint)
    return checkpoint_step(checkpoint)


@dataclass
class StepClock:
    """Seconds the loop waited for a batch from the loaders vs seconds in training steps (which end in a sync,
    loss.item()): waiting near zero means data loading is not the bottleneck."""

    wait: float = 0.0
    steps: float = 0.0

    def figures(self) -> dict:
        return {"data_wait_s": round(self.wait, 3), "step_s": round(self.steps, 3)}


def run_epochs(
    loop: Loop, train_dl: DataLoader, eval_dl: DataLoader | None, step: int, jlog: JsonLog
) -> tuple[int, dict | None, bool, StepClock]:
    """Train from `step` (mid-epoch after a resume) to the end.

    Returns (step, last held-out figures, stopped early, time waited for data vs spent in steps).
    """
    a, cfg, out = loop.accelerator, loop.config, Path(loop.config.out)
    per_epoch = len(train_dl)
    bar = tqdm(total=cfg.epochs * per_epoch, initial=step, desc="retrain", disable=not a.is_local_main_process)
    holdout, clock, since = None, StepClock(), StepClock()
    loop.net.train()
    for epoch in range(step // per_epoch, cfg.epochs):
        train_dl.set_epoch(epoch)
        skip = step - epoch * per_epoch
        batches = host_batches(loop, a.skip_first_batches(train_dl, skip) if skip else train_dl, step)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            parts = train_step(loop, batch)
            t2 = time.perf_counter()
            for c in (clock, since):
                c.wait, c.steps = c.wait + t1 - t0, c.steps + t2 - t1
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == 1:
                jlog.write(
                    {"step": step, "epoch": epoch, "lr": loop.scheduler.get_last_lr()[0], **parts, **since.figures()}
                )
                since = StepClock()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step % cfg.grad_accum == 0:
                save_checkpoint(a, out, step, cfg.keep_checkpoints)
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                batches.close()
                bar.close()
                return step, holdout, True, clock
        holdout = evaluate_holdout(loop, eval_dl)
        jlog.write({"event": "epoch", "epoch": epoch, "step": step, "holdout": holdout})
    bar.close()
    return step, holdout, False, clock


def train(config: RetrainConfig) -> dict:
    """Fine-tune on the corrections; writes out/challenger and returns the run's summary (JSON-able)."""
    check_config(config)
    start = time.perf_counter()
    accelerator = make_accelerator(config)
    set_seed(config.seed)
    out = Path(config.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not config.resume:  # a fresh run in a used folder: an old run's checkpoints must not be resumed later
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    accelerator.wait_for_everyone()
    loop, train_dl, eval_dl, model = setup(config, accelerator)
    step = resume_step(loop, out)
    jlog = JsonLog(out / LOG_FILE, accelerator.is_main_process)
    data = {
        "train": summarize(loop.data.train),
        "held": len(loop.data.held),
        "calib": len(loop.data.calib),
        "rotation": loop.data.rotation,
        "branches": list(loop.data.branches),
        "gate_trained": loop.data.fuse,
    }
    where = {"processes": accelerator.num_processes, "precision": accelerator.mixed_precision}
    jlog.write({"event": "start", "step": step, **where, **data})
    step, holdout, stopped, clock = run_epochs(loop, train_dl, eval_dl, step, jlog)
    if stopped:
        return {"stopped": True, "step": step}
    if holdout is None:  # resumed from the very last step: no epoch ended in this process
        holdout = evaluate_holdout(loop, eval_dl)
    summary = {
        "stopped": False,
        "step": step,
        "epochs": config.epochs,
        "base_version": model.version,  # read before the challenger is renamed below
        "base_model": base_model_name(config, resolve_settings(config)),
        **data,
        "holdout": holdout,
        **where,
        "replicas_in_sync": replicas_agree(accelerator, loop.params),
        "seconds": round(time.perf_counter() - start, 2),
        "loop": {"loader_workers": loader_workers(config), **clock.figures()},
        "challenger": str(out / "challenger"),
        "merge": config.merge,
    }
    if accelerator.is_main_process:
        if config.merge < 1:  # before recalibrating: temperatures and the gate are refitted on the merged model
            n = merge_into(model, loop.champion, config.merge)
            log.info("merged %d trained parameters with the champion's, keeping %.2f of the change", n, config.merge)
        if config.recalibrate:
            summary["calibration"] = recalibrate_challenger(config, loop.data, model)
        for branch in loop.data.branches:
            model.config.trained[branch] = True
        model.config.parent_version = model.version
        model.config.version = f"{model.version}-challenger"  # named vN when published
        model.save_pretrained(out / "challenger")
        jlog.write({"event": "trained", **summary})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def recalibrate_challenger(config: RetrainConfig, data: RetrainData, model: EmotionModel) -> dict:
    """Refit temperatures and the fusion gate on the calibration split (train.recalibrate); ECE before/after."""
    from train.recalibrate import CalibrationConfig, recalibrate

    return recalibrate(model, data.calib, data.held, data.branches, CalibrationConfig(min_items=config.min_calib))


@contextlib.contextmanager
def retrain_lock_held(config: RetrainConfig, is_main: bool) -> Iterator[None]:
    """The store's retraining lock, held by the main process for the whole run: two runs never overlap."""
    if not (config.lock and is_main):
        yield
        return
    from filelock import Timeout

    from train.schedule import retrain_lock

    lock = retrain_lock(config.db)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RetrainError(
            f"Another retraining run on this store holds {lock.lock_file}; wait for it to finish."
        ) from None
    try:
        yield
    finally:
        lock.release()


def default_out(config: RetrainConfig) -> str:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RetrainError("Pass --out when launching several processes (each must write to the same folder).")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return str(resolve_settings(config).data_dir / "retrain" / "runs" / stamp)


def run(config: RetrainConfig) -> dict:
    """Train, then (main process) gate, publish a winner and record the decision. Returns the summary."""
    if config.out is None:
        config = dataclasses.replace(config, out=default_out(config))
    state = PartialState(cpu=config.cpu)
    started = now_iso()
    with retrain_lock_held(config, state.is_main_process):
        summary = train(config)
        if summary["stopped"] or not state.is_main_process or not config.gate:
            return summary
        return {**summary, "decision": judge(config, summary, started)}


def judge(config: RetrainConfig, summary: dict, started: str) -> dict:
    """Main process: gate the challenger against the champion, publish a winner, record the run in the store."""
    from labeling.aggregate import aggregate_labels, gold_audit
    from train.gate import decide, evaluate, gate_config, load_dev_sets, record_run
    from train.publish import hub_tags, next_version, publish

    settings, out = resolve_settings(config), Path(config.out)
    device = "cuda" if torch.cuda.is_available() and not config.cpu else "cpu"
    with Store.open(config.db) as store:
        held = read_corrections(dataclasses.replace(config, resume=True), store, settings).held
        cfg = gate_config(config)
        try:
            dev = load_dev_sets(cfg)
        except CorpusError as exc:
            raise RetrainError(f"The gate's dev sets are missing ({exc}); pass --data or set EMO_SHARED_DATA.") from exc
        champion = EmotionModel.from_pretrained(summary["base_model"], cache=settings.cache, device=device)
        challenger = EmotionModel.from_pretrained(out / "challenger", cache=settings.cache, device=device)
        audit = gold_audit(aggregate_labels(store, min_votes=config.min_votes))
        decision = decide(
            evaluate(champion, dev, held, settings), evaluate(challenger, dev, held, settings), cfg, audit
        )
        del champion
        version = next_version(store, settings, summary["base_version"], *hub_tags(config.push))
        published = None
        if decision["promote"]:
            published = publish(
                challenger,
                version=version,
                decision=decision,
                store=store,
                settings=settings,
                push=config.push,
                data=summary["train"],
                training=summary,
            )
        record_run(
            store,
            decision,
            started=started,
            base_version=summary["base_version"],
            candidate_version=version,
            n_corrections=summary["train"]["items"],
            extra={"training": summary, "published": published, "rotation": summary.get("rotation", 0)},
        )
    decision = {**decision, "version": version, "published": published}
    (out / "decision.json").write_text(json.dumps(decision, indent=2, default=str) + "\n")
    JsonLog(out / LOG_FILE, True).write(
        {
            "event": "gate",
            "promote": decision["promote"],
            "version": version,
            "reason": decision["reason"],
            "published": published,
        }
    )
    return decision


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = RetrainConfig(**vars(build_parser().parse_args(argv)))
    try:
        result = run(config)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if PartialState().is_main_process:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
