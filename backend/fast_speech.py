"""The speech branch for inference on a GPU: the same function as speech_forward, run at the hardware's pace.

speech_forward (training, CPU) runs transformers' Whisper layers under bf16 autocast with LoRA as extra matmuls,
stacks all seven hidden states, and launches ~300 small kernels a batch. Here, built once per loaded model:
- LoRA merged into the base weights (W + scale B A) and every weight cast to bf16 once (no autocast copies);
- q, k, v as one fused projection (q's 1/sqrt(d) folded into its weights); padding keys never attended, so a
  clip's result does not depend on its batch: on CUDA through flash attention's variable-length form
  (torch.nn.attention.varlen, `seqused_k` = each clip's valid frames, the padded layout kept), elsewhere (or on
  a torch without it) scaled-dot-product attention with the key-padding mask (the memory-efficient kernel, ~25%
  slower at 30 s); no mask at all when no clip in the batch is padded (the flash kernel);
- the head's layer mix accumulated on the fly instead of a (B, 7, T, D) stack;
- small batches replayed from CUDA graphs captured per (batch, length) bucket: one launch instead of hundreds;
- big batches (optional, `compile_big`, CUDA only) through one torch.compile of the same forward with dynamic
  shapes: fused layer norms, GELUs and residual adds (a static compile took a 256 x 4 s forward from 15.1 to
  9.9 ms on an H200, bench/inference.py --stages; the dynamic one is not timed apart); the first big batch pays
  the compile (14 s static there), a failure falls back to the eager forward.
Graphed batches are padded to whole seconds and a power-of-two batch, so few shapes exist (padding rows are
silent clips whose results are dropped: rows never mix); big batches are trimmed to their longest clip. The
weights are a snapshot: build a new FastSpeech after the model's weights change (the Predictor builds one when it
loads a model).
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from backend.lora import LoRALinear
from backend.model import EmotionModel
from backend.speech import (
    HOP_LENGTH,
    MIN_FRAMES,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    log_mel,
    mel_filters,
    normalize_loudness,
    pad_on_host,
    padded_frames,
    valid_frames,
)

log = logging.getLogger(__name__)


FRAME_BUCKET = 100  # mel frames: lengths padded to whole seconds (30 shapes at most)
GRAPH_MAX_BATCH = 16  # batches up to this size replay a captured CUDA graph (launch-bound); larger run eagerly


def _varlen_attn():
    """Flash attention over clips laid end to end, keys past each clip's valid frames ignored (`seqused_k`):
    torch.nn.attention.varlen_attn where it takes seqused_k, else the aten op under it (older torch), else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None and "seqused_k" in inspect.signature(varlen_attn).parameters:
        return varlen_attn
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is None or "seqused_k" not in str(op.default._schema):
        return None

    def flash(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, seqused_k):  # the public API's arguments
        return op(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False, scale=scale, seqused_k=seqused_k)[0]

    return flash


def merged_weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An nn.Linear or LoRALinear -> (weight, bias) of the one linear map it computes (adapters merged)."""
    if isinstance(linear, LoRALinear):
        weight = linear.base.weight.float()
        if linear.enabled:
            weight = weight + linear.scale * (linear.lora_B.float() @ linear.lora_A.float())
        return weight, linear.base.bias
    return linear.weight.float(), linear.bias


@dataclass
class FastLayer:
    """One Whisper encoder layer's weights, merged and cast."""

    ln1: tuple[torch.Tensor, torch.Tensor]
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln2: tuple[torch.Tensor, torch.Tensor]
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor


def _cast(t: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(like.shape[0], device=like.device, dtype=dtype) if t is None else t.detach().to(dtype)


def fast_layer(layer: nn.Module, dtype: torch.dtype) -> FastLayer:
    attn = layer.self_attn
    scaling = attn.head_dim**-0.5
    (qw, qb), (kw, kb), (vw, vb) = (merged_weight(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    qb, kb, vb = (_cast(b, w, torch.float32) for b, w in ((qb, qw), (kb, kw), (vb, vw)))
    ow, ob = merged_weight(attn.out_proj)
    f1w, f1b = merged_weight(layer.fc1)
    f2w, f2b = merged_weight(layer.fc2)
    ln = lambda m: (m.weight.detach().to(dtype), m.bias.detach().to(dtype))  # noqa: E731
    return FastLayer(
        ln1=ln(layer.self_attn_layer_norm),
        qkv_w=torch.cat([qw * scaling, kw, vw]).to(dtype).contiguous(),
        qkv_b=torch.cat([qb * scaling, kb, vb]).to(dtype),
        out_w=ow.to(dtype).contiguous(),
        out_b=_cast(ob, ow, dtype),
        ln2=ln(layer.final_layer_norm),
        fc1_w=f1w.to(dtype).contiguous(),
        fc1_b=_cast(f1b, f1w, dtype),
        fc2_w=f2w.to(dtype).contiguous(),
        fc2_b=_cast(f2b, f2w, dtype),
    )


class FastSpeech:
    """speech_forward for eval on CUDA (or CPU, for tests): clips -> (logits (N, 7), embeddings (N, E)) float32."""

    def __init__(
        self,
        model: EmotionModel,
        dtype: torch.dtype = torch.bfloat16,
        graphs: bool = True,
        compile_big: bool = False,
        varlen: bool = True,
    ) -> None:
        backbone = model.speech
        assert backbone.kind == "whisper", "the fast path is for Whisper encoders"
        encoder = backbone.model.get_encoder()
        self.device, self.dtype = model.device, dtype
        self.loudness = model.config.speech_loudness_norm
        self.n_mels = encoder.config.num_mel_bins
        self.heads = encoder.config.encoder_attention_heads
        self.eps = encoder.layer_norm.eps
        self.filters = mel_filters(self.n_mels).to(self.device)
        self.window = torch.hann_window(N_FFT, device=self.device)
        with torch.no_grad():
            self.conv1 = (encoder.conv1.weight.detach().to(dtype), encoder.conv1.bias.detach().to(dtype))
            self.conv2 = (encoder.conv2.weight.detach().to(dtype), encoder.conv2.bias.detach().to(dtype))
            self.positions = encoder.embed_positions.weight.detach().to(dtype)
            self.layers = [fast_layer(layer, dtype) for layer in encoder.layers]
            self.final_ln = (encoder.layer_norm.weight.detach().to(dtype), encoder.layer_norm.bias.detach().to(dtype))
        self.head = model.heads.speech_head
        self.mix = self.head.layer_logits.detach().float().softmax(0).tolist()  # Python floats: no device sync
        self.graphs_enabled = graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None
        self.compile_big = compile_big and self.device.type == "cuda"  # on a CPU the compile costs more than it saves
        self._compiled = None
        usable = model.device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        self.varlen = _varlen_attn() if varlen and usable else None  # None: masked scaled-dot-product attention

    # -- the computation -------------------------------------------------------------------------------------
    def _forward(
        self, wave: torch.Tensor, lengths: torch.Tensor, unpadded: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wave (B, n) float32 zero-padded with >= N_FFT zeros after every clip, lengths (B,) -> logits, emb.
        unpadded: the caller knows no clip has padding frames: attend without a mask (the flash kernel)."""
        if self.loudness:
            wave = normalize_loudness(wave, lengths)
        frames = wave.shape[1] // HOP_LENGTH
        mel = log_mel(wave, self.n_mels, filters=self.filters, window=self.window).to(self.dtype)
        mask = torch.arange(frames // 2, device=wave.device)[None, :] < valid_frames(lengths, frames)[:, None]
        x = nn.functional.gelu(nn.functional.conv1d(mel, *self.conv1, padding=1))
        x = nn.functional.gelu(nn.functional.conv1d(x, *self.conv2, stride=2, padding=1)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        acc = x * self.mix[0]  # the head's layer mix, summed in place as the layers run (no 7-state stack)
        attn_mask: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        if not unpadded:
            attn_mask = mask[:, None, None, :] if self.varlen is None else self._varlen_lengths(mask)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = self._layer(x, layer, attn_mask)
            state = nn.functional.layer_norm(x, x.shape[-1:], *self.final_ln, self.eps) if i == last else x
            acc.add_(state, alpha=self.mix[i + 1])
        return self.head.from_mixed(acc.float(), mask)

    @staticmethod
    def _varlen_lengths(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) valid-frame mask -> (cumulative starts (B + 1,), valid frames (B,)) int32 for varlen_attn:
        every clip keeps its T padded slots, only its first `valid` keys are attended."""
        b, t = mask.shape
        starts = torch.arange(0, (b + 1) * t, t, device=mask.device, dtype=torch.int32)
        return starts, mask.sum(1, dtype=torch.int32)

    def _layer(
        self, x: torch.Tensor, w: FastLayer, attn_mask: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        b, t, d = x.shape
        h = nn.functional.layer_norm(x, (d,), *w.ln1, self.eps)
        qkv = nn.functional.linear(h, w.qkv_w, w.qkv_b).view(b, t, 3, self.heads, d // self.heads)
        if isinstance(attn_mask, tuple):  # flash varlen: tokens of all clips in one row, (B * T, heads, head_dim)
            starts, valid = attn_mask
            q, k, v = (qkv[:, :, i].reshape(b * t, self.heads, -1) for i in range(3))
            a = self.varlen(q, k, v, starts, starts, t, t, scale=1.0, seqused_k=valid).reshape(b, t, d)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
            a = a.transpose(1, 2).reshape(b, t, d)
        x = x + nn.functional.linear(a, w.out_w, w.out_b)
        h = nn.functional.layer_norm(x, (d,), *w.ln2, self.eps)
        h = nn.functional.gelu(nn.functional.linear(h, w.fc1_w, w.fc1_b))
        return x + nn.functional.linear(h, w.fc2_w, w.fc2_b)

    def embed(self, clips: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (1-D arrays, <= 30 s) -> logits (B, 7), embeddings (B, E) float32 on the device."""
        host, lengths = pad_on_host(clips, pin=self.device.type == "cuda")
        wave = host.to(self.device, non_blocking=True)
        return self(wave, lengths.to(self.device, non_blocking=True), host_lengths=lengths)

    # -- batching --------------------------------------------------------------------------------------------
    @staticmethod
    def bucket_frames(longest: int) -> int:
        """Mel frames for a batch whose longest clip has `longest` samples: >= N_FFT zeros after it, whole seconds."""
        frames = max(MIN_FRAMES, math.ceil((longest + N_FFT) / HOP_LENGTH))
        return min(N_FRAMES, math.ceil(frames / FRAME_BUCKET) * FRAME_BUCKET)

    @torch.inference_mode()
    def __call__(
        self, wave: torch.Tensor, lengths: torch.Tensor, host_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A zero-padded batch on the device (B, n), lengths (B,) -> logits (B, 7), embeddings (B, E) float32.
        host_lengths: the same lengths on the CPU, if the caller has them (saves a device sync per batch)."""
        b, n = wave.shape
        if n > N_SAMPLES:
            raise ValueError(f"Whisper's encoder takes at most 30 s; split clips of {n} samples")
        with torch.autocast(self.device.type, enabled=False):
            if self.graphs_enabled and b <= GRAPH_MAX_BATCH:
                size, frames = 1 << (b - 1).bit_length(), self.bucket_frames(n)
                graph = self._graphs.get((size, frames)) or self._capture(size, frames)
                logits, emb = graph.run(wave, lengths)
                return logits[:b].float(), emb[:b].float()
            frames = padded_frames(n)  # big batches: trimmed to the longest clip, as speech_forward does
            wave = nn.functional.pad(wave, (0, frames * HOP_LENGTH - n))
            known = lengths if host_lengths is None else host_lengths  # device lengths: .all() waits for the GPU
            unpadded = bool((valid_frames(known, frames) >= frames // 2).all())
            logits, emb = self._big_forward(wave, lengths, unpadded)
            return logits.float(), emb.float()

    def _big_forward(
        self, wave: torch.Tensor, lengths: torch.Tensor, unpadded: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """_forward for a batch too big for a graph: compiled once (dynamic shapes) if compile_big, else eager."""
        if self.compile_big:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self._forward, dynamic=True)
                return self._compiled(wave, lengths, unpadded)
            except Exception:  # a compiler that fails here must not fail the request: eager computes the same
                log.warning("torch.compile of the speech path failed; big batches run eagerly", exc_info=True)
                self.compile_big = False
        return self._forward(wave, lengths, unpadded)

    def _capture(self, size: int, frames: int) -> _Graph:
        graph = _Graph(self, size, frames)
        self._graphs[(size, frames)] = graph
        log.info("captured a CUDA graph for %d clips x %d mel frames (%d graphs)", size, frames, len(self._graphs))
        return graph


class _Graph:
    """One captured forward for a fixed (batch, frames): inputs copied into static buffers, then replayed."""

    def __init__(self, fast: FastSpeech, size: int, frames: int) -> None:
        device = fast.device
        self.wave = torch.zeros(size, frames * HOP_LENGTH, device=device)
        self.lengths = torch.full((size,), N_FFT, dtype=torch.long, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: cuBLAS / cuFFT plans and workspaces exist before capture
                fast._forward(self.wave, self.lengths)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        if fast._pool is None:
            fast._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(self.graph, pool=fast._pool, capture_error_mode="thread_local"):
            self.logits, self.emb = fast._forward(self.wave, self.lengths)

    def run(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = wave.shape
        self.wave.zero_()
        self.wave[:b, :n].copy_(wave)
        self.lengths.fill_(N_FFT)
        self.lengths[:b].copy_(lengths)
        self.graph.replay()
        return self.logits.clone(), self.emb.clone()
