"""Branch forwards shared by the predictor, the evaluator and the trainers: media arrays -> logits.

Gradients flow when the caller allows them (training); callers wrap inference in torch.inference_mode().
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from backend.labels import NUM_LABELS
from backend.model import EmotionModel

if TYPE_CHECKING:
    from backend.fast_speech import FastSpeech

MAX_BATCH_SECONDS = 240.0  # audio seconds per speech forward on CPU; buckets keep padding low
GPU_MAX_BATCH = 256  # on CUDA one forward takes up to 256 clips / 4096 s of audio (a few GiB in bf16)
GPU_MAX_BATCH_SECONDS = 4096.0


def length_buckets(lengths: list[int], max_batch: int, max_total: float) -> list[list[int]]:
    """Indices grouped by similar length (sorted), each group at most max_batch items / max_total padded size."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending: the clip being added is the group's longest
        if current and (len(current) >= max_batch or lengths[i] * (len(current) + 1) > max_total):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def speech_forward(model: EmotionModel, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """16 kHz mono clips (each <= 30 s) -> logits (B, 7), embeddings (B, E), in input order."""
    from backend.speech import encoder_hidden_states

    states, mask = encoder_hidden_states(
        model.speech, audios, trim=model.config.speech_trim, loudness=model.config.speech_loudness_norm
    )
    head = model.heads.speech_head
    return head(states.to(next(head.parameters()).dtype), mask)


def speech_forward_batched(
    model: EmotionModel,
    audios: list[np.ndarray],
    max_batch: int | None = None,
    max_seconds: float | None = None,
) -> torch.Tensor:
    """Logits for many clips, length-bucketed to limit padding; returns (N, 7) float32 on CPU.

    Defaults: 32 clips / 240 s per forward on CPU, 256 clips / 4096 s on CUDA (big batches fill the GPU).
    Results stay on the device until the last bucket, so buckets are queued without a sync between them.
    """
    return speech_embed_batched(model, audios, max_batch, max_seconds)[0]


def speech_embed_batched(
    model: EmotionModel,
    audios: list[np.ndarray],
    max_batch: int | None = None,
    max_seconds: float | None = None,
    fast: FastSpeech | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """speech_forward_batched that also returns the embeddings: (N, 7) logits and (N, E) float32 on CPU.
    fast: the inference-only GPU path of the same model (the Predictor's), used instead of speech_forward."""
    cuda = model.device.type == "cuda"
    max_batch = max_batch or (GPU_MAX_BATCH if cuda else 32)
    max_seconds = max_seconds or (GPU_MAX_BATCH_SECONDS if cuda else MAX_BATCH_SECONDS)
    lengths = [len(a) for a in audios]
    groups = length_buckets(lengths, max_batch, max_seconds * 16_000)
    parts = []  # kept on the device until the end: no host round trip (and no stream sync) between groups
    for group in groups:
        clips = [audios[i] for i in group]
        logits, e = fast.embed(clips) if fast is not None else speech_forward(model, clips)
        parts.append((logits.float(), e.float()))
    if not parts:
        return torch.empty(0, NUM_LABELS), torch.empty(0, model.config.embed_dim)
    # back to the callers' order on the device, then one copy to the host (two index_puts on the host took ~2 ms a
    # call on the H200's 16-core host)
    inverse = np.empty(len(audios), dtype=np.int64)
    inverse[[i for group in groups for i in group]] = np.arange(len(audios))
    both = torch.cat([torch.cat([logits, e], 1) for logits, e in parts])
    both = both[torch.from_numpy(inverse).to(both.device)].cpu()
    return both[:, :NUM_LABELS].contiguous(), both[:, NUM_LABELS:].contiguous()


def shifted_speech_logits(model: EmotionModel, emb: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Speech logits of embeddings moved by a speaker shift (backend.adapt): (N, E) + (N, E) -> (N, 7)."""
    head = model.heads.speech_head
    weight = next(head.parameters())
    return head.classifier((emb + shift).to(weight.device, weight.dtype)).float().cpu()


def text_forward(model: EmotionModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> logits (B, 7), embeddings (B, E)."""
    from backend.text import encode, mean_pool, tokenize

    batch = tokenize(model.text, texts, max_length=model.config.text_max_length)
    hidden, mask = encode(model.text, batch)
    pooled = mean_pool(hidden, mask)
    lex = torch.from_numpy(np.asarray(model.lexicon.features_batch(texts), dtype=np.float32)).to(pooled.device)
    head = model.heads.text_head
    return head(pooled.to(next(head.parameters()).dtype), lex)


def face_forward(model: EmotionModel, crops: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Face crops (N, 48, 48) float in [0, 1] -> logits (N, 7), embeddings (N, E)."""
    x = torch.as_tensor(crops, dtype=torch.float32, device=model.device)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return model.heads.face_net(x)


def face_eval_logits(model: EmotionModel, crops: np.ndarray | torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Inference logits (N, 7) float32 on CPU, averaged with the mirrored face (test-time augmentation)."""
    x = torch.as_tensor(crops, dtype=torch.float32)
    x = x.unsqueeze(1) if x.dim() == 3 else x
    net = model.heads.face_net
    outs = []
    for a in range(0, len(x), batch):
        part = x[a : a + batch].to(model.device)
        outs.append(((net(part)[0].float() + net(part.flip(-1))[0].float()) / 2).cpu())
    return torch.cat(outs) if outs else torch.empty(0, NUM_LABELS)
