"""Train the face-expression CNN on FER2013 train, select on FER2013 val (augmentation on the GPU)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from backend.branches import face_eval_logits
from backend.face import normalize_face
from backend.model import build_model
from backend.model_config import EmotionConfig
from train.augment import augment_faces
from train.corpora import fer2013_arrays
from train.fit_common import BestTracker, Timer, branch_tensors, dev_summary, save_branch
from train.seed import seed_everything

log = logging.getLogger(__name__)


@dataclass
class FaceFitConfig:
    data: Path
    out: Path
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    limit: int = 0


def face_logits(model, images: torch.Tensor) -> torch.Tensor:
    """Eval logits with the mirrored-face averaging the predictor uses."""
    model.heads.face_net.eval()
    with torch.inference_mode():
        return face_eval_logits(model, images)


def train_face(cfg: FaceFitConfig) -> dict:
    gen = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    root = Path(cfg.data) / "faces"
    x_train, y_train = fer2013_arrays(root / "fer2013_train.npz")
    x_val, y_val = fer2013_arrays(root / "fer2013_val.npz")
    if cfg.limit:
        x_train, y_train, x_val, y_val = (
            x_train[: cfg.limit],
            y_train[: cfg.limit],
            x_val[: cfg.limit],
            y_val[: cfg.limit],
        )

    def to_tensor(images: np.ndarray) -> torch.Tensor:  # same brightness/contrast framing as crops at inference
        normalized = np.stack([normalize_face(img) for img in images]).astype(np.float32)
        return torch.from_numpy(normalized).unsqueeze(1).to(device)

    xt, xv = to_tensor(x_train), to_tensor(x_val)
    yt, yv = torch.from_numpy(y_train).long().to(device), torch.from_numpy(y_val).long()
    model = build_model(EmotionConfig(), load_backbones=False).to(device)
    net = model.heads.face_net
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(xt) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    tracker, timer = BestTracker("accuracy"), Timer()
    use_bf16 = device.type == "cuda"
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen).to(device)
        losses = []
        for a in tqdm(range(0, len(perm), cfg.batch_size), desc=f"face epoch {epoch}", leave=False):
            idx = perm[a : a + cfg.batch_size]
            x = augment_faces(xt[idx], generator=gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits, _ = net(x)
            loss = F.cross_entropy(logits.float(), yt[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        report = dev_summary(face_logits(model, xv), yv)
        mean_loss = float(torch.stack(losses).mean())
        better = tracker.update(epoch, report, branch_tensors(model, ("heads.face_net.",)), loss=mean_loss)
        if better:  # keep the best-so-far on disk: a run stopped early still leaves a usable branch
            save_branch(Path(cfg.out), "face", tracker.state, {"partial": True, "best_epoch": epoch, "dev": report})
        log.info("face epoch %d loss %.3f val acc %.3f%s", epoch, mean_loss, report["accuracy"], " *" if better else "")
    model.load_state_dict(tracker.state, strict=False)
    final = dev_summary(face_logits(model, xv), yv)
    summary = {
        "branch": "face",
        "protocol": "FER2013 train, select on FER2013 val (public split), 7 classes, hflip TTA",
        "best_epoch": tracker.epoch,
        "dev": final,
        "history": tracker.history,
        "seconds": timer.seconds,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
    }
    save_branch(Path(cfg.out), "face", tracker.state, summary)
    return summary
