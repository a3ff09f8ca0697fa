"""Fuzzing the media and text entry points: every input decodes to valid data or is a clear MediaError.

Property-based (hypothesis; EMO_FUZZ=long for the long budget) plus the nasty corpus of
tests/nasty_files.py (truncated, corrupt, mislabelled, extreme files). "Crash" means any exception
other than MediaError; "clear" is tests.nasty_files.is_clear.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backend.errors import MediaError
from backend.media import clean_text, load_audio, load_image, load_sample, load_video, prepare_audio
from backend.settings import load_settings
from backend.types import SAMPLE_RATE
from tests.fuzz_support import BASE_FILES, BASE_IMAGES, TEXTS, budget, mutated
from tests.nasty_files import build_corpus, is_clear, nasty_texts

SETTINGS = load_settings(max_audio_seconds=600.0, max_upload_mb=200.0, max_text_chars=5_000)
DECODE_LIMIT_S = 10.0  # no single nasty file may take longer than this to accept or refuse
LOADERS = {"audio": load_audio, "image": load_image, "video": load_video}


def check_audio(out: np.ndarray) -> None:
    assert out.dtype == np.float32 and out.ndim == 1 and out.size >= SAMPLE_RATE * 0.1
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0 + 1e-5


def refused_clearly(error: MediaError) -> None:
    assert is_clear(str(error)), f"unclear refusal: {error!r}"


# ------------------------------------------------------------------------------------------ corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("nasty"))


def test_the_corpus_covers_the_issue_list(corpus):
    names = {n.name for n in corpus}
    for needed in ("truncated.wav", "truncated.flac", "truncated.mp3", "corrupt.mp4", "zero.wav", "header-only.wav"):
        assert needed in names
    for needed in ("one-sample.wav", "8khz.wav", "192khz.wav", "8ch.wav", "nan-f64.wav", "one-hour.wav"):
        assert needed in names
    for needed in ("two-gigabytes.wav", "no-face.png", "twenty-faces.png", "one-pixel.png", "10000x10000.png"):
        assert needed in names


def test_every_nasty_file_is_read_or_refused_clearly_and_quickly(corpus):
    for nasty in corpus:
        started = time.perf_counter()
        try:
            out = LOADERS[nasty.kind](nasty.path, SETTINGS)
            outcome = "ok"
        except MediaError as error:
            refused_clearly(error)
            outcome = "refused"
            assert nasty.message.lower() in str(error).lower(), (nasty.name, str(error))
        took = time.perf_counter() - started
        assert took < DECODE_LIMIT_S, f"{nasty.name} took {took:.1f} s"
        assert nasty.expect in ("any", outcome), f"{nasty.name}: expected {nasty.expect}, got {outcome}"
        if outcome == "ok" and nasty.kind == "audio":
            check_audio(out)
        if outcome == "ok" and nasty.kind == "image":
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def test_wrong_extensions_are_decided_by_content(corpus):
    by_name = {n.name: n for n in corpus}
    check_audio(load_audio(by_name["wav-named.png.flac"].path, SETTINGS))
    with pytest.raises(MediaError, match="not audio"):
        load_audio(by_name["png-named.wav"].path, SETTINGS)


def test_nasty_texts_are_cleaned_or_refused():
    for text in nasty_texts():
        try:
            out = clean_text(text, SETTINGS)
        except MediaError as error:
            refused_clearly(error)
            assert len(text) > SETTINGS.max_text_chars
            continue
        if out is not None:
            assert len(out) <= SETTINGS.max_text_chars
            assert out.encode("utf-8")  # no lone surrogates left
            assert not any(ch in out for ch in "\x00\x1b\u202e\ufeff")


# ------------------------------------------------------------------------------------------ properties

DTYPES = st.sampled_from([np.float32, np.float64, np.int16, np.int32, np.uint8, np.int64, np.float16])
RATES = st.one_of(
    st.sampled_from([8_000, 16_000, 22_050, 44_100, 48_000, 96_000, 192_000, 191_999]),
    st.integers(-10, 400_000),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def waveforms(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(0, 20_000))
    channels = draw(st.sampled_from([None, 1, 2, 8]))
    shape = (n,) if channels is None else draw(st.sampled_from([(n, channels), (channels, n)]))
    dtype = draw(DTYPES)
    if draw(st.booleans()):
        array = hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_subnormal=False))
        return draw(array) if n <= 2_000 else np.resize(draw(hnp.arrays(dtype, (64,))), shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(0, draw(st.sampled_from([0.0, 1e-6, 0.1, 1.0, 1e4])), shape)
    if draw(st.booleans()) and x.size:
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.nan_to_num(x * info.max / 4), info.min, info.max)
    return x.astype(dtype)


@budget(60)
@given(waveform=waveforms(), rate=RATES)
def test_prepare_audio_property(waveform, rate):
    try:
        out = prepare_audio(waveform, rate, SETTINGS)
    except MediaError as error:
        refused_clearly(error)
        return
    check_audio(out)


@budget(60)
@given(data=mutated(BASE_FILES))
def test_load_audio_on_mutated_files(data):
    try:
        out = load_audio(data, SETTINGS)
    except MediaError as error:
        refused_clearly(error)
        return
    check_audio(out)


@budget(40)
@given(data=mutated(BASE_IMAGES))
def test_load_image_on_mutated_files(data):
    try:
        out = load_image(data, SETTINGS)
    except MediaError as error:
        refused_clearly(error)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@budget(40)
@given(
    array=hnp.arrays(
        st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
    )
)
def test_load_image_on_arrays(array):
    try:
        out = load_image(array, SETTINGS)
    except MediaError as error:
        refused_clearly(error)
        return
    assert out.dtype == np.uint8 and out.shape[:2] == array.shape[:2] and out.shape[2] == 3


@budget(80)
@given(text=st.one_of(TEXTS, st.integers(), st.binary(max_size=20), st.none()))
def test_clean_text_property(text):
    try:
        out = clean_text(text, SETTINGS)
    except MediaError as error:
        refused_clearly(error)
        return
    assert out is None or (0 < len(out) <= SETTINGS.max_text_chars and out == out.strip())
    if out is not None:
        out.encode("utf-8")  # would raise on a lone surrogate


@budget(30)
@given(
    audio=st.one_of(st.none(), mutated(BASE_FILES)),
    image=st.one_of(st.none(), mutated(BASE_IMAGES)),
    text=st.one_of(st.none(), TEXTS),
)
def test_load_sample_property(audio, image, text):
    try:
        sample = load_sample(audio=audio, image=image, text=text, settings=SETTINGS)
    except MediaError as error:
        refused_clearly(error)
        return
    assert sample.audio is not None or sample.frames or sample.text
