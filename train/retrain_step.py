"""One retraining step: items -> branch inputs (augmented) -> logits and projections -> the combined loss.

The loss per branch is soft-label cross-entropy on the head plus an unlikelihood term on the hard negative;
one supervised contrastive term runs over the projections of all branches together (positives across
speakers and modalities), with the per-class memory queue adding pairs that small batches lack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from backend.branches import face_forward, text_forward
from backend.labels import NUM_LABELS
from backend.model import EmotionModel
from backend.speech import pad_on_host
from backend.types import SAMPLE_RATE
from train import augment
from train.contrastive import ClassMemory, soft_cross_entropy, supcon_loss, unlikelihood_loss
from train.corrections import CorrectionItem

WHISPER_SECONDS = 30.0  # the encoder's window: evaluation crops longer clips to it


@dataclass
class Targets:
    """Per-branch rows: target (B, C) distributions, weight (B,), negative (B,) class or -1, owner (B,) item index."""

    target: torch.Tensor
    weight: torch.Tensor
    negative: torch.Tensor
    owner: torch.Tensor


@dataclass
class LossConfig:
    supcon_weight: float = 0.5
    negative_weight: float = 0.5
    temperature: float = 0.1
    hard_weight: float = 1.0


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off inside the block; each submodule's training flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class RetrainNet(nn.Module):
    """The trainable path of an EmotionModel as one module, so accelerate's DDP wrapper averages the gradients
    of heads and adapters (a training adapter: unlike the model's own modules it takes media lists). Input: a
    dict with "speech" (list of 1-D waveform tensors, plus an optional "mel_transform" and "frame_multiple"),
    "text" (list of strings), "face" (crops (B, 1, 48, 48)); output: modality -> (logits (B, 7),
    projection (B, P))."""

    def __init__(self, model: EmotionModel) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> RetrainNet:
        super().train(mode)
        if self.model.speech is not None:
            self.model.speech.model.eval()  # no dropout inside the frozen speech encoder
        return self

    def forward(self, inputs: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from backend.speech import encoder_hidden_states

        heads, out = self.model.heads, {}
        if "speech" in inputs:
            states, mask = encoder_hidden_states(
                self.model.speech,
                inputs["speech"],
                self.model.config.speech_trim,
                inputs.get("mel_transform"),
                inputs.get("frame_multiple", 2),
                loudness=self.model.config.speech_loudness_norm,
            )
            head = heads.speech_head
            out["speech"] = head(states.to(next(head.parameters()).dtype), mask)
        if "text" in inputs:
            with eval_mode(self.model.text_encoder):  # new words reach the lexicon's base-encoder embedding: no dropout
                self.model.lexicon.features_batch(inputs["text"])  # fills its cache, so text_forward embeds nothing
            out["text"] = text_forward(self.model, inputs["text"])
        if "face" in inputs:
            out["face"] = face_forward(self.model, inputs["face"])
        return {m: (logits, heads.projections[m](emb)) for m, (logits, emb) in out.items()}


def crop(audio: np.ndarray, seconds: float, rng: np.random.Generator | None) -> np.ndarray:
    """A window of at most `seconds`: random with rng (training), the start without (evaluation)."""
    size = int(seconds * SAMPLE_RATE)
    if len(audio) <= size:
        return audio
    start = int(rng.integers(0, len(audio) - size + 1)) if rng is not None else 0
    return audio[start : start + size]


@dataclass
class HostBatch:
    """A step's data as a loader thread leaves it, all on the CPU: zero-padded waveforms (B, N) (pinned for
    CUDA) with lengths, texts, face crops (B, 1, 48, 48), targets; seed: training (the device half of the
    augmentation, noise and SpecAugment, draws from it), None: evaluation."""

    targets: dict[str, Targets]
    rows: int = 0
    speech: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    text: list[str] | None = None
    face: torch.Tensor | None = None
    seed: int | None = None


def prepare_batch(
    rows: list[CorrectionItem],
    branches: tuple[str, ...],
    seed: int | None = None,
    max_seconds: float = WHISPER_SECONDS,
    pin: bool = False,
) -> HostBatch:
    """The CPU half of a step: crops, speed and shift per clip, face jitter, padding, targets. A pure function
    of (rows, seed), so loader threads can build batches ahead of the GPU and a resumed run rebuilds them."""
    train = seed is not None
    gen = torch.Generator().manual_seed(seed) if train else None
    rng = np.random.default_rng(seed) if train else None
    batch = HostBatch(targets={}, rows=len(rows), seed=seed)
    for m in branches:
        owners = [i for i, r in enumerate(rows) if m in r.modalities]
        if not owners:
            continue
        chosen = [rows[i] for i in owners]
        if m == "speech":
            clips = [crop(r.audio, max_seconds if train else WHISPER_SECONDS, rng) for r in chosen]
            batch.speech, batch.lengths = pad_on_host(augment.speed_and_shift(clips, gen) if train else clips, pin)
        elif m == "text":
            batch.text = [r.text for r in chosen]
        else:
            picks = [int(rng.integers(len(r.faces))) if train else 0 for r in chosen]
            faces = torch.from_numpy(np.stack([r.faces[k] for r, k in zip(chosen, picks)])).unsqueeze(1)
            batch.face = augment.augment_faces(faces, generator=gen) if train else faces
        batch.targets[m] = Targets(
            target=torch.from_numpy(np.stack([r.target for r in chosen])).float(),
            weight=torch.tensor([r.weight for r in chosen], dtype=torch.float32),
            negative=torch.tensor([r.negative for r in chosen], dtype=torch.long),
            owner=torch.tensor(owners, dtype=torch.long),
        )
    return batch


def to_device(batch: HostBatch, device: torch.device) -> tuple[dict, dict[str, Targets]]:
    """The device half: one copy of each tensor, then (training) noise inside each clip and SpecAugment on the
    log-mel, drawn from the batch's seed. Returns the net's inputs and the targets."""
    inputs: dict = {}
    if batch.speech is not None:
        if batch.seed is None:
            wave = batch.speech.to(device, non_blocking=True)
            inputs["speech"] = [wave[i, :n] for i, n in enumerate(batch.lengths.tolist())]
        else:
            noise = torch.Generator(device=device).manual_seed(batch.seed)
            inputs["speech"] = augment.noisy_views(batch.speech, batch.lengths, device, noise)
            masks = torch.Generator().manual_seed(batch.seed + 1)
            inputs["mel_transform"] = functools.partial(augment.spec_augment, generator=masks)
    if batch.text is not None:
        inputs["text"] = batch.text
    if batch.face is not None:
        inputs["face"] = batch.face.to(device, non_blocking=True)
    targets = {
        m: Targets(**{f.name: getattr(t, f.name).to(device, non_blocking=True) for f in dataclasses.fields(t)})
        for m, t in batch.targets.items()
    }
    return inputs, targets


def build_inputs(
    rows: list[CorrectionItem],
    branches: tuple[str, ...],
    device: torch.device,
    seed: int | None = None,
    max_seconds: float = WHISPER_SECONDS,
) -> tuple[dict, dict[str, Targets]]:
    """Net inputs and targets for the rows' branches, in one go. seed given: training (augmentation drawn from it)."""
    return to_device(prepare_batch(rows, branches, seed, max_seconds, pin=device.type == "cuda"), device)


def retrain_loss(
    out: dict[str, tuple[torch.Tensor, torch.Tensor]],
    targets: dict[str, Targets],
    memory: ClassMemory | None,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """(loss, its parts, all projections (N, P), their labels (N,)) for one step."""
    ce = neg = 0.0
    zs, ts, ws, negs = [], [], [], []
    for m, (logits, z) in out.items():
        t = targets[m]
        ce = ce + soft_cross_entropy(logits, t.target, t.weight)
        neg = neg + unlikelihood_loss(logits, t.negative, t.weight)
        zs.append(z.float())
        ts.append(t.target)
        ws.append(t.weight)
        negs.append(t.negative)
    z, target = torch.cat(zs), torch.cat(ts)
    mem_z, mem_t = memory.entries() if memory is not None else (None, None)
    sc = supcon_loss(z, target, torch.cat(ws), torch.cat(negs), mem_z, mem_t, cfg.temperature, cfg.hard_weight)
    loss = ce + cfg.negative_weight * neg + cfg.supcon_weight * sc
    parts = {"ce": ce.item(), "negative": neg.item(), "supcon": sc.item()}
    return loss, parts, z.detach(), target.argmax(-1)


def fused_probs(
    out: dict[str, tuple[torch.Tensor, torch.Tensor]], targets: dict[str, Targets], model: EmotionModel, n: int
) -> torch.Tensor:
    """Calibrated branch probabilities fused by the model's gate, per item: (n, 7) (uniform where nothing ran).
    Items with the same set of modalities go through the gate together."""
    gate = model.heads.gate
    device = gate.bias.device
    probs, present = {}, torch.zeros(n, len(out), dtype=torch.bool, device=device)
    for j, (m, (logits, _)) in enumerate(out.items()):
        probs[m] = torch.zeros(n, NUM_LABELS, device=device)
        probs[m][targets[m].owner] = gate.calibrated(logits, m)
        present[targets[m].owner, j] = True
    fused = torch.full((n, NUM_LABELS), 1.0 / NUM_LABELS, device=device)
    names = list(out)
    for combo in torch.unique(present, dim=0).tolist():
        if not any(combo):
            continue
        rows = (present == torch.tensor(combo, device=device)).all(dim=1)
        fused[rows] = gate({m: probs[m][rows] for m, on in zip(names, combo) if on})[0]
    return fused


def fusion_loss(
    out: dict[str, tuple[torch.Tensor, torch.Tensor]], targets: dict[str, Targets], model: EmotionModel, n: int
) -> torch.Tensor:
    """Soft cross-entropy of the gate's fused probabilities on the items two or more branches saw (corrections of
    audio with typed text or video): this is what teaches the gate which modality to trust. Zero when a batch
    has none, but still connected to the gate, so DDP sees its parameters used in every step."""
    gate = model.heads.gate
    device = gate.bias.device
    seen = torch.zeros(n, dtype=torch.long, device=device)
    target = torch.zeros(n, NUM_LABELS, device=device)
    weight = torch.zeros(n, device=device)
    for t in targets.values():
        seen[t.owner] += 1
        target[t.owner] = t.target.float()
        weight[t.owner] = t.weight.float()
    zero = (gate.bias.sum() + gate.slope.sum()) * 0.0
    paired = seen >= 2
    if not bool(paired.any()):
        return zero
    fused = fused_probs(out, targets, model, n)[paired]
    loss = -(target[paired] * fused.clamp_min(1e-8).log()).sum(-1)
    return zero + (weight[paired] * loss).mean()
