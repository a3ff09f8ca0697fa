"""Shared pieces of the fuzz suites: the example budget (CI short run or long run) and input strategies.

EMO_FUZZ=long raises every property's budget (bench/fuzz.py runs the long version); the default "ci"
keeps all fuzz tests under a minute or two on two cores.
"""

from __future__ import annotations

import io
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.nasty_files import PATH_FRAGMENTS, SQL_FRAGMENTS, tone, wav_bytes

PROFILE = os.environ.get("EMO_FUZZ", "ci")
SCALE = {"ci": 1, "long": 25}.get(PROFILE, 1)


def budget(ci_examples: int) -> settings:
    """Hypothesis settings with `ci_examples` examples in CI (x25 when EMO_FUZZ=long), no deadline."""
    return settings(
        max_examples=ci_examples * SCALE,
        deadline=None,
        derandomize=PROFILE == "ci",  # CI: the same inputs every run; long: new ones each time
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


NASTY_STRINGS = st.sampled_from(
    [
        *SQL_FRAGMENTS,
        *PATH_FRAGMENTS,
        "\x00",
        "\u202e",
        "\ud800",
        "\ufeff",
        "\U0001f621",
        "\u200d",
        "\r\n",
        "%s%n",
        "{0}",
        "<script>alert(1)</script>",
    ]
)
TEXTS = st.one_of(
    st.text(max_size=300),
    st.text(st.characters(codec=None, categories=None), max_size=50),
    st.lists(st.one_of(NASTY_STRINGS, st.text(max_size=20)), max_size=8).map("".join),
    st.integers(0, 12_000).map(lambda n: "x" * n),
)

BASE_FILES = {
    "wav16": wav_bytes(tone(0.5)),
    "wav_f32_stereo": wav_bytes(tone(0.5, 44_100, 2), 44_100, subtype="FLOAT"),
    "flac": wav_bytes(tone(0.5), fmt="FLAC"),
    "mp3": wav_bytes(tone(0.5), fmt="MP3", subtype="MPEG_LAYER_III"),
    "ogg": wav_bytes(tone(0.5), fmt="OGG", subtype="VORBIS"),
}


def _png(h: int, w: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(h: int, w: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


BASE_IMAGES = {"png": _png(40, 30), "jpeg": _jpeg(40, 30)}


@st.composite
def mutated(draw: st.DrawFn, bases: dict[str, bytes]) -> bytes:
    """A base file cut, flipped, spliced or with a header field overwritten."""
    data = bytearray(bases[draw(st.sampled_from(sorted(bases)))])
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["cut", "flip", "splice", "header", "grow"]))
        if how == "cut" and data:
            data = data[: draw(st.integers(0, len(data)))]
        elif how == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif how == "splice":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(max_size=64))
        elif how == "header" and len(data) > 48:
            at = draw(st.integers(0, 44))
            data[at : at + 4] = draw(st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00"]))
        elif how == "grow":
            data += bytes(draw(st.integers(0, 4096)))
    return bytes(data)
