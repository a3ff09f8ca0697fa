"""Temperature scaling (Guo et al. 2017): one scalar per branch, fitted on that branch's dev logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """logits (N, C), labels (N,) -> temperature T > 0 minimising dev NLL of softmax(logits / T)."""
    assert logits.dim() == 2 and labels.shape == logits.shape[:1], f"got {logits.shape} and {labels.shape}"
    with torch.inference_mode(False):
        logits, labels = logits.detach().float().cpu().clone(), labels.detach().long().cpu().clone()
        log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():  # callers may be inside inference_mode
        opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
