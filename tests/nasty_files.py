"""A corpus of nasty inputs, generated into a temporary folder (nothing large is committed).

build_corpus(folder) writes broken, extreme and mislabelled media files and returns them as Nasty
records with the outcome expected from backend.media: "ok" (decodes), "refused" (a MediaError whose
message contains `message`) or "any" (either, but never a crash). nasty_texts() gives strings for the
text and name fields. is_clear(message) is the oracle for "every rejection a clear message".
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "fer2013_val.npz"
RATE = 16_000
TWO_GB = 2 * 1024**3


@dataclass(frozen=True)
class Nasty:
    name: str
    path: Path
    kind: str  # audio | image | video
    expect: str  # ok | refused | any
    message: str = ""  # substring of the refusal (when expect == "refused")


def tone(seconds: float, rate: int = RATE, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    """A voiced-ish test signal (harmonics + a little noise), shape (n, channels), float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * rate)) / rate
    mono = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3)) * 0.25
    mono = mono + np.random.default_rng(0).normal(0, 0.01, len(t))
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def is_clear(message: str) -> bool:
    """A refusal a person can act on: one short sentence or two, no traceback, no server path, no repr."""
    text = str(message)
    bad = ("Traceback", "/tmp/", "/root/", "/work/", "Errno", "Exception", "<", "None")
    return 10 <= len(text) <= 400 and not any(b in text for b in bad) and text.rstrip()[-1] in ".!?"


def _ffmpeg(args: list[str], out: Path) -> bool:
    if shutil.which("ffmpeg") is None:
        return False
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args, str(out)]
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0


def _faces_grid(n: int) -> np.ndarray:
    """n FER faces upscaled to 96 px on a grey canvas (RGB uint8), or a drawn placeholder without the data."""
    cols = 5
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * 128, cols * 128, 3), 128, np.uint8)
    faces = np.load(SHARED_FACES)["images"][:n] if SHARED_FACES.exists() else np.full((n, 48, 48), 200, np.uint8)
    for i, face in enumerate(faces):
        big = np.asarray(Image.fromarray(face).resize((96, 96)))
        r, c = divmod(i, cols)
        canvas[r * 128 + 16 : r * 128 + 112, c * 128 + 16 : c * 128 + 112] = big[:, :, None]
    return canvas


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _audio_files(folder: Path) -> list[Nasty]:
    out: list[Nasty] = []

    def add(name: str, data: bytes, expect: str, message: str = "") -> None:
        path = folder / name
        path.write_bytes(data)
        out.append(Nasty(name, path, "audio", expect, message))

    good = wav_bytes(tone(1.0))
    flac = wav_bytes(tone(1.0), fmt="FLAC")
    mp3 = wav_bytes(tone(1.0), fmt="MP3", subtype="MPEG_LAYER_III")
    add("good.wav", good, "ok")
    add("good.flac", flac, "ok")
    add("good.mp3", mp3, "ok")
    add("zero.wav", b"", "refused", "empty (0 bytes)")
    add("header-only.wav", good[:44], "refused", "no samples")
    add("truncated.wav", good[: len(good) // 2], "refused", "damaged or incomplete")
    add("truncated.flac", flac[: len(flac) // 2], "refused", "damaged or incomplete")
    add("truncated.mp3", mp3[: len(mp3) // 3], "any")
    add("header-then-garbage.wav", good[:44] + os.urandom(3000), "any")
    add("corrupt.flac", flac[:42] + bytes(b ^ 0x5A for b in flac[42:]), "any")
    add("corrupt.mp3", mp3[:10] + os.urandom(len(mp3) - 10), "any")
    add("random.wav", os.urandom(5000), "refused", "not audio we can read")
    add("one-sample.wav", wav_bytes(np.array([[0.5]], np.float32)), "refused", "only 0.00 s long")
    add("8khz.wav", wav_bytes(tone(1.0, 8_000), 8_000), "ok")
    add("192khz.wav", wav_bytes(tone(1.0, 192_000), 192_000), "ok")
    add("4khz.wav", wav_bytes(tone(1.0, 4_000), 4_000), "refused", "sample rate is 4000 Hz")
    add("8ch.wav", wav_bytes(tone(1.0, channels=8)), "ok")
    nan = tone(1.0).astype(np.float64)
    nan[100] = np.nan
    add("nan-f64.wav", wav_bytes(nan, subtype="DOUBLE"), "refused", "NaN or infinity")
    inf = tone(1.0).astype(np.float64)
    inf[5] = np.inf
    add("inf-f64.wav", wav_bytes(inf, subtype="DOUBLE"), "refused", "NaN or infinity")
    add("silence.wav", wav_bytes(np.zeros((RATE, 1), np.float32)), "refused", "silent")
    add("png-named.wav", _png(np.zeros((8, 8, 3), np.uint8)), "refused", "not audio we can read")
    add("wav-named.png.flac", good, "ok")  # the content decides, not the name
    add("text-named.mp3", b"hello, this is plain text and not an mp3\n" * 40, "refused", "not audio")
    hour = folder / "one-hour.wav"  # 3600 s at 8 kHz, 8-bit: ~29 MB, refused from the header
    with wave.open(str(hour), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(8_000)
        writer.writeframes(b"\x80" * (8_000 * 3600))
    out.append(Nasty(hour.name, hour, "audio", "refused", "the limit is 600 s"))
    huge = folder / "two-gigabytes.wav"  # sparse: 2 GB on paper, no disk used
    with open(huge, "wb") as handle:
        handle.write(good[:44])
        handle.truncate(TWO_GB)
    out.append(Nasty(huge.name, huge, "audio", "refused", "the limit is"))
    return out


def _image_files(folder: Path) -> list[Nasty]:
    out: list[Nasty] = []

    def add(name: str, data: bytes, expect: str, message: str = "") -> None:
        path = folder / name
        path.write_bytes(data)
        out.append(Nasty(name, path, "image", expect, message))

    wall = _png(np.full((200, 300, 3), 128, np.uint8))
    crowd = _png(_faces_grid(20))
    add("no-face.png", wall, "ok")
    add("twenty-faces.png", crowd, "ok")
    add("one-pixel.png", _png(np.zeros((1, 1, 3), np.uint8)), "ok")
    add("zero.png", b"", "refused", "empty (0 bytes)")
    add("truncated.png", crowd[: len(crowd) // 2], "refused", "damaged or incomplete")
    add("header-only.png", crowd[:33], "refused", "image")
    buffer = io.BytesIO()
    Image.fromarray(_faces_grid(5)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    add("corrupt.jpg", jpeg[:200] + os.urandom(len(jpeg) - 200), "any")
    add("wav-named.png", wav_bytes(tone(0.5)), "refused", "not an image we can read")
    big = folder / "10000x10000.png"  # 100 M pixels, a few hundred kB of png: refused from the header
    Image.new("L", (10_000, 10_000), 90).save(big, optimize=False)
    out.append(Nasty(big.name, big, "image", "refused", "10000x10000 pixels"))
    return out


def _video_files(folder: Path) -> list[Nasty]:
    out: list[Nasty] = []
    video = folder / "good.mp4"
    ok = _ffmpeg(
        [
            *("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2"),
            *("-f", "lavfi", "-i", "sine=frequency=220:duration=2"),
            *("-c:v", "mpeg4", "-c:a", "aac", "-shortest"),
        ],
        video,
    )
    if not ok:
        return out
    data = video.read_bytes()
    out.append(Nasty(video.name, video, "video", "ok"))
    silent = folder / "no-audio.mp4"
    if _ffmpeg(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=1", "-c:v", "mpeg4"], silent):
        out.append(Nasty(silent.name, silent, "video", "ok"))
    for name, blob, expect in (
        ("truncated.mp4", data[: len(data) // 3], "any"),
        ("corrupt.mp4", data[:32] + os.urandom(len(data) - 32), "any"),
        ("header-only.mp4", data[:64], "refused"),
        ("text-named.mp4", b"not a video at all\n" * 100, "refused"),
    ):
        path = folder / name
        path.write_bytes(blob)
        out.append(Nasty(name, path, "video", expect))
    audio_in_mp4 = folder / "audio-only.m4a"
    if _ffmpeg(["-f", "lavfi", "-i", "sine=frequency=220:duration=1", "-c:a", "aac"], audio_in_mp4):
        out.append(Nasty(audio_in_mp4.name, audio_in_mp4, "audio", "ok"))
        data = audio_in_mp4.read_bytes()
        cut = folder / "truncated.m4a"
        cut.write_bytes(data[: len(data) // 2])
        out.append(Nasty(cut.name, cut, "audio", "any"))
    return out


def build_corpus(folder: Path) -> list[Nasty]:
    """Write every nasty file into `folder` (created) and return their records (about 45 files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [*_audio_files(folder), *_image_files(folder), *_video_files(folder)]


SQL_FRAGMENTS = (
    "'; DROP TABLE votes; --",
    '" OR 1=1 --',
    "name:x' UNION SELECT admin_token FROM settings --",
    "%' AND SLEEP(5) --",
)
PATH_FRAGMENTS = ("../../../../etc/passwd", "..\\..\\windows\\win.ini", "/dev/zero", "media/../../studio.db", "~root")


def nasty_texts() -> list[str]:
    """Strings for every text field: control characters, bidi, emoji, SQL and path fragments, long text."""
    return [
        "",
        " \t\n ",
        "\x00\x01\x02\x1b[31mred\x1b[0m\x7f",
        "I am so happy\u202e!yppah ton ma I",  # right-to-left override
        "\u0623\u0646\u0627 \u0633\u0639\u064a\u062f \u062c\u062f\u0627",  # Arabic
        "\u05d0\u05e0\u05d9 \u05e2\u05e6\u05d5\u05d1",  # Hebrew
        "\U0001f621\U0001f621\U0001f621 \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f3f4\U000e0067\U000e0062\U000e007f",
        "\ud800 lone surrogate",
        "\ufeffBOM and zero\u200bwidth",
        *SQL_FRAGMENTS,
        *PATH_FRAGMENTS,
        "a" * 5_000,
        "a" * 5_001,
        "word " * 200_000,  # 1 MB
        "\u0301" * 100,  # combining marks only
    ]
