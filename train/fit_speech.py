"""Train the speech branch on RAVDESS actors 1-16 and ASED train speakers; select on speaker-independent dev sets.

Dev sets are always RAVDESS actors 17-20 and the ASED dev speakers; the checkpoint is chosen on the mean UAR of
the dev sets of the corpora trained on only, so a run on one corpus scores the other as a clean leave-one-corpus-
out figure. A corpus that lacks a class masks it out of the loss (ASED has no disgust or surprised); batches are
drawn balanced over corpora and, inside each, over classes. Waveforms get speed/shift, codec copies, reverb,
telephone band, background noise, gain and clipping; the encoder normalises loudness (as at inference).

    python -m train.fit_default train --branch speech --out runs/v2 --lora-rank 8 --corpora ravdess,ased
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from backend.branches import speech_forward_batched
from backend.labels import LABELS, NUM_LABELS
from backend.model import build_model
from backend.model_config import EmotionConfig
from backend.speech import pad_on_host
from train import augment, codec_views, conditions
from train.corpora import (
    ASED_DEV_SPEAKERS,
    ASED_LABELS,
    ASED_TRAIN_SPEAKERS,
    SPEECH_DEV_ACTORS,
    SPEECH_TRAIN_ACTORS,
    Example,
    ased,
    ravdess,
)
from train.fit_common import BestTracker, Timer, branch_tensors, dev_summary, save_branch
from train.metrics import classification_report
from train.seed import seed_everything

log = logging.getLogger(__name__)

CORPORA = ("ravdess", "ased")
SHARED_LABELS = ASED_LABELS  # the classes both corpora have: leave-one-corpus-out UAR is over these


@dataclass
class SpeechFitConfig:
    data: Path
    out: Path
    cache: Path
    backbone: str = "whisper-base"
    trim: bool = True
    lora_rank: int = 0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    unfreeze_top: int = 0
    corpora: tuple[str, ...] = CORPORA
    conditions: bool = True  # reverb, telephone, noise, gain, clipping (train.augment.real_conditions)
    codecs: Path | None = None  # folder of train.codec_views copies; None: no codec augmentation
    codec_prob: float = 0.2
    loudness: bool = True
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    lora_lr: float = 5e-4
    encoder_lr: float = 3e-5
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "cpu"
    limit: int = 0  # >0: use only this many clips per corpus and split (smoke tests)
    name: str = "speech"
    robustness: bool = True  # score the chosen checkpoint under every dev condition (train.conditions)


def load_clips(examples: list) -> list[np.ndarray]:
    """The shared speech corpora are 16 kHz mono FLAC already; decode them straight to float32."""
    clips = []
    for ex in examples:
        audio, rate = sf.read(str(ex.path), dtype="float32", always_2d=True)
        assert rate == 16_000, f"{ex.path.name}: expected 16 kHz, got {rate}"
        clips.append(audio.mean(axis=1))
    return clips


def speech_splits(cfg: SpeechFitConfig) -> tuple[list[Example], dict[str, list[Example]]]:
    """Training examples of the chosen corpora; both speaker-independent dev sets, always."""
    root = Path(cfg.data)
    train = {
        "ravdess": lambda: ravdess(root / "ravdess-speech-16k", SPEECH_TRAIN_ACTORS),
        "ased": lambda: ased(root / "ased-speech-16k", ASED_TRAIN_SPEAKERS),
    }
    dev = {
        "ravdess": ravdess(root / "ravdess-speech-16k", SPEECH_DEV_ACTORS),
        "ased": ased(root / "ased-speech-16k", ASED_DEV_SPEAKERS),
    }
    unknown = set(cfg.corpora) - set(train)
    assert not unknown, f"unknown corpora {unknown}; known: {', '.join(train)}"
    examples = [ex for name in cfg.corpora for ex in _limit(train[name](), cfg.limit)]
    return examples, {name: _limit(d, cfg.limit) for name, d in dev.items()}


def _limit(examples: list[Example], limit: int) -> list[Example]:
    if not limit:
        return examples
    step = max(1, len(examples) // limit)  # spread over speakers and classes, not the first files
    return examples[::step][:limit]


def allowed_classes(examples: list[Example]) -> torch.Tensor:
    """(N, 7) bool: the classes each example's corpus has (meta["corpus_labels"]; all 7 when absent)."""
    out = torch.ones(len(examples), NUM_LABELS, dtype=torch.bool)
    for i, ex in enumerate(examples):
        names = ex.meta.get("corpus_labels")
        if names:
            out[i] = torch.tensor([name in names for name in LABELS])
    return out


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy over each row's allowed classes only, label smoothing spread over those classes.

    A corpus without disgust never pushes disgust down: its rows' softmax is taken over its own classes.
    """
    assert logits.shape == allowed.shape and labels.shape == logits.shape[:1], "expected (B, C), (B,), (B, C)"
    logp = logits.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)
    k = allowed.sum(-1, keepdim=True).float()
    target = allowed.float() * (smoothing / k)
    target = target.scatter_add(1, labels[:, None], torch.full_like(k, 1.0 - smoothing))
    return -(target * logp.masked_fill(~allowed, 0.0)).sum(-1).mean()


def balanced_weights(examples: list[Example]) -> torch.Tensor:
    """Sampling weights that give every corpus the same share and, within it, every class the same share."""
    keys = [(ex.meta.get("corpus", "other"), ex.label) for ex in examples]
    corpora = sorted({c for c, _ in keys})
    counts: dict[tuple[str, int], int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    classes = {c: sum(1 for cc, _ in counts if cc == c) for c in corpora}
    return torch.tensor([1.0 / (len(corpora) * classes[c] * counts[(c, y)]) for c, y in keys], dtype=torch.double)


def load_codec_copies(
    examples: list[Example], clips: list[np.ndarray], cfg: SpeechFitConfig
) -> list[np.ndarray | None]:
    """Each training clip's codec copy (train.codec_views), decoded once; None where there is none."""
    if cfg.codecs is None:
        return [None] * len(examples)
    root, out = Path(cfg.data), []
    for ex, clip in zip(examples, clips):
        codec, kbps = codec_views.train_choice(ex.path)
        path = codec_views.view_path(Path(cfg.codecs), ex.path, root, codec, kbps)
        try:
            out.append(conditions.read_codec_copy(path, len(clip)))
        except (OSError, RuntimeError) as exc:  # not made yet, or cut short: train on the clean clip instead
            log.debug("no codec copy %s: %s", path, exc)
            out.append(None)
    log.info("codec copies for %d of %d training clips", sum(c is not None for c in out), len(out))
    return out


def augmented_batch(
    clips: list[np.ndarray], gen: torch.Generator, device: torch.device, channel: bool = True
) -> list[torch.Tensor]:
    """Speed and shift on the CPU, then on the device the simulated channel (reverb, telephone, noise, gain,
    clipping) or, with channel=False, the older white noise at 10-35 dB. SpecAugment follows on the log-mel."""
    host, lengths = pad_on_host(augment.speed_and_shift(clips, gen), pin=device.type == "cuda")
    if not channel:
        return augment.noisy_views(host, lengths, device)
    wave, lengths = host.to(device, non_blocking=True), lengths.to(device)
    wave = augment.real_conditions(wave, lengths, generator=gen)
    return [wave[i, :n] for i, n in enumerate(lengths.tolist())]


def speech_states(model, waves: list[torch.Tensor], gen: torch.Generator, train_encoder: bool):
    """Encoder states with SpecAugment on the log-mel; gradients into the encoder only if it trains (LoRA, top)."""
    from backend.speech import encoder_hidden_states

    context = torch.enable_grad() if train_encoder else torch.no_grad()
    with context:
        return encoder_hidden_states(
            model.speech,
            list(waves),
            trim=model.config.speech_trim,
            mel_transform=lambda mel: augment.spec_augment(mel, generator=gen),
            loudness=model.config.speech_loudness_norm,
        )


def shared_uar(logits: np.ndarray, labels: np.ndarray) -> float:
    """UAR over the classes both corpora have, argmax over those classes only (leave-one-corpus-out metric)."""
    shared = np.array([name in SHARED_LABELS for name in LABELS])
    keep = shared[labels]
    return classification_report(labels[keep], np.where(shared, logits[keep], -np.inf).argmax(1))["uar"]


def score_dev(logits: torch.Tensor, examples: list[Example]) -> dict:
    """7-way report over the classes present, plus UAR with argmax over the classes both corpora share."""
    y = torch.tensor([e.label for e in examples])
    report = dev_summary(logits, y)
    report["uar_shared"] = shared_uar(logits.float().numpy(), y.numpy())
    return report


def _optimizer(model, cfg: SpeechFitConfig) -> torch.optim.Optimizer:
    head = model.heads.speech_head
    lora = [p for n, p in model.named_parameters() if ".lora_" in n and p.requires_grad]
    ids = {id(p) for p in lora} | {id(p) for p in head.parameters()}
    full = [p for n, p in model.named_parameters() if n.startswith("speech_encoder") and p.requires_grad]
    full = [p for p in full if id(p) not in ids]
    groups = [{"params": list(head.parameters()), "lr": cfg.lr}]
    if lora:
        groups.append({"params": lora, "lr": cfg.lora_lr})
    if full:
        groups.append({"params": full, "lr": cfg.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def train_speech(cfg: SpeechFitConfig) -> dict:
    """Returns the dev summary; writes <out>/<name>.safetensors, <out>/<name>.json, <out>/<name>_dev.npz."""
    gen = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    train_ex, dev_sets = speech_splits(cfg)
    train_clips = load_clips(train_ex)
    codec_clips = load_codec_copies(train_ex, train_clips, cfg)
    dev_clips = {name: load_clips(ex) for name, ex in dev_sets.items()}
    y_train, allowed = torch.tensor([e.label for e in train_ex]), allowed_classes(train_ex)
    weights = balanced_weights(train_ex)
    config = EmotionConfig(
        speech_backbone=cfg.backbone,
        speech_trim=cfg.trim,
        speech_lora_rank=cfg.lora_rank,
        speech_lora_targets=list(cfg.lora_targets),
        speech_unfreeze_top=cfg.unfreeze_top,
        speech_loudness_norm=cfg.loudness,
    )
    model = build_model(config, cache=cfg.cache, device=device, modalities=("speech",), adapt_dims=True)
    head = model.heads.speech_head
    train_encoder = any(p.requires_grad for p in model.speech.model.parameters())
    opt = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    tracker, timer = BestTracker("selection"), Timer()
    prefixes = ("heads.speech_head.", "speech_encoder.")
    for epoch in range(cfg.epochs):
        model.train()
        if not cfg.unfreeze_top:
            model.speech.model.eval()  # dropout off in a frozen (or adapter-only) encoder
        losses = []
        for _ in tqdm(range(steps_per_epoch), desc=f"{cfg.name} epoch {epoch}", leave=False):
            idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen).tolist()
            use_codec = (torch.rand(len(idx), generator=gen) < cfg.codec_prob).tolist()
            batch = [
                codec_clips[i] if swap and codec_clips[i] is not None else train_clips[i]
                for i, swap in zip(idx, use_codec)
            ]
            waves = augmented_batch(batch, gen, device, channel=cfg.conditions)
            states, mask = speech_states(model, waves, gen, train_encoder)
            logits, _ = head(states, mask)
            loss = masked_cross_entropy(
                logits, y_train[idx].to(device), allowed[idx].to(device), smoothing=cfg.label_smoothing
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        reports = evaluate_dev(model, dev_sets, dev_clips)
        selection = float(np.mean([reports[c]["uar"] for c in cfg.corpora]))
        report = {"selection": selection, **{k: reports[cfg.corpora[0]][k] for k in ("accuracy", "uar", "macro_f1")}}
        better = tracker.update(epoch, report, branch_tensors(model, prefixes), loss=float(np.mean(losses)))
        tracker.history[-1].update({f"{c}_uar": reports[c]["uar"] for c in reports})
        if better:  # keep the best-so-far on disk: a run stopped early still leaves a usable branch
            save_branch(Path(cfg.out), cfg.name, tracker.state, {"partial": True, "best_epoch": epoch})
        log.info(
            "%s epoch %d loss %.3f dev %s%s",
            cfg.name,
            epoch,
            np.mean(losses),
            " ".join(f"{c} uar {reports[c]['uar']:.3f}" for c in reports),
            " *" if better else "",
        )
    model.load_state_dict(tracker.state, strict=False)
    return finish(model, cfg, config, tracker, timer, dev_sets, dev_clips, train_clips)


@torch.inference_mode()
def dev_logits(model, clips: list[np.ndarray]) -> torch.Tensor:
    model.eval()
    return speech_forward_batched(model, clips, max_batch=64)


def evaluate_dev(model, dev_sets: dict[str, list[Example]], dev_clips: dict[str, list[np.ndarray]]) -> dict:
    return {name: score_dev(dev_logits(model, dev_clips[name]), dev_sets[name]) for name in dev_sets}


@torch.inference_mode()
def dev_embeddings(model, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, 7), embeddings (N, E)) of clips, for calibration and speaker-statistics analysis."""
    from backend.branches import speech_embed_batched

    model.eval()
    logits, emb = speech_embed_batched(model, clips, max_batch=64)
    return logits.numpy(), emb.numpy()


def robustness(model, cfg: SpeechFitConfig, dev_sets: dict, dev_clips: dict) -> dict[str, dict[str, dict]]:
    """Dev figures of the chosen checkpoint under each fixed condition (train.conditions.CONDITIONS)."""
    out: dict[str, dict[str, dict]] = {}
    for cond in conditions.CONDITIONS:
        if cond in conditions.CODEC_CONDITIONS and cfg.codecs is None:
            continue
        out[cond] = {}
        for name, examples in dev_sets.items():
            try:
                clips = conditions.degrade(
                    cond, dev_clips[name], [e.path for e in examples], Path(cfg.codecs or "."), Path(cfg.data)
                )
            except (OSError, RuntimeError) as exc:  # codec copies missing or cut short
                log.warning("condition %s skipped on %s: %s", cond, name, exc)
                continue
            r = score_dev(dev_logits(model, clips), examples)
            out[cond][name] = {k: r[k] for k in ("accuracy", "uar", "uar_shared", "ece_before")}
    return out


def finish(
    model, cfg: SpeechFitConfig, config: EmotionConfig, tracker, timer, dev_sets, dev_clips, train_clips
) -> dict:
    """Final dev figures, robustness table, dev logits/embeddings (npz) and the branch file."""
    arrays: dict[str, np.ndarray] = {}
    reports = {}
    for name, examples in dev_sets.items():
        logits, embs = dev_embeddings(model, dev_clips[name])
        reports[name] = score_dev(torch.from_numpy(logits), examples)
        arrays[f"{name}_logits"], arrays[f"{name}_emb"] = logits, embs
        arrays[f"{name}_labels"] = np.array([e.label for e in examples])
        arrays[f"{name}_speakers"] = np.array([e.speaker for e in examples])
    _, train_emb = dev_embeddings(model, train_clips)
    arrays["train_emb_mean"], arrays["train_emb_std"] = train_emb.mean(0), train_emb.std(0)
    mix_logits = torch.cat([torch.from_numpy(arrays[f"{c}_logits"]) for c in cfg.corpora])
    mix_labels = torch.cat([torch.from_numpy(arrays[f"{c}_labels"]) for c in cfg.corpora])
    calibration = dev_summary(mix_logits, mix_labels)  # temperature on the trained corpora's dev mix
    summary = {
        "branch": "speech",
        "protocol": (
            f"trained on {', '.join(cfg.corpora)} (RAVDESS actors 1-16, ASED train speakers); dev RAVDESS actors "
            "17-20 and ASED dev speakers (speaker-independent); selection on the mean UAR of the trained corpora's "
            "dev sets"
        ),
        "best_epoch": tracker.epoch,
        "dev": {**reports[cfg.corpora[0]], "temperature": calibration["temperature"]},
        "dev_sets": {
            k: {m: v[m] for m in ("n", "accuracy", "uar", "uar_shared", "macro_f1")} for k, v in reports.items()
        },
        "calibration": {k: calibration[k] for k in ("temperature", "ece_before", "ece_after", "n")},
        "history": tracker.history,
        "seconds": timer.seconds,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "model_config": {
            "speech_backbone": config.speech_backbone,
            "speech_trim": config.speech_trim,
            "speech_lora_rank": config.speech_lora_rank,
            "speech_lora_targets": list(config.speech_lora_targets),
            "speech_unfreeze_top": config.speech_unfreeze_top,
            "speech_loudness_norm": config.speech_loudness_norm,
            "speech_dim": config.speech_dim,
            "speech_num_states": config.speech_num_states,
        },
    }
    if cfg.robustness:
        summary["robustness"] = robustness(model, cfg, dev_sets, dev_clips)
    out = Path(cfg.out)
    save_branch(out, cfg.name, tracker.state, summary)
    np.savez_compressed(out / f"{cfg.name}_dev.npz", **arrays)
    return summary
