"""The expanded lexicon shipped in a model folder: written once, read back, refused when it does not match."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import backend.lexicon as lexicon_module
from backend.lexicon import (
    LEXICON_FILE,
    Lexicon,
    build_lexicon_file,
    cache_path,
    embed_words,
    load_lexicon,
    load_nrc,
    read_lexicon_file,
    save_lexicon_file,
)
from backend.settings import DEFAULT_MODEL_DIR
from backend.text import load_text_backbone, tiny_text_backbone

WORDS = 6468


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_text_backbone(tmp_path_factory.mktemp("tiny-text"))


def _no_embedding(*args, **kwargs):
    raise AssertionError("the lexicon was embedded again")


def test_file_round_trips_as_float16_and_is_refused_when_it_does_not_match(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((WORDS, 8)).astype(np.float32)
    path = save_lexicon_file(tmp_path, "some-backbone", matrix)
    assert path.name == LEXICON_FILE and path.stat().st_size < WORDS * 8 * 2 + 4096  # float16 on disk
    assert not list(tmp_path.glob("*.tmp"))
    back = read_lexicon_file(tmp_path, "some-backbone", (WORDS, 8))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, matrix, atol=2e-3, rtol=1e-3)
    assert read_lexicon_file(tmp_path, "another-backbone", (WORDS, 8)) is None
    assert read_lexicon_file(tmp_path, "some-backbone", (WORDS, 16)) is None
    monkeypatch.setattr(lexicon_module, "lexicon_version", lambda: "another-recipe-0123")
    assert read_lexicon_file(tmp_path, "some-backbone", (WORDS, 8)) is None
    monkeypatch.undo()
    path.write_bytes(b"not safetensors")
    assert read_lexicon_file(tmp_path, "some-backbone", (WORDS, 8)) is None


def test_shipped_file_is_used_without_embedding_or_caching(tiny, tmp_path, monkeypatch):
    folder, cache = tmp_path / "model", tmp_path / "cache"
    embeddings = load_lexicon(tiny, tmp_path / "build-cache").embeddings
    save_lexicon_file(folder, tiny.name, embeddings)
    monkeypatch.setattr(lexicon_module, "embed_words", _no_embedding)
    lexicon = load_lexicon(tiny, cache, folder)
    np.testing.assert_array_equal(lexicon.embeddings, embeddings)  # float16-rounded both ways: identical
    assert not cache_path(cache, tiny.name).exists()


def test_missing_or_foreign_file_falls_back_to_embedding_and_caching(tiny, tmp_path):
    folder, cache = tmp_path / "model", tmp_path / "cache"
    save_lexicon_file(folder, "not-this-backbone", np.zeros((WORDS, tiny.hidden_size), np.float32))
    lexicon = load_lexicon(tiny, cache, folder)
    assert np.abs(lexicon.embeddings).sum() > 0  # embedded, not the foreign zeros
    assert cache_path(cache, tiny.name).is_file()


def test_build_is_idempotent_and_save_pretrained_ships_the_file(tiny_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    shipped = folder / LEXICON_FILE
    assert shipped.is_file()  # save_pretrained wrote it
    before, stamp = read_back(folder), shipped.stat().st_mtime_ns
    monkeypatch.setattr("backend.text.load_text_backbone", _no_embedding)  # a valid file: nothing is loaded
    assert build_lexicon_file(folder) == shipped and shipped.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    shipped.unlink()
    assert build_lexicon_file(folder, cache=tmp_path / "cache") == shipped
    np.testing.assert_array_equal(read_back(folder), before)  # same backbone, same words: the same matrix


def read_back(folder: Path) -> np.ndarray:
    from backend.model_config import EmotionConfig

    config = EmotionConfig.load(folder)
    return read_lexicon_file(folder, config.text_backbone, (WORDS, config.text_dim))


@pytest.mark.slow
def test_default_model_ships_a_lexicon_that_tags_like_the_float32_one(tmp_path, monkeypatch):
    """models/default loads without embedding the 6,468 words; its float16 file tags words as float32 would."""
    from backend.model import EmotionModel

    backbone = load_text_backbone()
    words, vectors = load_nrc()
    shipped = read_lexicon_file(DEFAULT_MODEL_DIR, backbone.name, (WORDS, backbone.hidden_size))
    assert shipped is not None
    exact = embed_words(backbone, words)
    assert float(np.abs(shipped - exact).max()) < 2e-3
    probe = (
        "I was so scared and heartbroken, the happiest furious terrified gloomy delighted cheerful anxious "
        "table chair window okay night opinion sadder joyless outraged nervous thrilled grief panic"
    )
    tags = [Lexicon(words, vectors, backbone, e).tag_words(probe) for e in (exact, shipped)]
    assert [(t.word, t.emotion) for t in tags[0]] == [(t.word, t.emotion) for t in tags[1]]

    monkeypatch.setattr(lexicon_module, "embed_words", _no_embedding)
    model = EmotionModel.from_pretrained(DEFAULT_MODEL_DIR, cache=Path(tmp_path))
    np.testing.assert_array_equal(model.lexicon.embeddings, shipped)
    assert not (tmp_path / "lexicon").exists()
