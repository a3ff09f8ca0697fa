"""Low-rank adapters (LoRA) for frozen pretrained encoders: a few hundred kB instead of a full copy."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class LoRALinear(nn.Module):
    """y = base(x) + scale * B(A(x)); base frozen, A and B trained. B starts at zero so the wrap is a no-op."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        assert rank > 0, f"LoRA rank must be positive, got {rank}"
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        a = self.lora_A.to(x.dtype)
        b = self.lora_B.to(x.dtype)
        return out + (x @ a.t() @ b.t()) * self.scale


def inject_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> list[str]:
    """Wrap every nn.Linear whose attribute name is in targets; freeze the rest. Returns wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def lora_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Only the adapter weights of model, keyed like model.state_dict() (with an optional prefix)."""
    return {f"{prefix}{k}": v for k, v in model.state_dict().items() if ".lora_" in f".{k}"}


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run the original pretrained weights (e.g. Whisper ASR) while adapters stay loaded."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    previous = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield
    finally:
        for m, was in zip(layers, previous):
            m.enabled = was


class PretrainedView(nn.Module):
    """Calls a LoRA-wrapped model with its adapters off: e.g. the lexicon embeds words with the frozen base
    encoder, so its cached embedding matrix stays valid whatever adapters are trained on top."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        was_training = self.model.training
        self.model.eval()  # the frozen encoder: no dropout either, even while a trainer is in train mode
        try:
            with lora_disabled(self.model):
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)
