"""Media in: decode and validate audio, video, images and text into what the predictor reads.

Every waveform leaves this module as mono float32 at SAMPLE_RATE (16 kHz); every image as RGB uint8
(H, W, 3). Formats are sniffed from the bytes, never from the file name. Limits (size, duration, pixels)
are checked from the file or its header before the expensive decode. Anything unusable raises one
MediaError whose message tells a person what to do; it never carries a traceback or a server path.

Audio goes through soundfile (libsndfile: wav, flac, ogg, mp3) and, for containers libsndfile cannot
read (m4a, webm, mp4 from browsers and phones), through an `ffmpeg` subprocess when one is on PATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
import wave
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
import torch
import torchaudio
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import MediaError
from backend.settings import Settings, load_settings
from backend.types import SAMPLE_RATE, Sample

logger = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 8_000  # Hz: telephone audio, the lowest rate accepted
MAX_SAMPLE_RATE = 192_000  # Hz: studio audio, the highest rate accepted
MIN_AUDIO_SECONDS = 0.1  # shorter clips hold no readable emotion
RESAMPLE_CHUNK_SECONDS = 30.0  # input seconds resampled per torchaudio call (bounds memory)
RESAMPLE_FILTER_WIDTH = 6  # torchaudio's default lowpass_filter_width (zero crossings)
RESAMPLE_ROLLOFF = 0.99  # torchaudio's default rolloff (fraction of the Nyquist frequency kept)
MAX_RESAMPLE_RATIO = 2_000  # rate / gcd(rate, 16 kHz) above this is snapped to 100 Hz (kernel size)
TRUNCATION_TOLERANCE = 0.02  # fraction of the header's frame count that may be missing at the end
READ_BLOCK_FRAMES = 1 << 20  # frames per block when mixing down long multichannel files
MB = 1024 * 1024  # bytes in the "MB" of Settings.max_upload_mb
FFMPEG_TIMEOUT = 120  # seconds for one ffmpeg decode (10 min of audio takes ~2 s)
FFPROBE_TIMEOUT = 20  # seconds for reading a container's duration
HEAD_BYTES = 64  # bytes read to sniff a container
MAX_SCAN_FRAMES = 200_000  # frames counted in a video whose header has no frame count (~1 h at 60 fps)
MAX_FPS = 240.0  # above this a video's reported frame rate is a time base, not a frame rate
TEXT_WORK_FACTOR = 4  # raw text longer than this many times max_text_chars is refused before cleaning
WAV_SHORT_DATA = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)  # libsndfile's log
KEEP_FORMAT_CHARS = {"\u200c", "\u200d"}  # zero-width (non-)joiner: Persian words, emoji sequences

# Containers that libsndfile cannot read but ffmpeg can: (offset, magic bytes).
FFMPEG_MAGIC: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # mp4, m4a, mov, 3gp
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"OggS"),  # ogg with a codec libsndfile lacks
    (0, b"RIFF"),  # wav with a codec libsndfile lacks
    (0, b"ID3"),  # mp3 with a tag libsndfile rejects
    (0, b"#!AMR"),  # phone voice memos
    (0, b"fLaC"),  # flac whose header libsndfile rejects
)

MSG_NOT_FOUND = "The uploaded file could not be found; upload it again."
MSG_EMPTY_FILE = "The file is empty (0 bytes); upload it again or record a new clip."
MSG_TOO_BIG = "The file is {size:.1f} MB; the limit is {limit:g} MB. Upload a shorter or smaller file."
MSG_NOT_AUDIO = "The file is not audio we can read (expected wav, flac, ogg, mp3, m4a or webm)."
MSG_DAMAGED_AUDIO = "The audio file is damaged or incomplete (decoding stopped part-way); export or record it again."
MSG_NO_SAMPLES = "The audio has no samples (zero length); record again or export the file again."
MSG_TOO_SHORT = "The audio is only {seconds:.2f} s long; record at least one second of speech."
MSG_TOO_LONG = "The recording is {seconds:.1f} s long; the limit is {limit:g} s. Trim it and try again."
MSG_RATE = "The audio's sample rate is {rate} Hz; supported rates are 8,000 to 192,000 Hz. Convert it."
MSG_NONFINITE = "The audio contains invalid samples (NaN or infinity); export it again as a 16-bit wav or flac file."
MSG_SILENT = "The audio is silent (no sound above the noise floor); record again closer to the microphone."
MSG_NEEDS_FFMPEG = (
    "This file type (m4a, webm or mp4) needs FFmpeg, which this server does not have; "
    "upload wav, flac, ogg or mp3 instead."
)
MSG_NO_AUDIO_TRACK = "The file has no audio track; upload a recording with sound."
MSG_TIMEOUT = "Decoding the file took too long; upload a shorter file."
MSG_BAD_ARRAY = "The audio must be a 1-D array of samples or a 2-D array (samples, channels); got {shape}."
MSG_NOT_IMAGE = "The file is not an image we can read (expected png, jpeg, webp, bmp or gif)."
MSG_IMAGE_BOMB = "The image has far more than {limit:,} pixels; resize it and try again."
MSG_DAMAGED_IMAGE = "The image file is damaged or incomplete; save or take the picture again."
MSG_IMAGE_TOO_BIG = "The image is {w}x{h} pixels; the limit is {limit:,} pixels. Resize it and try again."
MSG_IMAGE_EMPTY = "The image has no pixels (zero width or height); choose another picture."
MSG_BAD_IMAGE_ARRAY = "The image must be an (H, W), (H, W, 3) or (H, W, 4) array; got {shape}."
MSG_NOT_VIDEO = "The file is not a video we can read (expected mp4, webm, mov or mkv)."
MSG_NO_FRAMES = "The video has no frames we can read; record or export it again."
MSG_TEXT_TYPE = "The text must be a string."
MSG_TEXT_TOO_LONG = "The text is {n:,} characters long; the limit is {limit:,}. Shorten it and try again."
MSG_NOTHING = "Nothing to analyze: record or upload audio, a video or an image, or type some text."


# ---------------------------------------------------------------------------------------------- files


def check_size(path: str | Path, settings: Settings | None = None) -> None:
    """Refuse a file bigger than settings.max_upload_mb; call before decoding anything."""
    settings = settings or load_settings()
    try:
        size = os.stat(path).st_size
    except OSError:
        raise MediaError(MSG_NOT_FOUND) from None
    _check_byte_count(size, settings)


def _check_byte_count(size: int, settings: Settings) -> None:
    if size > settings.max_upload_mb * MB:
        raise MediaError(MSG_TOO_BIG.format(size=size / MB, limit=settings.max_upload_mb))
    if size == 0:
        raise MediaError(MSG_EMPTY_FILE)


@contextlib.contextmanager
def _as_file(source: str | Path | bytes, settings: Settings) -> Iterator[Path]:
    """A checked (exists, not empty, within the size limit) path; bytes go to a temporary file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_byte_count(len(data), settings)
        with tempfile.TemporaryDirectory(prefix="emo-media-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            yield path
        return
    path = Path(source)
    if not path.is_file():
        raise MediaError(MSG_NOT_FOUND)
    check_size(path, settings)
    yield path


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)


def _ffmpeg_can_read(head: bytes) -> bool:
    return any(head[offset : offset + len(magic)] == magic for offset, magic in FFMPEG_MAGIC)


def _ffmpeg() -> str | None:
    """Path of the ffmpeg executable, or None (tests patch this to simulate a server without it)."""
    return shutil.which("ffmpeg")


# ---------------------------------------------------------------------------------------------- audio


def load_audio(source: str | Path | bytes, settings: Settings | None = None) -> np.ndarray:
    """Decode a file (path or bytes) to validated mono float32 at 16 kHz, shape (n,)."""
    settings = settings or load_settings()
    with _as_file(source, settings) as path:
        decoded = _decode_soundfile(path, settings)
        if decoded is None:
            if not _ffmpeg_can_read(_head(path)):
                raise MediaError(MSG_NOT_AUDIO)
            decoded = (_decode_ffmpeg(path, settings), SAMPLE_RATE)
    waveform, rate = decoded
    return prepare_audio(waveform, rate, settings)


def _decode_soundfile(path: Path, settings: Settings) -> tuple[np.ndarray, int] | None:
    """(mono float32, rate) via libsndfile; None when libsndfile does not recognise the content.

    The file object (not the name) goes to libsndfile so that only the content decides the format.
    Duration and rate come from the header and are checked before any sample is decoded.
    """
    with open(path, "rb") as handle:
        try:
            audio = sf.SoundFile(handle)
        except (sf.LibsndfileError, RuntimeError, TypeError):
            return None
        with audio:
            if audio.frames == 0:
                raise MediaError(MSG_NO_SAMPLES)
            _check_rate(audio.samplerate)
            _check_duration(audio.frames / audio.samplerate, settings)
            if _wav_data_missing(audio.extra_info):
                raise MediaError(MSG_DAMAGED_AUDIO)
            try:
                blocks = [
                    block.mean(axis=1) for block in audio.blocks(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
                ]
            except (sf.LibsndfileError, RuntimeError):
                raise MediaError(MSG_DAMAGED_AUDIO) from None
            expected, rate = audio.frames, audio.samplerate
    mono = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if len(mono) < expected * (1.0 - TRUNCATION_TOLERANCE):
        logger.info("audio truncated: %d of %d frames", len(mono), expected)
        raise MediaError(MSG_DAMAGED_AUDIO)
    return mono, rate


def _wav_data_missing(log: str) -> bool:
    """True when a wav header promises more data than the file holds (a cut-off upload).

    libsndfile reads such files without error, logging "data : <header> (should be <actual>)";
    recorders that never finalised the header write 0 or 0xFFFFFFFF there, which is not a cut.
    """
    match = WAV_SHORT_DATA.search(log)
    if match is None:
        return False
    claimed, actual = int(match.group(1)), int(match.group(2))
    placeholder = claimed == 0 or claimed >= 0x7FFFFFFF
    return not placeholder and actual < claimed * (1.0 - TRUNCATION_TOLERANCE)


def _probe_duration(path: Path) -> float | None:
    """Container duration in seconds from ffprobe, or None if unknown (e.g. streamed webm)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    command = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFPROBE_TIMEOUT, check=False)
        return float(result.stdout.decode().strip())
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return None


def _run_ffmpeg_audio(path: Path, max_seconds: float) -> tuple[np.ndarray | None, str]:
    """(mono float32 at 16 kHz or None, ffmpeg's error text); decodes at most max_seconds + 1 s."""
    command = [
        *(_ffmpeg() or "ffmpeg", "-nostdin", "-hide_banner", "-v", "error"),
        *("-i", str(path), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)),
        *("-t", f"{max_seconds + 1.0:.3f}", "-f", "f32le", "-"),
    ]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError(MSG_TIMEOUT) from None
    errors = result.stderr.decode(errors="replace")
    if result.returncode != 0 or not result.stdout:
        return None, errors
    usable = len(result.stdout) // 4 * 4
    return np.frombuffer(result.stdout[:usable], dtype=np.float32).copy(), errors


def _decode_ffmpeg(path: Path, settings: Settings) -> np.ndarray:
    """Mono float32 at 16 kHz through an ffmpeg subprocess (m4a, webm, mp4 and the like)."""
    if _ffmpeg() is None:
        raise MediaError(MSG_NEEDS_FFMPEG)
    duration = _probe_duration(path)
    if duration is not None:
        _check_duration(duration, settings)
    waveform, errors = _run_ffmpeg_audio(path, settings.max_audio_seconds)
    if waveform is None:
        logger.info("ffmpeg could not decode an upload: %s", errors.strip()[-300:])
        if "does not contain any stream" in errors or "matches no streams" in errors:
            raise MediaError(MSG_NO_AUDIO_TRACK)
        raise MediaError(MSG_DAMAGED_AUDIO)
    return waveform


def prepare_audio(waveform: np.ndarray, sample_rate: int, settings: Settings | None = None) -> np.ndarray:
    """Validate in-memory audio and convert it to mono float32 at 16 kHz, shape (n,).

    waveform: (n,) or (n, channels) as gr.Audio(type="numpy") gives; (channels, n) is accepted when
    the first axis is clearly the short one. Integer samples are scaled to [-1, 1].
    """
    settings = settings or load_settings()
    if not isinstance(waveform, np.ndarray):
        raise MediaError(MSG_BAD_ARRAY.format(shape=type(waveform).__name__))
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)
    _check_rate(sample_rate)
    mono = _to_mono(_to_float(waveform))
    if mono.size == 0:
        raise MediaError(MSG_NO_SAMPLES)
    if not np.isfinite(mono).all():
        raise MediaError(MSG_NONFINITE)
    seconds = len(mono) / sample_rate
    _check_duration(seconds, settings)
    if seconds < MIN_AUDIO_SECONDS:
        raise MediaError(MSG_TOO_SHORT.format(seconds=seconds))
    peak = max(float(mono.max()), -float(mono.min()))
    if peak > 1.0:
        mono = mono / peak  # float audio outside [-1, 1]: scale rather than let the model see clipping
    audio = np.clip(_resample(mono, int(sample_rate)), -1.0, 1.0)  # resampling can overshoot a full-scale step
    if _rms(audio) < settings.silence_rms:
        raise MediaError(MSG_SILENT)
    return audio


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, (int, np.integer)) or not (MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise MediaError(MSG_RATE.format(rate=sample_rate))


def _check_duration(seconds: float, settings: Settings) -> None:
    if seconds > settings.max_audio_seconds:
        raise MediaError(MSG_TOO_LONG.format(seconds=seconds, limit=settings.max_audio_seconds))


def _to_float(waveform: np.ndarray) -> np.ndarray:
    """Samples as float32 with integer formats scaled to [-1, 1] (uint8 is offset-binary, as in wav)."""
    kind = waveform.dtype.kind
    if kind == "f":
        return waveform.astype(np.float32, copy=False)
    if kind == "u":
        half = float(np.iinfo(waveform.dtype).max) / 2.0 + 0.5
        return ((waveform.astype(np.float64) - half) / half).astype(np.float32)
    if kind == "i":
        bits = waveform.dtype.itemsize * 8
        if bits == 64:  # plain Python ints: take the narrowest PCM width that holds the values
            peak = int(np.abs(waveform).max()) if waveform.size else 0
            bits = 16 if peak <= 32768 else 32
        return (waveform.astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)
    raise MediaError(MSG_BAD_ARRAY.format(shape=f"dtype {waveform.dtype}"))


def _to_mono(waveform: np.ndarray) -> np.ndarray:
    """(n,) stays; (n, channels) or (channels, n) is averaged over channels."""
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise MediaError(MSG_BAD_ARRAY.format(shape=tuple(waveform.shape)))
    rows, cols = waveform.shape
    channel_axis = 0 if rows < cols and rows <= 32 and cols > 32 else 1
    return waveform.mean(axis=channel_axis, dtype=np.float64).astype(np.float32)


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    """torchaudio band-limited resampling to 16 kHz, in chunks; odd rates are snapped to 100 Hz first.

    torchaudio's kernel is (16000/g, rate/g) with g = gcd: a rate like 191,999 Hz would need ~12 GB.
    Snapping changes pitch by at most 50 Hz / 8 kHz = 0.6% (at 8 kHz; far less at usual rates).
    One call on 10 min of audio needs ~5x its size in memory, so long audio goes in chunks that
    start on multiples of rate/g and carry enough context to give the same samples as one call.
    """
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    if rate // math.gcd(rate, SAMPLE_RATE) > MAX_RESAMPLE_RATIO:
        rate = round(rate / 100) * 100
    gcd = math.gcd(rate, SAMPLE_RATE)
    orig, new = rate // gcd, SAMPLE_RATE // gcd
    step = orig * max(1, int(RESAMPLE_CHUNK_SECONDS * rate) // orig)  # input samples per chunk
    width = math.ceil(RESAMPLE_FILTER_WIDTH * orig / (RESAMPLE_ROLLOFF * min(orig, new)))
    context = orig * (width // orig + 2)  # input samples either side; covers the kernel's reach
    tensor = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    pieces = []
    with torch.inference_mode():
        for start in range(0, len(mono), step):
            low, high = max(0, start - context), min(len(mono), start + step + context)
            out = torchaudio.functional.resample(
                tensor[low:high], rate, SAMPLE_RATE, RESAMPLE_FILTER_WIDTH, RESAMPLE_ROLLOFF
            )
            skip = (start - low) // orig * new
            pieces.append(out[skip : skip + step // orig * new].numpy())
    total = math.ceil(new * len(mono) / orig)
    return np.concatenate(pieces)[:total].astype(np.float32, copy=False)


def _rms(audio: np.ndarray) -> float:
    """Root mean square around the mean: a constant (DC) signal counts as silence."""
    if audio.size == 0:
        return 0.0
    centered = audio.astype(np.float64) - float(audio.mean(dtype=np.float64))
    return float(np.sqrt(np.mean(centered * centered)))


# ---------------------------------------------------------------------------------------------- image


def load_image(source: str | Path | bytes | np.ndarray, settings: Settings | None = None) -> np.ndarray:
    """Decode an image (path, bytes or array) to RGB uint8 (H, W, 3); the pixel limit is checked first."""
    settings = settings or load_settings()
    if isinstance(source, np.ndarray):
        return _image_array_to_rgb(source, settings)
    with _as_file(source, settings) as path:
        try:
            with Image.open(path) as image:  # reads the header only
                _check_pixels(image.size[0], image.size[1], settings)
                return _pil_to_rgb(image, settings)
        except MediaError:
            raise
        except UnidentifiedImageError:
            raise MediaError(MSG_NOT_IMAGE) from None
        except Image.DecompressionBombError:
            raise MediaError(MSG_IMAGE_BOMB.format(limit=settings.max_image_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError):
            raise MediaError(MSG_DAMAGED_IMAGE) from None


def _check_pixels(width: int, height: int, settings: Settings) -> None:
    if width <= 0 or height <= 0:
        raise MediaError(MSG_IMAGE_EMPTY)
    if width * height > settings.max_image_pixels:
        raise MediaError(MSG_IMAGE_TOO_BIG.format(w=width, h=height, limit=settings.max_image_pixels))


def _pil_to_rgb(image: Image.Image, settings: Settings) -> np.ndarray:
    """Upright (EXIF orientation), alpha over white, 16-bit and float modes scaled to 8 bits."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _image_array_to_rgb(np.asarray(image), settings)
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _image_array_to_rgb(array: np.ndarray, settings: Settings) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA of any numeric dtype -> RGB uint8."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise MediaError(MSG_BAD_IMAGE_ARRAY.format(shape=tuple(array.shape)))
    _check_pixels(array.shape[1], array.shape[0], settings)
    pixels = _to_uint8(array)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        blended = pixels[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.round(blended).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return (array // 257).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise MediaError(MSG_DAMAGED_IMAGE)
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    if array.dtype.kind in "iu":
        return np.clip(array, 0, 255).astype(np.uint8)
    raise MediaError(MSG_BAD_IMAGE_ARRAY.format(shape=f"dtype {array.dtype}"))


# ---------------------------------------------------------------------------------------------- video


def load_video(
    source: str | Path, settings: Settings | None = None
) -> tuple[list[np.ndarray], list[float], np.ndarray | None]:
    """Up to max_video_frames RGB frames spread evenly over the video, their times (s) and its audio.

    The audio is mono float32 at 16 kHz, or None when there is no track, no ffmpeg, or the track is
    silent or unusable (the face can still be read). Size, duration (max_audio_seconds) and frame
    size (max_image_pixels) limits apply as for audio and images.
    """
    settings = settings or load_settings()
    path = Path(source)
    if not path.is_file():
        raise MediaError(MSG_NOT_FOUND)
    check_size(path, settings)
    frames, times = _video_frames(path, settings)
    return frames, times, _video_audio(path, settings)


def _video_frames(path: Path, settings: Settings) -> tuple[list[np.ndarray], list[float]]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise MediaError(MSG_NOT_VIDEO)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        _check_pixels(width, height, settings)
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if 0 < fps <= MAX_FPS and count > 0:
            _check_duration(count / fps, settings)
            frames, times = _seek_frames(capture, count, fps, settings.max_video_frames)
        else:  # streamed webm (browsers): no frame count in the header
            frames, times = _scan_frames(path, settings)
    finally:
        capture.release()
    if not frames:
        raise MediaError(MSG_NO_FRAMES)
    return frames, times


def _uniform_indices(count: int, wanted: int) -> list[int]:
    """Centres of `wanted` equal slices of `count` frames (all frames when there are fewer)."""
    wanted = max(1, min(wanted, count))
    return [int((i + 0.5) * count / wanted) for i in range(wanted)]


def _seek_frames(
    capture: cv2.VideoCapture, count: int, fps: float, wanted: int
) -> tuple[list[np.ndarray], list[float]]:
    frames, times = [], []
    for index in _uniform_indices(count, wanted):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = capture.read()
        if ok and bgr is not None:  # the header's count may overshoot the last frame by one or two
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            times.append(index / fps)
    return frames, times


def _scan_frames(path: Path, settings: Settings) -> tuple[list[np.ndarray], list[float]]:
    """Two passes for videos without a frame count: count the frames, then decode the chosen ones."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    count, last_ms = 0, 0.0
    while count < MAX_SCAN_FRAMES and capture.grab():
        count += 1
        last_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
    capture.release()
    _check_duration(last_ms / 1000.0, settings)
    chosen = set(_uniform_indices(count, settings.max_video_frames)) if count else set()
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames, times = [], []
    try:
        for index in range(max(chosen, default=-1) + 1):
            if not capture.grab():
                break
            if index in chosen:
                ok, bgr = capture.retrieve()
                if ok and bgr is not None:
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    times.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    finally:
        capture.release()
    return frames, times


def _video_audio(path: Path, settings: Settings) -> np.ndarray | None:
    """The video's sound track, validated, or None when there is none or it cannot be used."""
    if _ffmpeg() is None:
        logger.info("ffmpeg not on PATH: reading the video without its sound")
        return None
    waveform, errors = _run_ffmpeg_audio(path, settings.max_audio_seconds)
    if waveform is None or waveform.size == 0:
        logger.info("video without a usable audio track: %s", errors.strip()[-200:])
        return None
    try:
        return prepare_audio(waveform, SAMPLE_RATE, settings)
    except MediaError as error:  # a silent or too-short track: the face can still be read
        logger.info("ignoring the video's audio track: %s", error)
        return None


def clean_video(path: str | Path, ext: str) -> Path | None:
    """A copy of the video without its metadata (location, device, creation time, chapters, data tracks),
    remuxed by ffmpeg without re-encoding, beside the original under a fresh name (so two identical uploads
    never write one file). Deterministic bytes (bitexact), so the same upload gets the same content address.
    None when ffmpeg is missing or cannot remux it: then the video must not be kept at all."""
    ffmpeg = _ffmpeg()
    if ffmpeg is None:
        logger.info("ffmpeg not on PATH: a video cannot be cleaned of its metadata, so it is not kept")
        return None
    source = Path(path)
    fd, name = tempfile.mkstemp(dir=source.parent, prefix=".clean-", suffix=ext)
    os.close(fd)
    target = Path(name)
    command = [
        *(ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(source)),
        *("-map", "0:v?", "-map", "0:a?", "-c", "copy", "-dn", "-sn"),
        *("-map_metadata", "-1", "-map_metadata:s:v", "-1", "-map_metadata:s:a", "-1", "-map_chapters", "-1"),
        *("-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", str(target)),
    ]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        result = None
    if result is None or result.returncode != 0 or target.stat().st_size == 0:
        logger.info(
            "could not remux a video without its metadata: %s", (result.stderr if result else b"timeout")[-200:]
        )
        target.unlink(missing_ok=True)
        return None
    return target


# ----------------------------------------------------------------------------------------------- text


def clean_text(text: str | None, settings: Settings | None = None) -> str | None:
    """NFC text without control characters and with single spaces; None when nothing is left.

    Newlines and tabs become spaces; other control and format characters are removed, except the
    zero-width joiners and emoji tag characters that emoji and some scripts need.
    """
    settings = settings or load_settings()
    if text is None:
        return None
    if not isinstance(text, str):
        raise MediaError(MSG_TEXT_TYPE)
    if len(text) > TEXT_WORK_FACTOR * settings.max_text_chars:
        raise MediaError(MSG_TEXT_TOO_LONG.format(n=len(text), limit=settings.max_text_chars))
    kept = "".join(" " if char.isspace() else char for char in text if _keep_char(char))
    cleaned = re.sub(r"\s+", " ", unicodedata.normalize("NFC", kept)).strip()
    if not cleaned:
        return None
    if len(cleaned) > settings.max_text_chars:
        raise MediaError(MSG_TEXT_TOO_LONG.format(n=len(cleaned), limit=settings.max_text_chars))
    return cleaned


def _keep_char(char: str) -> bool:
    if char.isspace():
        return True
    category = unicodedata.category(char)
    if category in ("Cc", "Cs"):  # controls, lone surrogates
        return False
    if category == "Cf":  # bidi overrides, zero-width space, BOM, soft hyphen ...
        return char in KEEP_FORMAT_CHARS or "\U000e0020" <= char <= "\U000e007f"
    return True


# --------------------------------------------------------------------------------------------- sample


def load_sample(
    audio: str | Path | bytes | tuple[int, np.ndarray] | None = None,
    video: str | Path | None = None,
    image: str | Path | bytes | np.ndarray | None = None,
    text: str | None = None,
    settings: Settings | None = None,
) -> Sample:
    """One Sample from whatever the person gave; an explicit audio or image wins over the video's.

    audio: a file (path or bytes) or gr.Audio(type="numpy")'s (rate, samples) tuple.
    """
    settings = settings or load_settings()
    waveform = None
    if audio is not None:
        if isinstance(audio, tuple):
            waveform = prepare_audio(np.asarray(audio[1]), audio[0], settings)
        else:
            waveform = load_audio(audio, settings)
    frames, times = None, None
    if video is not None:
        path = Path(video)
        if not path.is_file():
            raise MediaError(MSG_NOT_FOUND)
        check_size(path, settings)
        frames, times = _video_frames(path, settings)
        if waveform is None:
            waveform = _video_audio(path, settings)
    if image is not None:
        frames, times = [load_image(image, settings)], None
    cleaned = clean_text(text, settings)
    if waveform is None and not frames and cleaned is None:
        raise MediaError(MSG_NOTHING)
    return Sample(
        audio=waveform,
        text=cleaned,
        frames=frames,
        frame_times=times,
        source_name=_display_name(audio, video, image),
    )


def _display_name(*sources: object) -> str | None:
    """The first file name given (Gradio keeps the original name as the temp file's name)."""
    for source in sources:
        if isinstance(source, (str, Path)):
            return Path(source).name
    return None


# ---------------------------------------------------------------------------------------------- store


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256: the content address of a stored clip."""
    return hashlib.sha256(data).hexdigest()


def encode_wav(audio: np.ndarray) -> bytes:
    """16-bit PCM mono wav at 16 kHz; the same samples always give the same bytes (content address).

    audio: float samples in [-1, 1], shape (n,); values outside are clipped.
    """
    audio = np.asarray(audio)
    assert audio.ndim == 1, f"encode_wav expects mono samples of shape (n,), got {audio.shape}"
    clipped = np.clip(np.nan_to_num(audio.astype(np.float64)), -1.0, 1.0)
    pcm = np.round(clipped * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()
