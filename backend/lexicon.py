"""Emotion lexicon features: NRC EmoLex, expanded to unseen words through the text encoder's embeddings.

This is the "emotion dictionary learned with a pretrained LM": every NRC word is embedded alone with the
text backbone (mean-pooled, L2-normalised); a word outside NRC borrows the similarity-weighted mean of
its k nearest NRC words when they are close enough and agree on an emotion. Without a backbone the
lexicon is plain NRC EmoLex.

Embedding the 6,468 NRC words takes about 90 s on a small CPU, so it is done once per backbone and lexicon
version: shipped in the model folder (LEXICON_FILE, float16, written by `build_lexicon_file` or
`save_lexicon_file`) and otherwise cached under <cache>/lexicon/. CLI: `python -m backend.lexicon MODEL_FOLDER`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.errors import ModelError
from backend.model_config import EmotionConfig
from backend.text import TextBackbone, encode, mean_pool, tokenize
from backend.types import WordTag

log = logging.getLogger(__name__)

# NRC EmoLex vocabulary, in the JSON's (alphabetical) order: 8 emotions + 2 polarities.
LEXICON_DIMS: tuple[str, ...] = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "negative",
    "positive",
    "sadness",
    "surprise",
    "trust",
)
NUM_DIMS = len(LEXICON_DIMS)
_DIM = {name: i for i, name in enumerate(LEXICON_DIMS)}
_EMOTION_DIMS = [i for i, d in enumerate(LEXICON_DIMS) if d not in ("negative", "positive")]
# NRC emotions that give a taxonomy emotion; anticipation, trust and the polarities do not by themselves.
NRC_TO_LABEL: dict[str, str] = {
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "joy": "happy",
    "sadness": "sad",
    "surprise": "surprised",
}
_LABEL_DIMS = [_DIM[name] for name in NRC_TO_LABEL]
_FALLBACK_ORDER = ("joy", "sadness", "anger", "fear", "disgust", "surprise")  # ties without a backbone

# Features: mean vector (10) | max vector (10) | emotional frac | expanded frac | negated frac | length.
LEXICON_FEATURES = 2 * NUM_DIMS + 4

SIM_THRESHOLD = 0.58  # best cosine to an NRC word (MiniLM, word alone); tuned by hand, see module tests
AGREEMENT = 0.6  # the k neighbours must agree this much (weighted) on one of the 8 emotions
TOP_K = 5
TAG_MIN = 0.6  # an expanded word's emotion value needed to tag it with a taxonomy emotion
TAG_MIN_SCORE = 0.45  # ... and value x best similarity (drops "okay", "night", "opinion"; keeps "sadder")
MAX_WORDS = 10_000  # words read per text; longer texts are truncated (hostile input stays fast)
MAX_EXPAND_PER_TEXT = 512  # new words embedded per text; the rest count as unknown
MAX_CACHED_WORDS = 50_000  # in-process LRU of expansion results
EMBED_BATCH = 256
LEXICON_FILE = "lexicon_embeddings.safetensors"  # in a model folder: the NRC words' embeddings, float16
EMBED_RECIPE = "mean-pool-l2-len16-fp16"  # how the words are embedded; part of the lexicon version
_MIN_EXPAND_LEN, _MAX_EXPAND_LEN = 3, 24
NEGATION_SCOPE = 3  # words after a negator whose emotion is cancelled (until punctuation)

_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_ASCII_WORD = re.compile(r"[a-z]+")
_CLAUSE_BREAK = re.compile(r"[.,;:!?\n]")
_NEGATOR_WORDS = (
    "not no never nor none nobody nothing neither without cannot hardly barely isnt dont doesnt didnt "
    "wont cant couldnt shouldnt wouldnt wasnt werent arent aint"
)
_NEGATORS = frozenset(_NEGATOR_WORDS.split())
# Function words are never expanded: they sit near everything in embedding space.
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself of off on once only or other our ours ourselves out over own same she should so some
    such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves also yes yeah oh im ive id ill youre thats theres lets get got just like"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass
class _Entry:
    """What the lexicon knows about one (lower-case) word."""

    vector: np.ndarray  # (NUM_DIMS,) float32 in [0, 1]
    emotion: str | None  # taxonomy label or None
    score: float
    expanded: bool = False


@dataclass
class _Token:
    word: str  # original form, for highlighting
    key: str  # lower-case lookup form
    negated: bool


def nrc_json_path() -> Path:
    """nrclex/data/nrc_en.json inside the installed nrclex wheel (located without importing nrclex)."""
    spec = importlib.util.find_spec("nrclex")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the emotion lexicon needs the nrclex wheel: run `pip install nrclex`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "nrc_en.json"
    if not path.is_file():
        raise ModelError(f"nrclex is installed but {path} is missing; reinstall nrclex")
    return path


def load_nrc(path: Path | None = None) -> tuple[list[str], np.ndarray]:
    """NRC EmoLex as (words, (N, NUM_DIMS) float32 0/1 matrix), words in the JSON's order."""
    raw = json.loads((path or nrc_json_path()).read_text(encoding="utf-8"))
    unknown = {e for emotions in raw.values() for e in emotions} - set(LEXICON_DIMS)
    if unknown:
        raise ModelError(f"unexpected NRC emotions {sorted(unknown)}; expected {LEXICON_DIMS}")
    words = [str(w).lower() for w in raw]
    matrix = np.zeros((len(words), NUM_DIMS), dtype=np.float32)
    for i, emotions in enumerate(raw.values()):
        matrix[i, [_DIM[e] for e in emotions]] = 1.0
    return words, matrix


def embed_words(backbone: TextBackbone, words: list[str], batch_size: int = EMBED_BATCH) -> np.ndarray:
    """Each word embedded alone: mean-pooled token states, L2-normalised, (N, D) float32."""
    out = np.zeros((len(words), backbone.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(words), batch_size):
            batch = tokenize(backbone, words[start : start + batch_size], max_length=16)
            pooled = mean_pool(*encode(backbone, batch))
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[start : start + len(pooled)] = pooled.cpu().numpy()
    return out


def backbone_slug(name: str) -> str:
    """A file-name-safe key for a backbone name; a hash keeps different paths/ids apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "backbone"
    if safe == name and len(safe) <= 64:
        return safe
    return f"{safe[-48:].strip('._-')}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


@functools.cache
def lexicon_version(path: Path | None = None) -> str:
    """Recipe + hash of the NRC JSON: embeddings of another lexicon or recipe never pass for these."""
    digest = hashlib.sha256((path or nrc_json_path()).read_bytes()).hexdigest()[:12]
    return f"{EMBED_RECIPE}-{digest}"


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename over `path`, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model folder or cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid(array: np.ndarray, shape: tuple[int, int], where: Path) -> np.ndarray | None:
    """float32 copy of an embedding matrix of the expected shape with finite values, else None (logged)."""
    if array.shape != shape or not np.isfinite(array).all():
        log.warning("lexicon embeddings in %s have shape %s, expected %s; not used", where, array.shape, shape)
        return None
    return array.astype(np.float32)


def cache_path(cache: Path, backbone_name: str) -> Path:
    """<cache>/lexicon/<backbone slug>-<lexicon version>.npy"""
    return Path(cache) / "lexicon" / f"{backbone_slug(backbone_name)}-{lexicon_version()}.npy"


def _load_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached matrix if it is intact and of the expected shape, else None (it will be rebuilt)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("lexicon embedding cache %s unreadable (%s); rebuilding", path, exc)
        return None
    return _valid(array, shape, path)


def _save_cached(path: Path, matrix: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, matrix.astype(np.float16), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        _write_atomic(path, write)
    except OSError as exc:  # a read-only cache must not stop the app
        log.warning("could not write lexicon embedding cache %s: %s", path, exc)


def save_lexicon_file(folder: Path, backbone_name: str, embeddings: np.ndarray) -> Path:
    """Write <folder>/LEXICON_FILE: float16 embeddings tagged with the backbone and lexicon version."""
    from safetensors.numpy import save_file

    metadata = {"backbone": backbone_name, "lexicon_version": lexicon_version(), "words": str(len(embeddings))}
    tensors = {"embeddings": np.ascontiguousarray(embeddings, dtype=np.float16)}
    path = Path(folder) / LEXICON_FILE
    _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def read_lexicon_file(folder: Path, backbone_name: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The model folder's embeddings as float32 if they were made with this backbone, lexicon and width."""
    from safetensors import safe_open

    path = Path(folder) / LEXICON_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            array = handle.get_tensor("embeddings")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        log.warning("lexicon embeddings %s unreadable (%s); not used", path, exc)
        return None
    wanted = {"backbone": backbone_name, "lexicon_version": lexicon_version()}
    if any(meta.get(k) != v for k, v in wanted.items()):
        log.info("%s is for %s, not %s; not used", path, {k: meta.get(k) for k in wanted}, wanted)
        return None
    return _valid(array, shape, path)


def lexicon_embeddings(backbone: TextBackbone, words: list[str], cache: Path, folder: Path | None = None) -> np.ndarray:
    """(N, D) embeddings of the lexicon words: from the model folder's LEXICON_FILE, else the cache, else
    embedded now (about 90 s for MiniLM on a small CPU) and cached. Always float16-rounded, whatever the source,
    so every path gives the same lexicon."""
    shape = (len(words), backbone.hidden_size)
    if folder is not None and (shipped := read_lexicon_file(folder, backbone.name, shape)) is not None:
        return shipped
    path = cache_path(cache, backbone.name)
    cached = _load_cached(path, shape)
    if cached is not None:
        return cached
    start = time.perf_counter()
    matrix = embed_words(backbone, words).astype(np.float16).astype(np.float32)
    log.info("embedded %d lexicon words in %.1f s (cached in %s)", len(words), time.perf_counter() - start, path)
    _save_cached(path, matrix)
    return matrix


def build_lexicon_file(folder: Path, cache: Path | None = None) -> Path | None:
    """Ship the expanded lexicon with a model: write <folder>/LEXICON_FILE for the text backbone its config
    names. Idempotent (a valid file is kept; the backbone is not even loaded); None when the model does not
    expand its lexicon. Trainers call this after writing a model folder."""
    from backend.settings import load_settings
    from backend.text import load_text_backbone

    config = EmotionConfig.load(Path(folder))
    if not config.lexicon_expansion:
        return None
    words, _ = load_nrc()
    path = Path(folder) / LEXICON_FILE
    if read_lexicon_file(folder, config.text_backbone, (len(words), config.text_dim)) is not None:
        return path
    backbone = load_text_backbone(config.text_backbone)
    embeddings = lexicon_embeddings(backbone, words, Path(cache or load_settings().cache))
    return save_lexicon_file(folder, config.text_backbone, embeddings)


def _choose_emotion(vector: np.ndarray, prototype_sims: np.ndarray | None, minimum: float) -> str | None:
    """Taxonomy emotion of a lexicon vector; ties go to the emotion name the word's embedding is nearest."""
    values = vector[_LABEL_DIMS]
    best = float(values.max())
    if best < minimum or best <= 0:
        return None
    tied = np.flatnonzero(values >= best - 1e-6)
    names = list(NRC_TO_LABEL)
    if len(tied) > 1:
        if prototype_sims is not None:
            winner = int(tied[np.argmax(prototype_sims[tied])])
        else:
            winner = min(tied, key=lambda i: _FALLBACK_ORDER.index(names[i]))
        return NRC_TO_LABEL[names[winner]]
    return NRC_TO_LABEL[names[int(tied[0])]]


def _tokens(text: str) -> list[_Token]:
    """Words (letters, inner apostrophes) with light negation: a negator cancels the next few words."""
    tokens: list[_Token] = []
    scope, last_end = 0, 0
    for match in itertools.islice(_WORD_RE.finditer(text), MAX_WORDS):
        if _CLAUSE_BREAK.search(text, last_end, match.start()):
            scope = 0
        last_end = match.end()
        word = match.group()
        lower = word.lower().replace("’", "'")
        # "mother's" -> "mother", "you're" -> "you"; "don't" stays whole (a negator, never looked up).
        key = lower if lower.endswith("n't") else lower.split("'")[0]
        tokens.append(_Token(word=word, key=key, negated=scope > 0))
        scope = max(scope - 1, 0)
        if lower.replace("'", "") in _NEGATORS or lower.endswith("n't"):
            scope = NEGATION_SCOPE
    return tokens


@dataclass
class Lexicon:
    """NRC EmoLex with optional embedding expansion. Thread-safe; expansions cached in a bounded LRU."""

    words: list[str]
    vectors: np.ndarray  # (N, NUM_DIMS)
    backbone: TextBackbone | None = None
    embeddings: np.ndarray | None = None  # (N, D), rows L2-normalised
    _entries: dict[str, _Entry] = field(default_factory=dict, repr=False)
    _expanded: OrderedDict[str, _Entry | None] = field(default_factory=OrderedDict, repr=False)
    _prototypes: np.ndarray | None = field(default=None, repr=False)  # (6, D)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        index = {w: i for i, w in enumerate(self.words)}
        if self.embeddings is not None:
            self._prototypes = self.embeddings[[index[name] for name in NRC_TO_LABEL]]
        sims = None if self._prototypes is None else self.embeddings @ self._prototypes.T
        for i, word in enumerate(self.words):
            emotion = _choose_emotion(self.vectors[i], None if sims is None else sims[i], 1.0)
            self._entries[word] = _Entry(self.vectors[i], emotion, 1.0 if emotion else 0.0)

    @property
    def expands(self) -> bool:
        return self.backbone is not None and self.embeddings is not None

    def lookup(self, key: str) -> _Entry | None:
        """The entry for a lower-case word: NRC, then the expansion cache (no new embedding here)."""
        entry = self._entries.get(key)
        if entry is not None or not self.expands:
            return entry
        with self._lock:
            if key in self._expanded:
                self._expanded.move_to_end(key)
                return self._expanded[key]
        return None

    def _candidate(self, key: str) -> bool:
        return (
            key not in self._entries
            and _MIN_EXPAND_LEN <= len(key) <= _MAX_EXPAND_LEN
            and key not in _STOPWORDS
            and key not in _NEGATORS
            and _ASCII_WORD.fullmatch(key) is not None
        )

    def expand(self, keys: Iterable[str]) -> None:
        """Embed the words not seen yet and cache what their nearest NRC words say (or None)."""
        if not self.expands:
            return
        with self._lock:
            new = [k for k in dict.fromkeys(keys) if self._candidate(k) and k not in self._expanded]
            if not new:
                return
            vectors = embed_words(self.backbone, new)
            for a in range(0, len(new), 1024):  # one matrix product per chunk, not one per word
                chunk = vectors[a : a + 1024]
                for key, sims, proto in zip(new[a : a + 1024], chunk @ self.embeddings.T, chunk @ self._prototypes.T):
                    self._expanded[key] = self._neighbours(sims, proto)
            while len(self._expanded) > MAX_CACHED_WORDS:
                self._expanded.popitem(last=False)

    def _neighbours(self, sims: np.ndarray, prototype_sims: np.ndarray) -> _Entry | None:
        """sims: cosine to every NRC word; prototype_sims: cosine to each emotion's name."""
        top = np.argpartition(-sims, TOP_K)[:TOP_K] if len(sims) > TOP_K else np.arange(len(sims))
        top = top[np.argsort(-sims[top])]
        best = float(sims[top[0]])
        weights = np.clip(sims[top], 0.0, None)
        if best < SIM_THRESHOLD or weights.sum() <= 0:
            return None
        vector = (weights[:, None] * self.vectors[top]).sum(0) / weights.sum()
        if float(vector[_EMOTION_DIMS].max()) < AGREEMENT:
            return None
        emotion = _choose_emotion(vector, prototype_sims, TAG_MIN)
        score = float(vector[_DIM[_label_to_nrc(emotion)]]) * best if emotion else 0.0
        if score < TAG_MIN_SCORE:
            emotion, score = None, 0.0
        return _Entry(vector.astype(np.float32), emotion, score, expanded=True)

    def _new_keys(self, tokens: list[_Token]) -> list[str]:
        """Up to MAX_EXPAND_PER_TEXT distinct words of one text that expansion may look at."""
        candidates = (k for k in dict.fromkeys(t.key for t in tokens) if self._candidate(k))
        return list(itertools.islice(candidates, MAX_EXPAND_PER_TEXT))

    def tag_words(self, text: str) -> list[WordTag]:
        """Every word of the text in its original form, with its taxonomy emotion (None if none/negated)."""
        tokens = _tokens(str(text or ""))
        self.expand(self._new_keys(tokens))
        tags = []
        for token in tokens:
            entry = self.lookup(token.key)
            if entry is None or token.negated or entry.emotion is None:
                tags.append(WordTag(token.word, None, 0.0, bool(entry and entry.expanded)))
            else:
                tags.append(WordTag(token.word, entry.emotion, round(entry.score, 4), entry.expanded))
        return tags

    def _features(self, tokens: list[_Token]) -> np.ndarray:
        out = np.zeros(LEXICON_FEATURES, dtype=np.float32)
        if not tokens:
            return out
        rows, expanded, negated = [], 0, 0
        for token in tokens:
            entry = self.lookup(token.key)
            if entry is None:
                continue
            vector = entry.vector
            if token.negated:  # "not happy": the polarity flips, the emotion is cancelled
                vector = np.zeros_like(vector)
                vector[_DIM["negative"]] = entry.vector[_DIM["positive"]]
                vector[_DIM["positive"]] = entry.vector[_DIM["negative"]]
                negated += 1
            rows.append(vector)
            expanded += entry.expanded
        n = len(tokens)
        if rows:
            stacked = np.stack(rows)
            out[:NUM_DIMS] = stacked.mean(0)
            out[NUM_DIMS : 2 * NUM_DIMS] = stacked.max(0)
            out[2 * NUM_DIMS + 2] = negated / len(rows)
        out[2 * NUM_DIMS] = len(rows) / n
        out[2 * NUM_DIMS + 1] = expanded / n
        out[2 * NUM_DIMS + 3] = np.log1p(n) / np.log1p(MAX_WORDS)
        return out

    def features(self, text: str) -> np.ndarray:
        """(LEXICON_FEATURES,) float32: mean and max NRC vectors over emotional words, then the fractions
        of emotional, expanded and negated words and a log length."""
        tokens = _tokens(str(text or ""))
        self.expand(self._new_keys(tokens))
        return self._features(tokens)

    def features_batch(self, texts: list[str]) -> np.ndarray:
        """(B, LEXICON_FEATURES) float32; all new words of the batch are embedded in one pass."""
        token_lists = [_tokens(str(t or "")) for t in texts]
        self.expand(itertools.chain.from_iterable(self._new_keys(tokens) for tokens in token_lists))
        if not token_lists:
            return np.zeros((0, LEXICON_FEATURES), dtype=np.float32)
        return np.stack([self._features(tokens) for tokens in token_lists])


def _label_to_nrc(label: str) -> str:
    return next(nrc for nrc, name in NRC_TO_LABEL.items() if name == label)


def load_lexicon(backbone: TextBackbone | None, cache: Path, folder: Path | None = None) -> Lexicon:
    """NRC EmoLex; with a backbone, expanded to unseen words (embeddings from the model folder or the cache)."""
    words, vectors = load_nrc()
    if backbone is None:
        return Lexicon(words=words, vectors=vectors)
    embeddings = lexicon_embeddings(backbone, words, Path(cache), folder)
    return Lexicon(words=words, vectors=vectors, backbone=backbone, embeddings=embeddings)


def main(argv: list[str] | None = None) -> dict:
    """CLI: write the expanded lexicon into model folders; prints JSON."""
    parser = argparse.ArgumentParser(description="Ship the expanded lexicon's embeddings in model folders.")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = {str(f): str(build_lexicon_file(f, args.cache)) for f in args.folders}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
