"""Losses for retraining on corrections: the seed's positive/negative contrastive learning, made concrete.

- Supervised contrastive loss (SupCon, Khosla et al. 2020) on the unit-norm projection of each branch's
  embedding: clips with the same label (any speaker, any modality) are positives, everything else negatives.
  Soft labels: the positive weight of a pair is the overlap <q_i, q_j> of their label distributions, so one-hot
  labels give plain SupCon and a clip the crowd split 2:1 counts two thirds of a positive.
- Hard negatives: when a person corrected the model, the label it predicted is the anchor's hard negative;
  candidates of that class weigh (1 + hard_weight) times more in the anchor's denominator (Robinson et al.
  2021), and the head gets an unlikelihood term -log(1 - p[wrong label]).
- A per-class memory queue (MoCo, He et al. 2020; per class as in SPCL) of recent detached projections, so a
  batch of a handful of corrections still has positives and negatives for every class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """logits (B, C), target (B, C) rows summing to 1, weight (B,) -> mean over rows of w * -sum(q log p)."""
    assert logits.shape == target.shape and weight.shape == logits.shape[:1], (
        f"expected logits (B, C), target (B, C), weight (B,), got {logits.shape} {target.shape} {weight.shape}"
    )
    loss = -(target.float() * logits.float().log_softmax(-1)).sum(-1)
    return (weight.float() * loss).sum() / max(len(loss), 1)


def unlikelihood_loss(logits: torch.Tensor, negative: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """-log(1 - p[negative]) for rows with a hard negative (class id >= 0; -1 = none); mean over all rows."""
    assert negative.shape == logits.shape[:1] == weight.shape, "expected logits (B, C), negative (B,), weight (B,)"
    has = negative >= 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    p_neg = logits.float().softmax(-1).gather(1, negative.clamp_min(0)[:, None]).squeeze(1)
    loss = -torch.log1p(-p_neg.clamp(max=1 - 1e-6))
    return (weight.float() * loss * has).sum() / len(loss)


def supcon_loss(
    z: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
    memory_z: torch.Tensor | None = None,
    memory_target: torch.Tensor | None = None,
    temperature: float = 0.1,
    hard_weight: float = 1.0,
) -> torch.Tensor:
    """Soft-label SupCon over the batch and the memory.

    z (B, D) unit-norm projections, target (B, C) label distributions, weight (B,) per-anchor weights,
    negative (B,) hard-negative class per anchor or -1, memory_z (M, D), memory_target (M, C).
    Anchors without any positive (no other item shares their label) are left out of the mean.
    """
    assert z.dim() == 2 and target.shape[0] == z.shape[0], (
        f"expected z (B, D), target (B, C), got {z.shape} {target.shape}"
    )
    b = z.shape[0]
    keys, key_target = z.float(), target.float()
    if memory_z is not None and len(memory_z):
        keys = torch.cat([keys, memory_z.to(keys)])
        key_target = torch.cat([key_target, memory_target.to(key_target)])
    sim = z.float() @ keys.T / temperature  # (B, B + M)
    self_mask = torch.zeros_like(sim, dtype=torch.bool)
    self_mask[torch.arange(b), torch.arange(b)] = True
    positive = (target.float() @ key_target.T).masked_fill(self_mask, 0.0)
    log_w = torch.zeros_like(sim)
    if negative is not None and bool((negative >= 0).any()):
        share = key_target[:, negative.clamp_min(0)].T  # (B, N): how much key j belongs to anchor i's negative
        log_w = torch.log1p(hard_weight * share * (negative >= 0)[:, None].float())
    denominator = torch.logsumexp((sim + log_w).masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - denominator
    total = positive.sum(1)
    valid = total > 1e-8
    if not bool(valid.any()):
        return z.sum() * 0.0
    per_anchor = -(positive * log_prob).sum(1)[valid] / total[valid]
    w = weight.float()[valid] if weight is not None else torch.ones_like(per_anchor)
    return (w * per_anchor).sum() / valid.sum()


class ClassMemory(nn.Module):
    """Per-class FIFO of detached projections: bank (C, size, D), with a fill count and write pointer per class.

    Buffers only, so accelerate checkpoints it (register_for_checkpointing) and a resumed run sees the same
    queue. Every process pushes the same gathered rows, so the queues stay identical under DDP.
    """

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        assert size > 0 and dim > 0, f"memory size and dim must be positive, got {size}, {dim}"
        self.num_classes, self.size = num_classes, size
        self.register_buffer("bank", torch.zeros(num_classes, size, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """z (B, D), labels (B,) class ids; rows labelled -1 (padding) are skipped."""
        assert z.dim() == 2 and labels.shape == z.shape[:1], (
            f"expected z (B, D), labels (B,), got {z.shape} {labels.shape}"
        )
        z = F.normalize(z.detach().float(), dim=-1).to(self.bank.device)
        labels = labels.to(self.bank.device)
        for c in labels.unique().tolist():
            if c < 0:
                continue
            rows = z[labels == c][-self.size :]
            n = len(rows)
            index = (self.ptr[c] + torch.arange(n, device=rows.device)) % self.size
            self.bank[c, index] = rows
            self.ptr[c] = (self.ptr[c] + n) % self.size
            self.count[c] = torch.clamp(self.count[c] + n, max=self.size)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled slots: projections (M, D) and their one-hot targets (M, C)."""
        filled = torch.arange(self.size, device=self.bank.device)[None, :] < self.count[:, None]  # (C, size)
        labels = torch.arange(self.num_classes, device=self.bank.device)[:, None].expand(-1, self.size)[filled]
        return self.bank[filled], F.one_hot(labels, self.num_classes).float()
