"""Candidate fusion rules over calibrated branch probabilities, fitted and compared on train.fusion_combos.

Every rule maps probs (B, 3, 7) (MODALITIES order) and present (B, 3) bool to fused (B, 7) and the per-modality
weights (B, 3) it used (zero where absent). The chosen one lives in backend.heads.FusionGate; these are here to
show why it was chosen (python -m train.fit_gate --compare).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backend.labels import LABEL_TO_ID, MODALITIES, NUM_LABELS

EPS = 1e-6
NEUTRAL = LABEL_TO_ID["neutral"]


def features(probs: torch.Tensor) -> torch.Tensor:
    """(B, M, 7) -> (B, M, 3): confidence (top probability), normalised entropy, neutral probability."""
    p = probs.clamp_min(EPS)
    entropy = -(p * p.log()).sum(-1) / math.log(NUM_LABELS)
    return torch.stack([probs.max(-1).values, entropy, probs[..., NEUTRAL]], dim=-1)


def mixture(probs: torch.Tensor, present: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of the present modalities, weights softmax(logits) over them."""
    w = logits.masked_fill(~present, float("-inf")).softmax(-1)
    return (w.unsqueeze(-1) * probs).sum(1), w


def product(
    probs: torch.Tensor, present: torch.Tensor, exponent: torch.Tensor, alone_as_is: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of experts: fused ∝ prod_m p_m ** w_m over the present modalities; a modality alone passes through
    unchanged (its calibration kept). Weights shown: each exponent's share of their sum."""
    w = exponent * present
    if alone_as_is:
        w = torch.where(present.sum(-1, keepdim=True) == 1, present.to(w.dtype), w)
    fused = (w.unsqueeze(-1) * probs.clamp_min(EPS).log()).sum(1).softmax(-1)
    return fused, w / w.sum(-1, keepdim=True).clamp_min(EPS)


class Rule(nn.Module):
    """Base: a rule with (possibly no) parameters; `fixed` rules are not fitted."""

    fixed = False

    def forward(self, probs: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class Average(Rule):
    """Equal-weight average of the present modalities."""

    fixed = True

    def forward(self, probs, present):
        return mixture(probs, present, torch.zeros(present.shape, device=probs.device))


class SlopeGate(Rule):
    """The v1 rule: weights softmax(bias_m + slope_m * confidence_m) over the present modalities."""

    def __init__(self, bias: torch.Tensor | None = None, slope: torch.Tensor | None = None, fixed: bool = False):
        super().__init__()
        n = len(MODALITIES)
        self.bias = nn.Parameter(torch.zeros(n) if bias is None else bias.float().clone())
        self.slope = nn.Parameter(torch.zeros(n) if slope is None else slope.float().clone())
        self.fixed = fixed

    def forward(self, probs, present):
        return mixture(probs, present, self.bias + self.slope * probs.max(-1).values)


class Product(Rule):
    """Product of experts, exponent exp(bias_m + slope_m * feature_m); feature None: a constant per modality."""

    def __init__(self, feature: int | None = None, fit: bool = True) -> None:
        super().__init__()
        n = len(MODALITIES)
        self.feature = feature
        self.bias = nn.Parameter(torch.zeros(n))
        self.slope = nn.Parameter(torch.zeros(n))
        self.fixed = not fit

    def forward(self, probs, present):
        log_w = self.bias.expand(present.shape)
        if self.feature is not None:
            log_w = log_w + self.slope * features(probs)[..., self.feature]
        return product(probs, present, log_w.exp())


class SmallGate(Rule):
    """Per modality a 3 -> 8 -> 1 MLP on (confidence, entropy, neutral); its output is a mixture logit
    (as_product False) or a log exponent of a product of experts (as_product True)."""

    def __init__(self, as_product: bool, hidden: int = 8) -> None:
        super().__init__()
        self.as_product = as_product
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1)) for _ in MODALITIES
        )

    def forward(self, probs, present):
        f = features(probs)
        out = torch.cat([net(f[:, j]) for j, net in enumerate(self.nets)], dim=-1)
        if self.as_product:
            return product(probs, present, out.exp())
        return mixture(probs, present, out)


def fused_nll(rule: nn.Module, probs: torch.Tensor, present: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    fused, _ = rule(probs, present)
    return nn.functional.nll_loss(fused.clamp_min(1e-8).log(), y)


def fit_rule(
    rule: nn.Module, probs: torch.Tensor, present: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 300
) -> nn.Module:
    """Minimise fused NLL (+ a small L2 pull towards the initial parameters) with L-BFGS."""
    params = [p for p in rule.parameters() if p.requires_grad]
    if getattr(rule, "fixed", False) or not params:
        return rule
    start = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = fused_nll(rule, probs, present, y) + l2 * sum((p - s).pow(2).sum() for p, s in zip(params, start))
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return rule


class RobustProduct(Rule):
    """Product of floored experts: prod_m ((1 - e_m) p_m + e_m / 7) ** exp(bias_m), e_m = sigmoid(slope_m - 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(len(MODALITIES)))
        self.slope = nn.Parameter(torch.zeros(len(MODALITIES)))

    def forward(self, probs, present):
        floor = torch.sigmoid(self.slope - 2.0).unsqueeze(-1)
        floored = (1 - floor) * probs + floor / NUM_LABELS
        fused, w = product(floored, present, self.bias.exp().expand(present.shape))
        alone = present.sum(-1, keepdim=True) == 1
        return torch.where(alone, (probs * present.unsqueeze(-1)).sum(1), fused), w


class GateRule(Rule):
    """backend.heads.FusionGate (the chosen rule) as a rule; its parameters are the gate's."""

    def __init__(self, gate: nn.Module | None = None) -> None:
        super().__init__()
        from backend.heads import FusionGate

        self.gate = gate if gate is not None else FusionGate()

    def forward(self, probs, present):
        return self.gate.fuse(probs, present)


def candidates(shipped: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Rule]:
    """The rules compared; `shipped`: (bias, slope) of the model's current gate, if it is the v1 slope gate."""
    rules: dict[str, Rule] = {}
    if shipped is not None:
        rules["slope gate (as shipped)"] = SlopeGate(*shipped, fixed=True)
    rules |= {
        "slope gate (refit)": SlopeGate(),
        "average": Average(),
        "product (exponent 1)": Product(fit=False),
        "product, reliability per modality": Product(),
        "product, reliability ~ confidence": Product(feature=0),
        "product, reliability ~ entropy": Product(feature=1),
        "product, reliability ~ neutral": Product(feature=2),
        "small gate (mixture)": SmallGate(as_product=False),
        "small gate (product)": SmallGate(as_product=True),
        "robust product, reliability + floor per modality": RobustProduct(),
        "FusionGate: product, reliability ~ confidence (chosen)": GateRule(),
    }
    return rules
