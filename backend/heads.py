"""Per-modality heads and the fusion gate. Tensors in, tensors out; no files, no media types."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backend.labels import MODALITIES, NUM_LABELS


class AttentivePooling(nn.Module):
    """Attentive statistics pooling: attention-weighted mean and std over valid frames."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, T) bool -> (B, 2D)."""
        assert x.dim() == 3 and mask.shape == x.shape[:2], f"expected x (B,T,D) and mask (B,T), got {x.shape}"
        scores = self.score(x).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1).unsqueeze(-1).to(x.dtype)
        mean = (weights * x).sum(dim=1)
        var = (weights * (x - mean.unsqueeze(1)) ** 2).sum(dim=1)
        return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


class SpeechHead(nn.Module):
    """Learned mix of all encoder layers -> attentive pooling -> embedding -> 7 logits."""

    def __init__(self, num_states: int, dim: int, hidden: int, embed: int, dropout: float) -> None:
        super().__init__()
        self.num_states, self.dim = num_states, dim
        self.layer_logits = nn.Parameter(torch.zeros(num_states))
        self.norm = nn.LayerNorm(dim)
        self.frame = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.pool = AttentivePooling(hidden)
        self.embed = nn.Sequential(nn.Linear(2 * hidden, embed), nn.GELU())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed, NUM_LABELS))
        # mean embedding of the training clips: a speaker's own mean is moved here (backend.adapt); zeros: unknown
        self.register_buffer("reference_mean", torch.zeros(embed))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, L, T, D), mask (B, T) -> logits (B, 7), embedding (B, E)."""
        assert states.dim() == 4 and states.shape[1] == self.num_states and states.shape[3] == self.dim, (
            f"expected states (B, {self.num_states}, T, {self.dim}), got {tuple(states.shape)}"
        )
        mix = self.layer_logits.softmax(0).to(states.dtype)
        return self.from_mixed(torch.einsum("l,bltd->btd", mix, states), mask)

    def from_mixed(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer mix already taken (B, T, D) (backend.fast_speech accumulates it layer by layer) -> logits, emb."""
        x = self.frame(self.norm(x))
        emb = self.embed(self.pool(x, mask))
        return self.classifier(emb), emb


class TextHead(nn.Module):
    """Mean-pooled sentence embedding + lexicon features -> embedding -> 7 logits."""

    def __init__(self, dim: int, lexicon_dim: int, embed: int, dropout: float) -> None:
        super().__init__()
        self.dim, self.lexicon_dim = dim, lexicon_dim
        self.lexicon = nn.Sequential(nn.Linear(lexicon_dim, 64), nn.GELU())
        self.embed = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim + 64, embed), nn.GELU())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed, NUM_LABELS))

    def forward(self, pooled: torch.Tensor, lexicon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (B, D), lexicon (B, F) -> logits (B, 7), embedding (B, E)."""
        assert pooled.shape[-1] == self.dim and lexicon.shape[-1] == self.lexicon_dim, (
            f"expected pooled (B,{self.dim}) and lexicon (B,{self.lexicon_dim}), "
            f"got {tuple(pooled.shape)} {tuple(lexicon.shape)}"
        )
        emb = self.embed(torch.cat([pooled, self.lexicon(lexicon.to(pooled.dtype))], dim=-1))
        return self.classifier(emb), emb


def _conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    )


class FaceNet(nn.Module):
    """Compact VGG-style CNN for 48x48 grayscale face crops (FER2013 framing)."""

    def __init__(self, channels: tuple[int, ...], embed: int, dropout: float, size: int = 48) -> None:
        super().__init__()
        self.size = size
        blocks, cin = [], 1
        for cout in channels:
            blocks.append(_conv_block(cin, cout, dropout / 2))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(cin, embed), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed, NUM_LABELS))

    def forward(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (B, 1, 48, 48) in [0, 1] -> logits (B, 7), embedding (B, E)."""
        assert faces.dim() == 4 and faces.shape[1:] == (1, self.size, self.size), (
            f"expected faces (B, 1, {self.size}, {self.size}), got {tuple(faces.shape)}"
        )
        x = self.features((faces - 0.5) / 0.25)
        x = F.adaptive_avg_pool2d(x, 1)
        emb = self.embed(x)
        return self.classifier(emb), emb


class ProjectionHead(nn.Module):
    """Maps a branch embedding to the unit sphere for the supervised contrastive loss."""

    def __init__(self, embed: int, proj: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed, embed), nn.ReLU(), nn.Linear(embed, proj))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(emb), dim=-1)


class FusionGate(nn.Module):
    """Late fusion: a product of calibrated experts, each raised to a learned reliability exponent.

    fused ∝ prod_m p_m ** w_m over the present modalities, with w_m = exp(bias_m + slope_m * confidence_m) (how much
    modality m counts; confidence = its top probability). Agreeing modalities multiply their evidence (surer than
    any one alone), disagreeing ones are weighed by reliability instead of the loudest winning outright; a missing
    modality is left out; a modality alone passes through unchanged (its calibrated probabilities). The weights
    reported are w_m over the sum of the present ones: exactly the weights of the weighted geometric mean the
    product is (log fused = sum_m weight_m * S * log p_m + const, S = sum of exponents). Temperatures calibrate
    each branch's logits first (log_temperature, fitted on each branch's dev set).
    """

    def __init__(self) -> None:
        super().__init__()
        n = len(MODALITIES)
        self.bias = nn.Parameter(torch.zeros(n))  # log reliability exponent of each modality
        self.slope = nn.Parameter(torch.zeros(n))  # its change with the modality's confidence
        self.register_buffer("log_temperature", torch.zeros(n))

    def calibrated(self, logits: torch.Tensor, modality: str) -> torch.Tensor:
        """logits (B, 7) -> calibrated probabilities (B, 7)."""
        t = self.log_temperature[MODALITIES.index(modality)].exp()
        return (logits.float() / t).softmax(-1)

    def exponents(self, probs: torch.Tensor) -> torch.Tensor:
        """probs (B, M, 7) in MODALITIES order -> reliability exponents (B, M)."""
        return (self.bias + self.slope * probs.max(-1).values).exp()

    def fuse(self, probs: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """probs (B, M, 7) in MODALITIES order (rows of absent modalities ignored), present (B, M) bool
        -> fused (B, 7), weights (B, M) summing to 1 over the present modalities (0 where absent)."""
        assert probs.dim() == 3 and probs.shape[1:] == (len(MODALITIES), NUM_LABELS), (
            f"expected probs (B, {len(MODALITIES)}, {NUM_LABELS}), got {tuple(probs.shape)}"
        )
        assert present.shape == probs.shape[:2] and bool(present.any(-1).all()), "every row needs a modality"
        probs, present = probs.float(), present.to(probs.device)
        w = self.exponents(probs) * present
        log_p = probs.clamp_min(1e-8).log().masked_fill(~present.unsqueeze(-1), 0.0)
        fused = (w.unsqueeze(-1) * log_p).sum(1).softmax(-1)
        alone = present.sum(-1, keepdim=True) == 1
        single = (probs * present.unsqueeze(-1)).sum(1)  # alone: exactly the branch's probabilities
        return torch.where(alone, single, fused), w / w.sum(-1, keepdim=True)

    def forward(self, probs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """probs: modality -> (B, 7) calibrated probabilities (present ones only) -> fused (B, 7), weights."""
        assert probs, "fusion needs at least one modality"
        first = next(iter(probs.values()))
        stacked = torch.stack([probs.get(m, torch.full_like(first, 1.0 / NUM_LABELS)) for m in MODALITIES], dim=1)
        present = torch.tensor([m in probs for m in MODALITIES], device=first.device).expand(first.shape[0], -1)
        fused, weights = self.fuse(stacked, present)
        return fused, {m: weights[:, j] for j, m in enumerate(MODALITIES) if m in probs}
