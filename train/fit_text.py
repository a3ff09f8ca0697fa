"""Train the text branch (MiniLM + LoRA + lexicon features) on GoEmotions-ekman + MELD train; select on dev."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from backend.labels import NUM_LABELS
from backend.model import build_model
from backend.model_config import EmotionConfig
from backend.text import encode, mean_pool, tokenize
from train.corpora import goemotions, meld
from train.fit_common import BestTracker, Timer, branch_tensors, dev_summary, save_branch
from train.metrics import classification_report
from train.seed import seed_everything

log = logging.getLogger(__name__)


@dataclass
class TextFitConfig:
    data: Path
    out: Path
    cache: Path
    backbone: str = "all-MiniLM-L6-v2"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")
    epochs: int = 3
    batch_size: int = 64
    max_length: int = 64
    lr: float = 1e-3
    lora_lr: float = 1e-3
    weight_decay: float = 1e-2
    use_meld: bool = True
    seed: int = 0
    device: str = "cpu"
    limit: int = 0


def text_logits(model, texts: list[str], lexicon: np.ndarray, max_length: int) -> torch.Tensor:
    """Logits for a batch, with precomputed lexicon features (B, F)."""
    batch = tokenize(model.text, texts, max_length=max_length)
    hidden, mask = encode(model.text, batch)
    lex = torch.from_numpy(lexicon).to(hidden.device)
    logits, _ = model.heads.text_head(mean_pool(hidden, mask), lex)
    return logits


def predict_logits(model, texts: list[str], lexicon: np.ndarray, max_length: int, batch: int = 256) -> torch.Tensor:
    model.eval()
    outs = []
    with torch.inference_mode():
        for a in range(0, len(texts), batch):
            outs.append(text_logits(model, texts[a : a + batch], lexicon[a : a + batch], max_length).float().cpu())
    return torch.cat(outs)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse square-root frequency, mean 1: lifts rare classes without drowning the common ones."""
    counts = np.bincount(labels, minlength=NUM_LABELS).astype(np.float64) + 1
    w = 1 / np.sqrt(counts)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def train_text(cfg: TextFitConfig) -> dict:
    gen = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    root = Path(cfg.data) / "text"
    train_ex = goemotions(root / "goemotions-ekman" / "train.tsv")
    if cfg.use_meld:
        train_ex += meld(root / "meld" / "train_sent_emo.csv")
    ge_dev = goemotions(root / "goemotions-ekman" / "dev.tsv", single_label_only=True)
    meld_dev = meld(root / "meld" / "dev_sent_emo.csv")
    if cfg.limit:
        train_ex, ge_dev, meld_dev = train_ex[: cfg.limit], ge_dev[: cfg.limit], meld_dev[: cfg.limit]
    config = EmotionConfig(
        text_backbone=cfg.backbone,
        text_lora_rank=cfg.lora_rank,
        text_lora_targets=list(cfg.lora_targets),
        text_max_length=cfg.max_length,
    )
    model = build_model(config, cache=cfg.cache, device=device, modalities=("text",), adapt_dims=True)
    timer = Timer()
    texts = [e.text for e in train_ex]
    y = np.array([e.label for e in train_ex])
    lex_train = model.lexicon.features_batch(texts).astype(np.float32)
    dev_texts, y_dev = [e.text for e in ge_dev], torch.tensor([e.label for e in ge_dev])
    lex_dev = model.lexicon.features_batch(dev_texts).astype(np.float32)
    meld_texts, y_meld = [e.text for e in meld_dev], np.array([e.label for e in meld_dev])
    lex_meld = model.lexicon.features_batch(meld_texts).astype(np.float32)
    log.info("lexicon features for %d texts in %.1f s", len(texts) + len(dev_texts) + len(meld_texts), timer.seconds)
    weights = class_weights(y).to(device)
    head = model.heads.text_head
    lora = [p for n, p in model.named_parameters() if ".lora_" in n]
    groups = [{"params": head.parameters(), "lr": cfg.lr}] + ([{"params": lora, "lr": cfg.lora_lr}] if lora else [])
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(texts) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.06
    )
    tracker = BestTracker("macro_f1")
    prefixes = ("heads.text_head.", "text_encoder.")
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(texts), generator=gen).numpy()
        losses = []
        for a in tqdm(range(0, len(perm), cfg.batch_size), desc=f"text epoch {epoch}", leave=False):
            idx = perm[a : a + cfg.batch_size]
            logits = text_logits(model, [texts[i] for i in idx], lex_train[idx], cfg.max_length)
            loss = F.cross_entropy(
                logits.float(), torch.from_numpy(y[idx]).to(device), weight=weights, label_smoothing=0.05
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        report = dev_summary(predict_logits(model, dev_texts, lex_dev, cfg.max_length), y_dev)
        better = tracker.update(epoch, report, branch_tensors(model, prefixes), loss=float(np.mean(losses)))
        if better:  # keep the best-so-far on disk: a run stopped early still leaves a usable branch
            save_branch(Path(cfg.out), "text", tracker.state, {"partial": True, "best_epoch": epoch, "dev": report})
        log.info(
            "text epoch %d loss %.3f GoEmotions dev macro-F1 %.3f%s",
            epoch,
            np.mean(losses),
            report["macro_f1"],
            " *" if better else "",
        )
    model.load_state_dict(tracker.state, strict=False)
    final = dev_summary(predict_logits(model, dev_texts, lex_dev, cfg.max_length), y_dev)
    meld_pred = predict_logits(model, meld_texts, lex_meld, cfg.max_length).argmax(-1).numpy()
    summary = {
        "branch": "text",
        "protocol": "train GoEmotions-ekman train + MELD train; select on GoEmotions-ekman dev, single-label items, macro-F1",
        "best_epoch": tracker.epoch,
        "dev": final,
        "meld_dev": classification_report(y_meld, meld_pred),
        "history": tracker.history,
        "seconds": timer.seconds,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "model_config": {
            "text_backbone": config.text_backbone,
            "text_lora_rank": config.text_lora_rank,
            "text_lora_targets": config.text_lora_targets,
            "text_dim": config.text_dim,
            "lexicon_dim": config.lexicon_dim,
            "text_max_length": config.text_max_length,
        },
    }
    save_branch(Path(cfg.out), "text", tracker.state, summary)
    return summary
