"""The model folder format: save_pretrained / from_pretrained round trip, heads only, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.errors import ModelError
from backend.labels import LABELS
from backend.model import EmotionModel, resolve_model_folder


def test_folder_holds_config_weights_and_card(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["labels"] == list(LABELS)
    assert config["version"] == "tiny-test"
    assert (tiny_model_dir / "README.md").read_text().startswith("# tiny")
    keys = load_file(str(tiny_model_dir / "model.safetensors")).keys()
    assert any(k.startswith("heads.speech_head.") for k in keys)
    assert any(".lora_" in k for k in keys), "text LoRA adapters must be saved"
    # the frozen backbone weights are not in the file
    assert not [k for k in keys if k.startswith(("speech_encoder.", "text_encoder.")) and ".lora_" not in k]


def test_round_trip_gives_identical_outputs(tiny_model_dir: Path, tiny_backbones, tmp_path: Path) -> None:
    a = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    with torch.no_grad():
        a.heads.text_head.classifier[1].weight.add_(0.5)  # change a head so the test can tell files apart
    a.save_pretrained(tmp_path / "copy")
    b = EmotionModel.from_pretrained(tmp_path / "copy", cache=Path(tiny_backbones["cache"]))
    for (ka, va), (kb, vb) in zip(sorted(a.trainable_state_dict().items()), sorted(b.trainable_state_dict().items())):
        assert ka == kb
        assert torch.equal(va, vb), ka
    x = torch.rand(2, 1, 48, 48)
    assert torch.allclose(a.heads.face_net(x)[0], b.heads.face_net(x)[0])


def test_missing_weights_are_refused(tiny_model_dir: Path, tiny_backbones, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    tensors.pop(next(k for k in tensors if k.startswith("heads.face_net.")))
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="missing"):
        EmotionModel.from_pretrained(folder, cache=Path(tiny_backbones["cache"]))


def test_unknown_model_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="EMO_MODEL"):
        resolve_model_folder("nobody/does-not-exist@v9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model_folder(str(tmp_path / "empty"))


def test_cuda_models_switch_cudnn_attention_off() -> None:
    """cuDNN attention plans per sequence length: a CUDA model switches it off, a CPU model leaves it."""
    import torch

    from backend.model import avoid_cudnn_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()  # a CUDA model built earlier in this process may have cleared it
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        avoid_cudnn_attention("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled()
        avoid_cudnn_attention("cuda:0")
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
