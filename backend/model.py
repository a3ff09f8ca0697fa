"""EmotionModel: one model folder format (config.json + heads/adapters in model.safetensors + model card).

The frozen pretrained backbones are not saved: they are rebuilt from the names in the config (offline
aliases from wheels, Hub ids or paths), then the adapters and heads are loaded on top.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from backend.errors import ModelError
from backend.heads import FaceNet, FusionGate, ProjectionHead, SpeechHead, TextHead
from backend.labels import LABELS
from backend.lora import PretrainedView, inject_lora
from backend.model_config import CONFIG_NAME, WEIGHTS_NAME, EmotionConfig

log = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("speech_encoder.", "text_encoder.")
# added after v1: older folders load without them (zeros = "not known", e.g. no speaker adaptation)
OPTIONAL_KEYS = ("heads.speech_head.reference_mean",)


class EmotionHeads(nn.Module):
    """The trainable part: one head + projection per modality and the fusion gate."""

    def __init__(self, config: EmotionConfig) -> None:
        super().__init__()
        c = config
        self.speech_head = SpeechHead(c.speech_num_states, c.speech_dim, c.head_hidden, c.embed_dim, c.dropout)
        self.text_head = TextHead(c.text_dim, c.lexicon_dim, c.embed_dim, c.dropout)
        self.face_net = FaceNet(tuple(c.face_channels), c.embed_dim, c.dropout, c.face_size)
        self.projections = nn.ModuleDict(
            {m: ProjectionHead(c.embed_dim, c.proj_dim) for m in ("speech", "text", "face")}
        )
        self.gate = FusionGate()


class EmotionModel(nn.Module):
    """Heads over pretrained encoders. Encoders are submodules so .to(device) moves everything."""

    def __init__(self, config: EmotionConfig, speech=None, text=None, lexicon=None) -> None:
        super().__init__()
        assert list(config.labels) == list(LABELS), f"labels must be {LABELS}, got {config.labels}"
        self.config = config
        self.heads = EmotionHeads(config)
        self.speech, self.text, self.lexicon = speech, text, lexicon
        if speech is not None:
            self.speech_encoder = speech.model
        if text is not None:
            self.text_encoder = text.model

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Heads and adapters only: never the frozen backbone weights."""
        state = self.state_dict()
        top = _unfrozen_layer_keys(self.config)
        return {
            k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIXES) or ".lora_" in k or k.startswith(top)
        }

    def save_pretrained(self, folder: str | Path, card: str | None = None) -> Path:
        """Write config.json, model.safetensors and (if given) README.md; atomic per file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.trainable_state_dict().items()}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "version": self.config.version})
        os.replace(tmp, folder / WEIGHTS_NAME)
        if card is not None:
            (folder / "README.md").write_text(card)
        if self.lexicon is not None and self.lexicon.expands:  # shipped, so loading never re-embeds it
            from backend.lexicon import save_lexicon_file

            save_lexicon_file(folder, self.lexicon.backbone.name, self.lexicon.embeddings)
        return folder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        cache: Path | None = None,
        device: str | torch.device = "cpu",
        load_backbones: bool = True,
    ) -> EmotionModel:
        """Load a model folder (local path, or Hub id with optional '@revision', e.g. 'me/emo@v3')."""
        folder = resolve_model_folder(str(name_or_path))
        config = EmotionConfig.load(folder)
        model = build_model(config, cache=cache, device=device, load_backbones=load_backbones, folder=folder)
        weights = folder / WEIGHTS_NAME
        if weights.exists():
            model.load_trainable(load_file(str(weights)))
        else:
            log.warning("model folder %s has no %s: heads are untrained", folder.name, WEIGHTS_NAME)
        return model.to(device).eval()

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load heads/adapters; every expected key must be present (strict over the trainable part)."""
        expected = set(self.trainable_state_dict()) - set(OPTIONAL_KEYS)
        missing = sorted(expected - set(tensors))
        unexpected = sorted(set(tensors) - set(self.state_dict()))
        if missing or unexpected:
            raise ModelError(
                f"model weights do not match its config: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        self.load_state_dict(tensors, strict=False)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = True,
        tag: str | None = None,
        card: str | None = None,
        endpoint: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """create_repo (private by default) + upload_folder + optional tag. Returns the commit URL/oid."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=token or os.environ.get("HF_TOKEN"))
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, card=card)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message or f"emotion model {self.config.version}",
            )
        if tag:
            api.create_tag(repo_id, tag=tag, tag_message=f"model {self.config.version}", exist_ok=True)
        log.info("pushed model %s to %s", self.config.version, repo_id)
        return str(getattr(info, "oid", info))


def resolve_model_folder(name: str) -> Path:
    """A local folder as is; otherwise a Hub repo id ('id' or 'id@revision') downloaded to the HF cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).exists():
            raise ModelError(f"{path.name} is not a model folder (no {CONFIG_NAME})")
        return path
    repo_id, _, revision = name.partition("@")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision or None))
    except Exception as exc:  # offline, unknown repo, no access: one message a person can act on
        raise ModelError(
            f"cannot load model {name!r}: not a local folder and not downloadable from the Hub "
            f"({type(exc).__name__}). Set EMO_MODEL to a model folder or a reachable repo id."
        ) from exc


def avoid_cudnn_attention(device: str | torch.device) -> None:
    """On CUDA, scaled-dot-product attention without the cuDNN kernel: it builds a plan for every new sequence
    length (11-13 ms of CPU per attention call on the H100, `bench/train.py --profile`), and clips and texts
    come in every length. Flash / memory-efficient attention need no plan; they are 4-26% slower on bulk batches
    of one length (bench/RESULTS.md), where EMO_CUDNN_ATTENTION=1 keeps cuDNN. Process-wide, as torch's switch is."""
    if torch.device(device).type == "cuda" and torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("cuDNN attention off: variable-length batches would rebuild its plan on every new length")


def build_model(
    config: EmotionConfig,
    *,
    cache: Path | None = None,
    device: str | torch.device = "cpu",
    load_backbones: bool = True,
    modalities: tuple[str, ...] = ("speech", "text"),
    adapt_dims: bool = False,
    folder: Path | None = None,
) -> EmotionModel:
    """Fresh heads over the configured backbones, with adapters injected where the config asks.

    modalities: which backbones to load (a trainer of one branch needs only its own).
    adapt_dims: set the config's backbone widths from the loaded backbones (new models only).
    folder: the model folder being loaded, whose shipped lexicon embeddings are used when they match.
    """
    if not load_backbones:
        return EmotionModel(config)
    from backend.lexicon import LEXICON_FEATURES, load_lexicon
    from backend.settings import load_settings
    from backend.speech import load_speech_backbone
    from backend.text import load_text_backbone

    settings = load_settings()
    if not settings.cudnn_attention:
        avoid_cudnn_attention(device)
    cache = Path(cache or settings.cache)
    speech = text = lexicon = None
    if "speech" in modalities:
        speech = load_speech_backbone(config.speech_backbone, cache, device=device)
        speech.model.float()
        if adapt_dims:
            config.speech_dim, config.speech_num_states = speech.hidden_size, speech.num_layers + 1
        if speech.hidden_size != config.speech_dim or speech.num_layers + 1 != config.speech_num_states:
            raise ModelError(
                f"speech backbone {config.speech_backbone} has {speech.num_layers} layers of {speech.hidden_size}, "
                f"but the model expects {config.speech_num_states - 1} of {config.speech_dim}"
            )
        speech.model.requires_grad_(False)
        encoder = _speech_encoder(speech.model)
        if config.speech_lora_rank:
            inject_lora(encoder, config.speech_lora_targets, config.speech_lora_rank, config.lora_alpha)
        if config.speech_unfreeze_top:  # the top layers train in full (after LoRA, so their adapters train too)
            for layer in encoder.layers[-config.speech_unfreeze_top :]:
                layer.requires_grad_(True)
    if "text" in modalities:
        text = load_text_backbone(config.text_backbone, device=device)
        text.model.float()
        if adapt_dims:
            config.text_dim, config.lexicon_dim = text.hidden_size, LEXICON_FEATURES
        if text.hidden_size != config.text_dim:
            raise ModelError(f"text backbone width {text.hidden_size} != model's {config.text_dim}")
        text.model.requires_grad_(False)
        if config.text_lora_rank:
            inject_lora(text.model, config.text_lora_targets, config.text_lora_rank, config.lora_alpha)
        base = dataclasses.replace(text, model=PretrainedView(text.model))
        lexicon = load_lexicon(base if config.lexicon_expansion else None, cache, folder)
    return EmotionModel(config, speech=speech, text=text, lexicon=lexicon).to(device)


def load_speech_branch(
    folder: str | Path, device: str | torch.device = "cpu", speech_backbone: str | None = None
) -> EmotionModel:
    """A model folder's speech branch (and gate) only: no text backbone is loaded, for speech-only benches and
    machines that carry just the Whisper weights (speech_backbone overrides the config's, e.g. a packed copy)."""
    folder = resolve_model_folder(str(folder))
    config = EmotionConfig.load(folder)
    if speech_backbone:
        config.speech_backbone = speech_backbone
    model = build_model(config, device=device, modalities=("speech",))
    tensors = load_file(str(folder / WEIGHTS_NAME))
    wanted = {k: v for k, v in tensors.items() if k.startswith(("heads.", "speech_encoder."))}
    missing, _ = model.load_state_dict(wanted, strict=False)
    lost = [k for k in missing if ".lora_" in k or (k.startswith("heads.speech_head.") and k not in OPTIONAL_KEYS)]
    if lost:
        raise ModelError(f"{folder.name}: speech weights missing (e.g. {lost[:3]})")
    return model.to(device).eval()


def _unfrozen_layer_keys(config: EmotionConfig) -> tuple[str, ...]:
    """State-dict prefixes of the Whisper encoder layers trained in full (config.speech_unfreeze_top), saved
    with the heads; () when none. Whisper-base has 6 layers: each adds ~6 MB in fp16."""
    total = config.speech_num_states - 1
    first = total - config.speech_unfreeze_top
    return tuple(f"speech_encoder.model.encoder.layers.{i}." for i in range(first, total) if config.speech_unfreeze_top)


def _speech_encoder(model: nn.Module) -> nn.Module:
    """The audio encoder inside a speech backbone model (Whisper: model.model.encoder)."""
    inner = getattr(model, "model", model)
    return getattr(inner, "encoder", inner)
