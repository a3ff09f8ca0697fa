"""Train the speech branch on RAVDESS actors 1-16, select on actors 17-20 (speaker-independent dev)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from backend.branches import speech_forward_batched
from backend.model import build_model
from backend.model_config import EmotionConfig
from backend.speech import pad_on_host
from train import augment
from train.corpora import SPEECH_DEV_ACTORS, SPEECH_TRAIN_ACTORS, ravdess
from train.fit_common import BestTracker, Timer, branch_tensors, dev_summary, save_branch
from train.seed import seed_everything

log = logging.getLogger(__name__)


@dataclass
class SpeechFitConfig:
    data: Path
    out: Path
    cache: Path
    backbone: str = "whisper-base"
    trim: bool = True
    lora_rank: int = 0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    lora_lr: float = 5e-4
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "cpu"
    limit: int = 0  # >0: use only this many clips per split (smoke tests)
    name: str = "speech"


def load_clips(examples: list) -> list[np.ndarray]:
    """RAVDESS files are 16 kHz mono FLAC already; decode them straight to float32."""
    clips = []
    for ex in examples:
        audio, rate = sf.read(str(ex.path), dtype="float32", always_2d=True)
        assert rate == 16_000, f"{ex.path.name}: expected 16 kHz, got {rate}"
        clips.append(audio.mean(axis=1))
    return clips


def augmented_batch(clips: list[np.ndarray], gen: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """Speed, shift and noise on the waveform (the SpecAugment masks come later, on the log-mel)."""
    host, lengths = pad_on_host(augment.speed_and_shift(clips, gen), pin=device.type == "cuda")
    return augment.noisy_views(host, lengths, device)


def speech_states(model, waves: list[torch.Tensor], gen: torch.Generator, train_encoder: bool):
    """Encoder states with SpecAugment on the log-mel; gradients only through LoRA adapters if any."""
    from backend.speech import encoder_hidden_states

    context = torch.enable_grad() if train_encoder else torch.no_grad()
    with context:
        return encoder_hidden_states(
            model.speech,
            [w for w in waves],
            trim=model.config.speech_trim,
            mel_transform=lambda mel: augment.spec_augment(mel, generator=gen),
        )


def train_speech(cfg: SpeechFitConfig) -> dict:
    """Returns the dev summary; writes <out>/<name>.safetensors and <out>/<name>.json."""
    gen = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    root = Path(cfg.data) / "ravdess-speech-16k"
    train_ex, dev_ex = ravdess(root, SPEECH_TRAIN_ACTORS), ravdess(root, SPEECH_DEV_ACTORS)
    if cfg.limit:
        train_ex, dev_ex = train_ex[: cfg.limit], dev_ex[: cfg.limit]
    train_clips, dev_clips = load_clips(train_ex), load_clips(dev_ex)
    y_train = torch.tensor([e.label for e in train_ex])
    y_dev = torch.tensor([e.label for e in dev_ex])
    config = EmotionConfig(speech_backbone=cfg.backbone, speech_trim=cfg.trim, speech_lora_rank=cfg.lora_rank)
    model = build_model(config, cache=cfg.cache, device=device, modalities=("speech",), adapt_dims=True)
    head = model.heads.speech_head
    lora = [p for n, p in model.named_parameters() if ".lora_" in n]
    groups = [{"params": head.parameters(), "lr": cfg.lr}]
    if lora:
        groups.append({"params": lora, "lr": cfg.lora_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train_clips) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1)
    tracker, timer = BestTracker("accuracy"), Timer()
    prefixes = ("heads.speech_head.", "speech_encoder.")
    for epoch in range(cfg.epochs):
        model.train()
        model.speech.model.eval()  # dropout off in the frozen encoder
        perm = torch.randperm(len(train_clips), generator=gen).tolist()
        losses = []
        for a in tqdm(range(0, len(perm), cfg.batch_size), desc=f"{cfg.name} epoch {epoch}", leave=False):
            idx = perm[a : a + cfg.batch_size]
            waves = augmented_batch([train_clips[i] for i in idx], gen, device)
            states, mask = speech_states(model, waves, gen, bool(lora))
            logits, _ = head(states, mask)
            loss = F.cross_entropy(logits, y_train[idx].to(device), label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        with torch.inference_mode():
            dev_logits = speech_forward_batched(model, dev_clips, max_batch=64)
        report = dev_summary(dev_logits, y_dev)
        better = tracker.update(epoch, report, branch_tensors(model, prefixes), loss=float(np.mean(losses)))
        if better:  # keep the best-so-far on disk: a run stopped early still leaves a usable branch
            save_branch(Path(cfg.out), cfg.name, tracker.state, {"partial": True, "best_epoch": epoch, "dev": report})
        log.info(
            "%s epoch %d loss %.3f dev acc %.3f uar %.3f%s",
            cfg.name,
            epoch,
            np.mean(losses),
            report["accuracy"],
            report["uar"],
            " *" if better else "",
        )
    model.load_state_dict(tracker.state, strict=False)
    with torch.inference_mode():
        final = dev_summary(speech_forward_batched(model, dev_clips, max_batch=64), y_dev)
    summary = {
        "branch": "speech",
        "protocol": "RAVDESS speech, train actors 1-16, dev actors 17-20 (speaker-independent), 7 classes",
        "best_epoch": tracker.epoch,
        "dev": final,
        "history": tracker.history,
        "seconds": timer.seconds,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "model_config": {
            "speech_backbone": config.speech_backbone,
            "speech_trim": config.speech_trim,
            "speech_lora_rank": config.speech_lora_rank,
            "speech_dim": config.speech_dim,
            "speech_num_states": config.speech_num_states,
        },
    }
    save_branch(Path(cfg.out), cfg.name, tracker.state, summary)
    return summary
