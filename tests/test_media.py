"""backend.media: real files of every format, made here with soundfile, ffmpeg and OpenCV."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from PIL import Image, ImageFile

from backend import media
from backend.errors import MediaError
from backend.media import (
    check_size,
    clean_text,
    encode_wav,
    load_audio,
    load_image,
    load_sample,
    load_video,
    prepare_audio,
    sha256_bytes,
)
from backend.settings import load_settings
from backend.types import SAMPLE_RATE

RAVDESS = Path("/work/shared/data/ravdess-speech-16k/Actor_01/03-01-01-01-01-01-01.flac")
TONE_HZ = 440.0
SECONDS = 2.0
VIDEO_FPS = 10
VIDEO_FRAMES = 20  # 2 s of video; frame i has background level 10 * i
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture(scope="module")
def settings():
    return load_settings(max_audio_seconds=600.0, max_upload_mb=200.0, max_video_frames=4)


def tone(seconds: float = SECONDS, rate: int = 48_000, amp: float = 0.3, channels: int = 1) -> np.ndarray:
    """A 440 Hz sine, (n,) or (n, channels) with channel k scaled by (k + 1) / channels."""
    t = np.arange(round(seconds * rate)) / rate
    wave = amp * np.sin(2 * np.pi * TONE_HZ * t)
    if channels == 1:
        return wave
    return np.stack([wave * (k + 1) / channels for k in range(channels)], axis=1)


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(audio)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


def assert_error(excinfo: pytest.ExceptionInfo, message: str) -> None:
    assert str(excinfo.value) == message
    assert "Traceback" not in str(excinfo.value) and "/tmp" not in str(excinfo.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One 2 s 48 kHz tone in every audio format, plus videos with and without sound."""
    folder = tmp_path_factory.mktemp("media")
    out = {}
    for ext, kwargs in {
        "wav": {"subtype": "PCM_16"},
        "flac": {},
        "ogg": {"subtype": "VORBIS"},
        "mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"},
    }.items():
        out[ext] = folder / f"tone.{ext}"
        sf.write(out[ext], tone(), 48_000, **kwargs)
    if shutil.which("ffmpeg"):
        out["m4a"] = folder / "tone.m4a"
        ffmpeg("-i", str(out["wav"]), "-c:a", "aac", str(out["m4a"]))
        out["webm"] = folder / "tone.webm"
        ffmpeg("-i", str(out["wav"]), "-c:a", "libopus", str(out["webm"]))
        out.update(make_videos(folder, out["wav"]))
    return out


def face_frame(level: int) -> np.ndarray:
    """96x96 BGR frame: a face-like drawing on a background of brightness `level`."""
    frame = np.full((96, 96, 3), level, np.uint8)
    cv2.ellipse(frame, (48, 52), (26, 34), 0, 0, 360, (150, 180, 220), -1)
    for x in (38, 58):
        cv2.circle(frame, (x, 44), 4, (40, 40, 40), -1)
    cv2.ellipse(frame, (48, 68), (10, 5), 0, 0, 180, (60, 60, 160), 2)
    return frame


def make_videos(folder: Path, wav: Path) -> dict[str, Path]:
    silent_only = folder / "frames.mp4"
    writer = cv2.VideoWriter(str(silent_only), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (96, 96))
    for i in range(VIDEO_FRAMES):
        writer.write(face_frame(10 * i))
    writer.release()
    zeros = folder / "zeros.wav"
    sf.write(zeros, np.zeros(2 * 48_000), 48_000)
    out = {"video_no_audio": silent_only}
    for name, track in (("video", wav), ("video_silent_track", zeros)):
        out[name] = folder / f"{name}.mp4"
        ffmpeg("-i", str(silent_only), "-i", str(track), "-c:v", "copy", "-c:a", "aac", str(out[name]))
    # Streamed webm, as browsers record it: written to a pipe, so no duration or frame count.
    streamed = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(silent_only), "-c:v", "libvpx", "-f", "webm", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    out["video_streamed"] = folder / "streamed.webm"
    out["video_streamed"].write_bytes(streamed.stdout)
    return out


# ------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "ext",
    ["wav", "flac", "ogg", "mp3", pytest.param("m4a", marks=needs_ffmpeg), pytest.param("webm", marks=needs_ffmpeg)],
)
def test_each_format_decodes_to_16k_mono_float32(files, settings, ext):
    audio = load_audio(files[ext], settings)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / SAMPLE_RATE == pytest.approx(SECONDS, rel=0.01)
    assert dominant_hz(audio) == pytest.approx(TONE_HZ, abs=2.0)  # right rate: no pitch shift
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.05)


@pytest.mark.parametrize("ext", ["flac", "mp3", pytest.param("m4a", marks=needs_ffmpeg)])
def test_content_decides_format_not_the_extension(files, settings, tmp_path, ext):
    renamed = tmp_path / "recording.wav"
    shutil.copy(files[ext], renamed)
    audio = load_audio(renamed, settings)
    assert len(audio) / SAMPLE_RATE == pytest.approx(SECONDS, rel=0.01)
    from_bytes = load_audio(files[ext].read_bytes(), settings)
    np.testing.assert_array_equal(audio, from_bytes)


def test_stereo_48k_int16_numpy_like_gradio(settings):
    stereo = (tone(channels=2) * 32767).astype(np.int16)  # (n, 2), channel gains 0.5 and 1.0
    audio = prepare_audio(stereo, 48_000, settings)
    assert audio.dtype == np.float32 and audio.shape == (int(SECONDS * SAMPLE_RATE),)
    assert np.abs(audio).max() == pytest.approx(0.3 * 0.75, abs=0.01)  # mean of the two channels
    channels_first = prepare_audio(np.ascontiguousarray(stereo.T), 48_000, settings)
    np.testing.assert_allclose(channels_first, audio, atol=1e-6)


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 192_000])
def test_sample_rates_8k_to_192k(settings, tmp_path, rate):
    path = tmp_path / "rate.flac"
    sf.write(path, tone(rate=rate), rate, subtype="PCM_24")
    audio = load_audio(path, settings)
    assert len(audio) == int(SECONDS * SAMPLE_RATE)
    assert dominant_hz(audio) == pytest.approx(TONE_HZ, abs=2.0)


@pytest.mark.parametrize("rate", [7_999, 200_000, 0])
def test_sample_rate_out_of_range_rejected(settings, rate):
    with pytest.raises(MediaError) as excinfo:
        prepare_audio(np.ones(16_000, np.float32), rate, settings)
    assert_error(excinfo, media.MSG_RATE.format(rate=rate))


def test_odd_sample_rate_does_not_build_a_huge_resampling_kernel(settings):
    audio = prepare_audio(tone(rate=191_999).astype(np.float32), 191_999, settings)
    assert len(audio) == pytest.approx(SECONDS * SAMPLE_RATE, abs=2)
    assert dominant_hz(audio) == pytest.approx(TONE_HZ, abs=2.0)


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000])
def test_chunked_resampling_equals_one_torchaudio_call(monkeypatch, rate):
    samples = np.random.default_rng(rate).normal(0, 0.1, int(rate * 2.3) + 7).astype(np.float32)
    monkeypatch.setattr(media, "RESAMPLE_CHUNK_SECONDS", 0.5)
    chunked = media._resample(samples, rate)
    whole = torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_eight_channels_mixed_to_mono(settings, tmp_path):
    path = tmp_path / "eight.wav"
    sf.write(path, tone(channels=8), 48_000, subtype="PCM_16")
    assert sf.info(path).channels == 8
    audio = load_audio(path, settings)
    assert np.abs(audio).max() == pytest.approx(0.3 * 4.5 / 8, abs=0.01)  # mean of gains 1/8 .. 8/8


@pytest.mark.parametrize(
    ("dtype", "scale", "offset"),
    [(np.int16, 32767, 0), (np.int32, 2**31 - 1, 0), (np.uint8, 127, 128), (np.float64, 1.0, 0)],
)
def test_sample_formats_normalized_to_unit_range(settings, dtype, scale, offset):
    samples = (tone(amp=0.5) * scale + offset).astype(dtype)
    audio = prepare_audio(samples, 48_000, settings)
    assert audio.dtype == np.float32
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.02)


def test_float_audio_louder_than_full_scale_is_scaled_down(settings):
    audio = prepare_audio(tone(amp=4.0), 48_000, settings)
    assert np.abs(audio).max() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected(settings, tmp_path, bad):
    samples = tone()
    samples[1000] = bad
    with pytest.raises(MediaError) as excinfo:
        prepare_audio(samples, 48_000, settings)
    assert_error(excinfo, media.MSG_NONFINITE)
    path = tmp_path / "float.wav"
    sf.write(path, samples, 48_000, subtype="DOUBLE")
    with pytest.raises(MediaError) as excinfo:
        load_audio(path, settings)
    assert_error(excinfo, media.MSG_NONFINITE)


# ------------------------------------------------------------------------------------------ bad files


def test_zero_byte_file_and_empty_bytes(settings, tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    for source in (path, b""):
        with pytest.raises(MediaError) as excinfo:
            load_audio(source, settings)
        assert_error(excinfo, media.MSG_EMPTY_FILE)


def test_header_only_wav_and_empty_array(settings, tmp_path):
    path = tmp_path / "header.wav"
    sf.write(path, np.zeros(0, np.float32), 16_000)
    assert path.stat().st_size > 0
    with pytest.raises(MediaError) as excinfo:
        load_audio(path, settings)
    assert_error(excinfo, media.MSG_NO_SAMPLES)
    with pytest.raises(MediaError) as excinfo:
        prepare_audio(np.zeros((0, 2), np.int16), 48_000, settings)
    assert_error(excinfo, media.MSG_NO_SAMPLES)


@pytest.mark.parametrize("ext", ["flac", "wav"])
def test_truncated_file_rejected(files, settings, tmp_path, ext):
    data = files[ext].read_bytes()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as excinfo:
        load_audio(path, settings)
    assert_error(excinfo, media.MSG_DAMAGED_AUDIO)


def test_unfinished_wav_header_still_decodes(files, settings, tmp_path):
    """Recorders that stream wav leave 0xFFFFFFFF as the size: that is not a cut-off file."""
    data = bytearray(files["wav"].read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    audio = load_audio(bytes(data), settings)
    assert len(audio) / SAMPLE_RATE == pytest.approx(SECONDS, rel=0.01)


@needs_ffmpeg
def test_truncated_m4a_rejected(files, settings):
    data = files["m4a"].read_bytes()
    with pytest.raises(MediaError) as excinfo:
        load_audio(data[: len(data) // 2], settings)
    assert_error(excinfo, media.MSG_DAMAGED_AUDIO)


def test_files_that_are_not_audio(settings, tmp_path):
    random_wav = tmp_path / "noise.wav"
    random_wav.write_bytes(np.random.default_rng(0).bytes(20_000))
    text_mp3 = tmp_path / "notes.mp3"
    text_mp3.write_text("this is a shopping list, not a song\n" * 50)
    picture = tmp_path / "picture.wav"
    Image.new("RGB", (8, 8)).save(picture, format="PNG")
    for path in (random_wav, text_mp3, picture):
        with pytest.raises(MediaError) as excinfo:
            load_audio(path, settings)
        assert_error(excinfo, media.MSG_NOT_AUDIO)


def test_missing_file_message_has_no_path(settings, tmp_path):
    with pytest.raises(MediaError) as excinfo:
        load_audio(tmp_path / "gone.wav", settings)
    assert_error(excinfo, media.MSG_NOT_FOUND)


@needs_ffmpeg
def test_video_without_sound_given_as_audio(files, settings):
    with pytest.raises(MediaError) as excinfo:
        load_audio(files["video_no_audio"], settings)
    assert_error(excinfo, media.MSG_NO_AUDIO_TRACK)


@needs_ffmpeg
def test_m4a_without_ffmpeg_says_what_to_upload(files, settings, monkeypatch):
    monkeypatch.setattr(media, "_ffmpeg", lambda: None)
    with pytest.raises(MediaError) as excinfo:
        load_audio(files["m4a"], settings)
    assert_error(excinfo, media.MSG_NEEDS_FFMPEG)
    assert len(load_audio(files["flac"], settings)) == SECONDS * SAMPLE_RATE  # soundfile needs no ffmpeg


# -------------------------------------------------------------------------------------------- silence


@pytest.mark.parametrize(
    "samples",
    [np.zeros(32_000), np.full(32_000, 0.25), np.random.default_rng(0).normal(0, 1e-6, 32_000)],
    ids=["zeros", "dc-offset", "below-noise-floor"],
)
def test_silence_rejected(settings, tmp_path, samples):
    with pytest.raises(MediaError) as excinfo:
        prepare_audio(samples, 16_000, settings)
    assert_error(excinfo, media.MSG_SILENT)
    path = tmp_path / "quiet.flac"
    sf.write(path, samples, 16_000, subtype="PCM_24")
    with pytest.raises(MediaError) as excinfo:
        load_audio(path, settings)
    assert_error(excinfo, media.MSG_SILENT)


def test_quiet_speech_level_is_not_silence(settings):
    audio = prepare_audio(tone(amp=0.003), 48_000, settings)  # about -50 dBFS
    assert np.abs(audio).max() > 0.002


def test_too_short_rejected(settings):
    with pytest.raises(MediaError) as excinfo:
        prepare_audio(tone(seconds=0.05), 48_000, settings)
    assert_error(excinfo, media.MSG_TOO_SHORT.format(seconds=0.05))


# ------------------------------------------------------------------------------------------- limits


def test_duration_limit_checked_from_header_before_decoding(files, monkeypatch, tmp_path):
    short = load_settings(max_audio_seconds=2)
    assert len(load_audio(files["flac"], short)) == 2 * SAMPLE_RATE  # exactly at the limit: fine
    path = tmp_path / "long.flac"
    sf.write(path, tone(seconds=3.0), 48_000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded before the duration check")

    monkeypatch.setattr(sf.SoundFile, "blocks", no_decoding)
    with pytest.raises(MediaError) as excinfo:
        load_audio(path, short)
    assert_error(excinfo, media.MSG_TOO_LONG.format(seconds=3.0, limit=2))
    with pytest.raises(MediaError):
        prepare_audio(tone(seconds=3.0), 48_000, short)


@needs_ffmpeg
def test_duration_limit_for_ffmpeg_formats(files, monkeypatch):
    short = load_settings(max_audio_seconds=1.5)
    with pytest.raises(MediaError, match=r"limit is 1\.5 s"):
        load_audio(files["m4a"], short)
    # Streamed webm has no duration in its header: the decode is cut at limit + 1 s and then refused.
    monkeypatch.setattr(media, "_probe_duration", lambda path: None)
    with pytest.raises(MediaError, match=r"limit is 1\.5 s"):
        load_audio(files["webm"], short)


def test_size_limit_checked_before_decoding(files, monkeypatch):
    tiny = load_settings(max_upload_mb=0.01)
    monkeypatch.setattr(sf, "SoundFile", lambda *a, **k: pytest.fail("decoded a file over the size limit"))
    size_mb = files["wav"].stat().st_size / media.MB
    expected = media.MSG_TOO_BIG.format(size=size_mb, limit=0.01)
    for call in (lambda: check_size(files["wav"], tiny), lambda: load_audio(files["wav"], tiny)):
        with pytest.raises(MediaError) as excinfo:
            call()
        assert_error(excinfo, expected)
    with pytest.raises(MediaError, match=r"the limit is 0\.01 MB"):
        load_audio(files["wav"].read_bytes(), tiny)
    check_size(files["mp3"], load_settings(max_upload_mb=1))  # small enough: no error


# ------------------------------------------------------------------------------------------- images


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_png_and_jpeg_decode_to_rgb(settings, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    png, jpeg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(pixels).save(png)
    Image.fromarray(np.full((30, 40, 3), (200, 40, 90), np.uint8)).save(jpeg, quality=95)
    np.testing.assert_array_equal(load_image(png, settings), pixels)
    decoded = load_image(jpeg.read_bytes(), settings)
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    np.testing.assert_allclose(decoded.reshape(-1, 3).mean(axis=0), (200, 40, 90), atol=3)


def test_grayscale_rgba_and_16bit_images(settings, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 6), 77, np.uint8)).save(gray)
    assert (load_image(gray, settings) == 77).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent -> white
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for source in (path, rgba):
        image = load_image(source, settings)
        assert (image[:2] == (255, 0, 0)).all() and (image[2:] == 255).all()
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(deep)
    assert (load_image(deep, settings) == 255).all()


def test_image_arrays(settings):
    assert load_image(np.full((2, 3, 1), 9, np.uint8), settings).shape == (2, 3, 3)
    assert (load_image(np.full((2, 3), 0.5), settings) == 128).all()
    with pytest.raises(MediaError) as excinfo:
        load_image(np.zeros((0, 10, 3), np.uint8), settings)
    assert_error(excinfo, media.MSG_IMAGE_EMPTY)
    with pytest.raises(MediaError, match=r"got \(2, 3, 5\)"):
        load_image(np.zeros((2, 3, 5), np.uint8), settings)


def test_one_pixel_image(settings, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    assert load_image(path, settings).tolist() == [[[1, 2, 3]]]


def test_too_many_pixels_rejected_from_the_header(settings, tmp_path, monkeypatch):
    small = load_settings(max_image_pixels=100)
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(MediaError) as excinfo:
        load_image(path, small)
    assert_error(excinfo, media.MSG_IMAGE_TOO_BIG.format(w=20, h=20, limit=100))
    monkeypatch.undo()
    tracemalloc.start()
    try:
        with pytest.raises(MediaError, match="10000x5000 pixels"):  # 50 MP claimed, default 40 MP limit
            load_image(png_header_only(10_000, 5_000), settings)
        with pytest.raises(MediaError, match="far more than"):  # 10 GP: PIL's own bomb guard fires first
            load_image(png_header_only(100_000, 100_000), settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"{peak} bytes allocated to refuse an image by its header"


def test_not_an_image(settings, files, tmp_path):
    text = tmp_path / "photo.jpg"
    text.write_text("not a photo")
    for source in (text, files["wav"], b"\x00\x01garbage"):
        with pytest.raises(MediaError) as excinfo:
            load_image(source, settings)
        assert_error(excinfo, media.MSG_NOT_IMAGE)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    with pytest.raises(MediaError) as excinfo:
        load_image(buffer.getvalue()[:600], settings)
    assert_error(excinfo, media.MSG_DAMAGED_IMAGE)


# -------------------------------------------------------------------------------------------- video


def level_of(frame: np.ndarray) -> float:
    return float(frame[:8, :8].mean())  # the corner shows the background


@needs_ffmpeg
@pytest.mark.parametrize("name", ["video", "video_streamed"])
def test_video_frames_are_spread_evenly(files, settings, name):
    frames, times, _ = load_video(files[name], settings)
    indices = [2, 7, 12, 17]  # centres of 4 equal slices of 20 frames
    assert len(frames) == settings.max_video_frames == len(times)
    assert times == pytest.approx([i / VIDEO_FPS for i in indices], abs=1e-3)
    for frame, index in zip(frames, indices):
        assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
        assert level_of(frame) == pytest.approx(10 * index, abs=8)
    assert frames[0][52, 48, 0] > frames[0][52, 48, 2]  # skin is red-ish in RGB order (BGR converted)


@needs_ffmpeg
def test_video_audio_track(files, settings):
    _, _, audio = load_video(files["video"], settings)
    assert audio is not None and audio.dtype == np.float32
    assert len(audio) / SAMPLE_RATE == pytest.approx(SECONDS, rel=0.01)
    assert dominant_hz(audio) == pytest.approx(TONE_HZ, abs=2.0)


@needs_ffmpeg
@pytest.mark.parametrize("name", ["video_no_audio", "video_silent_track"])
def test_video_without_usable_sound_still_gives_frames(files, settings, name):
    frames, _, audio = load_video(files[name], settings)
    assert audio is None and len(frames) == 4


@needs_ffmpeg
def test_video_without_ffmpeg_gives_frames_only(files, settings, monkeypatch):
    monkeypatch.setattr(media, "_ffmpeg", lambda: None)
    frames, _, audio = load_video(files["video"], settings)
    assert audio is None and len(frames) == 4


@needs_ffmpeg
def test_video_limits_and_non_videos(files, settings, tmp_path):
    with pytest.raises(MediaError, match="limit is 1 s"):
        load_video(files["video"], load_settings(max_audio_seconds=1))
    text = tmp_path / "clip.mp4"
    text.write_text("not a video")
    with pytest.raises(MediaError) as excinfo:
        load_video(text, settings)
    assert_error(excinfo, media.MSG_NOT_VIDEO)


# --------------------------------------------------------------------------------------------- text


def test_clean_text_controls_and_whitespace(settings):
    assert clean_text("  I am\tso\n\nhappy\x00\x07 today\u200b!\r\n", settings) == "I am so happy today!"
    assert clean_text("e\u0301te\u0301", settings) == "\u00e9t\u00e9"  # NFC
    for empty in (None, "", "   \n\t", "\x00\x01"):
        assert clean_text(empty, settings) is None


def test_clean_text_keeps_rtl_and_emoji(settings):
    arabic = "أنا سعيد جدا"
    hebrew = "אני שמח"
    assert clean_text(f"{arabic}\n{hebrew}", settings) == f"{arabic} {hebrew}"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # joined by zero-width joiners
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # tag sequence
    assert clean_text(f"love 😍 {family} {england}", settings) == f"love 😍 {family} {england}"
    assert clean_text("evil \u202egnp.exe", settings) == "evil gnp.exe"  # bidi override removed


def test_clean_text_length_limit(settings):
    limit = settings.max_text_chars
    assert len(clean_text("a" * limit, settings)) == limit
    with pytest.raises(MediaError) as excinfo:
        clean_text("a" * (limit + 1), settings)
    assert_error(excinfo, media.MSG_TEXT_TOO_LONG.format(n=limit + 1, limit=limit))
    with pytest.raises(MediaError, match="limit is"):
        clean_text("x" * 1_000_000, settings)
    with pytest.raises(MediaError):
        clean_text(b"bytes", settings)


# ------------------------------------------------------------------------------------------- sample


@needs_ffmpeg
def test_load_sample_explicit_audio_wins_over_video_track(files, settings, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, tone(seconds=1.0), 48_000)
    sample = load_sample(audio=short, video=files["video"], text=" hi\n", settings=settings)
    assert sample.duration == pytest.approx(1.0, rel=0.01)
    assert len(sample.frames) == 4 and sample.frame_times is not None
    assert sample.text == "hi" and sample.source_name == "short.wav"
    assert sample.modalities == ["speech", "text", "face"]
    from_video = load_sample(video=files["video"], settings=settings)
    assert from_video.duration == pytest.approx(SECONDS, rel=0.01)


def test_load_sample_single_inputs(settings):
    rate, samples = 48_000, (tone() * 32767).astype(np.int16)
    assert load_sample(audio=(rate, samples), settings=settings).modalities == ["speech"]
    image = load_sample(image=np.zeros((4, 4, 3), np.uint8), settings=settings)
    assert image.modalities == ["face"] and image.frame_times is None
    assert load_sample(text="so angry", settings=settings).modalities == ["text"]


def test_load_sample_nothing_to_analyze(settings):
    for kwargs in ({}, {"text": "   "}, {"text": None}):
        with pytest.raises(MediaError) as excinfo:
            load_sample(settings=settings, **kwargs)
        assert_error(excinfo, media.MSG_NOTHING)
        assert str(excinfo.value).startswith("Nothing to analyze: ")


# ----------------------------------------------------------------------------------- store and real


def test_sha256_and_encode_wav_round_trip(settings):
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    audio = prepare_audio(tone(), 48_000, settings)
    data = encode_wav(audio)
    assert encode_wav(audio) == data  # deterministic: a stable content address
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE and sf.info(io.BytesIO(data)).subtype == "PCM_16"
    np.testing.assert_allclose(decoded, audio, atol=1.5 / 32767)
    np.testing.assert_allclose(load_audio(data, settings), audio, atol=1.5 / 32767)
    loud, _ = sf.read(io.BytesIO(encode_wav(np.array([2.0, -2.0, 0.0]))), dtype="int16")
    assert loud.tolist() == [32767, -32767, 0]


def test_real_ravdess_clip(settings):
    audio = load_audio(RAVDESS, settings)
    reference, rate = sf.read(RAVDESS, dtype="float32")
    assert rate == SAMPLE_RATE and audio.dtype == np.float32 and audio.ndim == 1
    assert 2.0 < len(audio) / SAMPLE_RATE < 6.0
    np.testing.assert_array_equal(audio, reference)  # already 16 kHz mono: passed through unchanged
    assert media._rms(audio) > settings.silence_rms
