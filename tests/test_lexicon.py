"""Emotion lexicon: NRC EmoLex lookups, negation, hostile text, embedding expansion and its cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import backend.lexicon as lexicon_module
from backend.labels import LABELS
from backend.lexicon import (
    LEXICON_DIMS,
    LEXICON_FEATURES,
    NUM_DIMS,
    backbone_slug,
    cache_path,
    lexicon_version,
    load_lexicon,
    load_nrc,
)
from backend.text import load_text_backbone, tiny_text_backbone

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HOSTILE = [
    "",
    "   \n\t ",
    "😡😡😡 🎉🎉",
    "مرحبا بالعالم، أنا سعيد جدا",  # Arabic (RTL)
    "שלום עולם",  # Hebrew (RTL)
    "\u202eevil\u202c \u200b\u200d zero-width",
    "\x00\x01\x02" * 349_526,  # ~1 MB of control characters
    "angry " * 200_000,  # 1.2 MB of one emotional word
    "a" * 1_000_000,  # one 1 MB "word"
]


@pytest.fixture(scope="module")
def nrc_only():
    return load_lexicon(None, Path("/nonexistent-cache-not-used"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_text_backbone(tmp_path_factory.mktemp("tiny-text"))


def test_nrc_json_vocabulary_matches_constants():
    words, vectors = load_nrc()
    assert len(words) == 6468 and vectors.shape == (6468, NUM_DIMS)
    assert set(np.unique(vectors)) == {0.0, 1.0}
    assert (vectors.sum(0) > 0).all()  # every dimension of LEXICON_DIMS is used
    happy = vectors[words.index("happy")]
    assert happy[LEXICON_DIMS.index("joy")] == 1 and happy[LEXICON_DIMS.index("anger")] == 0


def test_known_words_map_to_the_taxonomy(nrc_only):
    tags = nrc_only.tag_words("I was FURIOUS, then happy; afraid of the abandonment")
    by_word = {t.word: t for t in tags}
    assert by_word["FURIOUS"].emotion == "angry"  # original form kept for highlighting
    assert by_word["happy"].emotion == "happy"
    assert by_word["afraid"].emotion == "fearful"
    assert by_word["the"].emotion is None
    assert [t.word for t in tags][:3] == ["I", "was", "FURIOUS"]
    assert all(t.emotion in LABELS for t in tags if t.emotion)
    assert not any(t.expanded for t in tags)


def test_anticipation_and_trust_alone_give_no_emotion(nrc_only):
    words, vectors = load_nrc()
    only_trust = next(w for w, v in zip(words, vectors) if v.sum() == 1 and v[LEXICON_DIMS.index("trust")])
    assert nrc_only.tag_words(only_trust)[0].emotion is None


def test_negation_cancels_the_emotion_until_punctuation(nrc_only):
    tags = nrc_only.tag_words("I am not happy. Happy now")
    assert [t.emotion for t in tags if t.word.lower() == "happy"] == [None, "happy"]
    negated = nrc_only.features("not happy")
    plain = nrc_only.features("happy")
    pos, neg = LEXICON_DIMS.index("positive"), LEXICON_DIMS.index("negative")
    assert plain[pos] == 1 and negated[pos] == 0 and negated[neg] == 1
    assert negated[2 * NUM_DIMS + 2] == 1.0  # negated fraction


def test_features_layout(nrc_only):
    feats = nrc_only.features("happy table")
    assert feats.shape == (LEXICON_FEATURES,) and feats.dtype == np.float32
    assert feats[LEXICON_DIMS.index("joy")] == 1.0  # mean over emotional words
    assert feats[NUM_DIMS + LEXICON_DIMS.index("joy")] == 1.0  # max
    assert feats[2 * NUM_DIMS] == 0.5  # one emotional word of two
    assert feats[2 * NUM_DIMS + 1] == 0.0  # nothing expanded without a backbone


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_does_not_crash(nrc_only, text):
    feats = nrc_only.features(text)
    assert feats.shape == (LEXICON_FEATURES,) and np.isfinite(feats).all()
    assert feats.min() >= 0.0 and feats.max() <= 1.0
    assert len(nrc_only.tag_words(text)) <= lexicon_module.MAX_WORDS


def test_features_batch_matches_features(nrc_only):
    texts = ["happy", "", "I hate this", "😡"]
    batch = nrc_only.features_batch(texts)
    assert batch.shape == (4, LEXICON_FEATURES) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([nrc_only.features(t) for t in texts]))
    assert nrc_only.features_batch([]).shape == (0, LEXICON_FEATURES)


def test_slug_is_file_safe_and_distinct():
    assert backbone_slug("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    a, b = backbone_slug("/tmp/x/model"), backbone_slug("/tmp/y/model")
    assert a != b and "/" not in a and len(a) < 80


def test_embedding_cache_is_written_reused_and_rebuilt(tiny, tmp_path, monkeypatch):
    lex = load_lexicon(tiny, tmp_path)
    path = cache_path(tmp_path, tiny.name)  # keyed by backbone and lexicon version
    assert path.is_file() and lex.embeddings.shape == (6468, 32) and lex.embeddings.dtype == np.float32
    assert backbone_slug(tiny.name) in path.name and lexicon_version() in path.name
    np.testing.assert_allclose(np.linalg.norm(lex.embeddings, axis=1), 1.0, atol=2e-3)  # float16-rounded
    assert not list(path.parent.glob("*.tmp"))  # atomic write left nothing behind

    calls = []
    real_embed = lexicon_module.embed_words
    monkeypatch.setattr(lexicon_module, "embed_words", lambda *a, **k: calls.append(1) or real_embed(*a, **k))
    again = load_lexicon(tiny, tmp_path)
    assert calls == []  # reused, not rebuilt
    np.testing.assert_array_equal(again.embeddings, lex.embeddings)

    path.write_bytes(b"\x93NUMPY garbage, not an array")
    rebuilt = load_lexicon(tiny, tmp_path)
    assert calls == [1]
    np.testing.assert_allclose(rebuilt.embeddings, lex.embeddings, atol=1e-5)
    assert np.load(path).shape == (6468, 32)

    np.save(path, np.zeros((10, 32), dtype=np.float32))  # wrong shape (e.g. another lexicon version)
    load_lexicon(tiny, tmp_path)
    assert calls == [1, 1] and np.load(path).shape == (6468, 32)


def test_expansion_cache_is_bounded(tiny, tmp_path, monkeypatch):
    lex = load_lexicon(tiny, tmp_path)
    monkeypatch.setattr(lexicon_module, "MAX_CACHED_WORDS", 5)
    words = ["zorblax", "quintessa", "flumpity", "grabnok", "wibblet", "snorfle", "plimbus"]
    lex.features(" ".join(words))
    assert len(lex._expanded) == 5
    assert "plimbus" in lex._expanded and "zorblax" not in lex._expanded  # least recent evicted
    assert "the" not in lex._expanded  # stop words are never embedded


def test_expanded_features_are_finite_on_hostile_text(tiny, tmp_path):
    lex = load_lexicon(tiny, tmp_path)
    batch = lex.features_batch([*HOSTILE[:6], "florbish snozzle " * 2000])
    assert batch.shape == (7, LEXICON_FEATURES) and np.isfinite(batch).all()


@pytest.fixture(scope="module")
def minilm_lexicon(tmp_path_factory):
    return load_lexicon(load_text_backbone(), tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("word", "emotion"),
    [("happiest", "happy"), ("scared", "fearful"), ("terrified", "fearful"), ("heartbroken", "sad")],
)
def test_unseen_related_words_are_expanded_with_minilm(minilm_lexicon, word, emotion):
    words, _ = load_nrc()
    assert word not in words  # really outside NRC EmoLex
    [tag] = minilm_lexicon.tag_words(word.capitalize())
    assert tag.word == word.capitalize() and tag.expanded and tag.emotion == emotion
    assert 0.0 < tag.score <= 1.0


@pytest.mark.slow
def test_neutral_unseen_words_get_no_emotion_with_minilm(minilm_lexicon):
    tags = minilm_lexicon.tag_words("the table chair car house window")
    assert [t.emotion for t in tags] == [None] * 6
    feats = minilm_lexicon.features("I was so scared and heartbroken")
    assert feats[2 * NUM_DIMS + 1] > 0  # some words came from expansion
    assert feats[LEXICON_DIMS.index("fear")] > 0 and feats[LEXICON_DIMS.index("sadness")] > 0
