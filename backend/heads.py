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

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, L, T, D), mask (B, T) -> logits (B, 7), embedding (B, E)."""
        assert states.dim() == 4 and states.shape[1] == self.num_states and states.shape[3] == self.dim, (
            f"expected states (B, {self.num_states}, T, {self.dim}), got {tuple(states.shape)}"
        )
        mix = self.layer_logits.softmax(0).to(states.dtype)
        x = torch.einsum("l,bltd->btd", mix, states)
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
    """Late fusion over calibrated per-modality probabilities.

    Each present modality m gets gate logit bias_m + slope_m * confidence_m; a softmax over the present
    modalities gives the weights, so an absent modality is simply left out and the relative weights of
    the others do not change. Temperatures calibrate each branch's logits first.
    """

    def __init__(self) -> None:
        super().__init__()
        n = len(MODALITIES)
        self.bias = nn.Parameter(torch.zeros(n))
        self.slope = nn.Parameter(torch.zeros(n))
        self.register_buffer("log_temperature", torch.zeros(n))

    def calibrated(self, logits: torch.Tensor, modality: str) -> torch.Tensor:
        """logits (B, 7) -> calibrated probabilities (B, 7)."""
        t = self.log_temperature[MODALITIES.index(modality)].exp()
        return (logits.float() / t).softmax(-1)

    def forward(self, probs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """probs: modality -> (B, 7) calibrated probabilities (present ones only) -> fused (B, 7), weights."""
        assert probs, "fusion needs at least one modality"
        names = [m for m in MODALITIES if m in probs]
        logits = []
        for m in names:
            i = MODALITIES.index(m)
            confidence = probs[m].max(dim=-1).values
            logits.append(self.bias[i] + self.slope[i] * confidence)
        weights = torch.stack(logits, dim=-1).softmax(dim=-1)  # (B, M)
        fused = sum(weights[:, j : j + 1] * probs[m] for j, m in enumerate(names))
        return fused, {m: weights[:, j] for j, m in enumerate(names)}
