"""Emotion studio: the Gradio app (Analyze, Label and Model tabs). UI wiring only.

Handlers adapt widget values to one call into backend/ (media, predictor, present) or labeling/
(store, service) and back; every event has an api_name, so the app is also an API:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    label, *_ = client.predict(audio=handle_file("clip.wav"), api_name="/predict")
    print(label["label"], label["confidences"][:3])
    client.predict(choices=["sad"], consent=False, api_name="/correct")

Run: `python app.py` (settings from EMO_* variables; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as usual).
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import PIL.Image
import soundfile as sf
from gradio import processing_utils
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder

from backend import live_view, present
from backend.adapt import SpeakerStats
from backend.errors import MediaError, ModelError
from backend.labels import LABELS
from backend.media import MSG_IMAGE_BOMB, load_sample
from backend.model import resolve_model_folder
from backend.predictor import LONG_CLIP_SECONDS, load_predictor
from backend.ratelimit import MSG_BUSY_NETWORK, RateLimiter, RateLimitError
from backend.registry import current_model
from backend.settings import Settings, load_settings
from backend.streaming import LiveConfig, LiveStream, LiveUpdate, Reader, model_threshold, speech_reader, to_16k
from backend.types import SAMPLE_RATE, Prediction
from labeling import agreement_report, service
from labeling.errors import StoreError
from labeling.served import ServedCopies
from labeling.store import Store

log = logging.getLogger(__name__)
LABEL_CONCURRENCY = 8  # next_item / vote / skip workers: cheap SQLite calls

# On a Space both are set; Gradio's real HF login needs SYSTEM=spaces (else it mocks the login through whoami,
# which fails offline), so the login button and ZeroGPU are used only then.
ON_SPACES = bool(os.environ.get("SPACE_ID")) and os.environ.get("SYSTEM") == "spaces"
HF_LOGIN = ON_SPACES and importlib.util.find_spec("authlib") is not None  # gradio[oauth]; else the name field
MB = 1024 * 1024
MSG_NOTHING_READABLE = (
    "No face was found in the picture or video, and there is no voice or text to read. "
    "Try a brighter, front-facing photo, or add a recording or some text."
)
SESSION_TTL_S = 3600  # a session's pending analysis (audio bytes) is dropped an hour after its last use
CACHE_TTL_S = 3600  # served copies of clips (and uploads) leave Gradio's cache after an hour
SERVE_TTL_S = 300  # a served copy of a clip is deleted after this (Gradio copies it into its cache at once)
PLAYABLE_WAV = {"PCM_16", "PCM_24", "PCM_U8", "FLOAT"}  # wav codecs browsers play (Gradio's list, soundfile names)
PREDICT_NICE = 10  # CPU priority of predictions under votes and page events (Linux nice: per thread)
LONG_JOB_NICE = 19  # a long clip's analysis: background work, below every request (its transcription too)
KEYS_STORAGE = "emo-studio-annotator-keys"  # localStorage entry: {annotator id: key} of this browser


def _no_gpu_decorator(fn: Callable) -> Callable:
    return fn


gpu = _no_gpu_decorator
if ON_SPACES:  # ZeroGPU: only the decorated call holds a GPU; the model itself loads once at startup
    try:
        import spaces

        gpu = spaces.GPU
    except ImportError:
        log.info("the spaces package is not installed; running without ZeroGPU")


@functools.cache
def get_settings() -> Settings:
    return load_settings()


def browser_ready(media: Path, folder: Path) -> Path:
    """The clip's media as browsers play it: the file itself, or Gradio's own conversion written under folder.

    Done once per clip (labeling.served), where gr.Audio / gr.Video would probe every response with an
    ffprobe subprocess (~65 ms of CPU, the largest part of a vote's server work)."""
    kind = service.media_kind(media.suffix.lower())
    if kind not in ("audio", "video") or not processing_utils.ffmpeg_installed():
        return media
    if kind == "audio" and not audio_playable(media):
        folder.mkdir(mode=0o700, exist_ok=True)
        return Path(processing_utils.convert_audio_to_playable(str(media), cache_dir=str(folder)))
    if kind == "video" and not processing_utils.video_is_playable(str(media)):
        folder.mkdir(mode=0o700, exist_ok=True)
        return Path(processing_utils.convert_video_to_playable_mp4(str(media), cache_dir=str(folder)))
    return media


def audio_playable(media: Path) -> bool:
    """Whether browsers play this audio: wav and flac from their header, in-process; the rest by Gradio's ffprobe."""
    if media.suffix.lower() in (".wav", ".flac"):
        try:
            info = sf.info(str(media))
        except (sf.LibsndfileError, RuntimeError):
            info = None
        if info is not None and (info.format, media.suffix.lower()) in (("WAV", ".wav"), ("FLAC", ".flac")):
            return info.format == "FLAC" or info.subtype in PLAYABLE_WAV
    return processing_utils.audio_is_playable(str(media))


@functools.cache
def get_served() -> ServedCopies:
    """This process's private folder of clip copies shown to annotators; Gradio's cache mirrors them."""
    served = ServedCopies(SERVE_TTL_S, CACHE_TTL_S, mirrors=lambda: [Path(get_upload_folder())], prepare=browser_ready)
    atexit.register(served.close)
    return served


@functools.cache
def get_store() -> Store:
    settings = get_settings()
    store = Store.open(settings.database, settings.media_dir, k=settings.votes_per_clip, gold_rate=settings.gold_rate)
    store.on_media_gone.append(get_served().purge)  # a deleted clip's served copies go with it
    return store


@functools.cache
def get_limiter() -> RateLimiter:
    """Requests per minute per session / annotator (EMO_RATE_LIMIT_PER_MINUTE; 0 turns it off)."""
    return RateLimiter(get_settings().rate_limit_per_minute)


@functools.cache
def get_ip_limiter() -> RateLimiter:
    """Requests per minute per client address (EMO_RATE_LIMIT_PER_IP_PER_MINUTE), off with the session limit."""
    settings = get_settings()
    per_minute = settings.rate_limit_per_ip_per_minute if settings.rate_limit_per_minute > 0 else 0
    return RateLimiter(per_minute, message=MSG_BUSY_NETWORK)


def client_ip(request: gr.Request | None) -> str | None:
    """The caller's address. On Spaces the app sits behind the platform's proxy, which appends the real address
    to X-Forwarded-For: the last entry is the one a client cannot forge. Elsewhere, the socket's peer."""
    if request is None:
        return None
    if ON_SPACES:
        forwarded = (request.headers or {}).get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


def check_rate(*keys: object) -> None:
    """Refuse with 'busy, try again' before any work when the client address or the first usable key is over its
    rate limit.

    keys: candidates in order of preference (annotator id, session user id, gr.Request, ...)."""
    request = next((k for k in keys if isinstance(k, gr.Request)), None)
    ip = client_ip(request)
    if ip:
        get_ip_limiter().check(ip)
    for key in keys:
        if isinstance(key, gr.Request):
            key = getattr(key, "session_hash", None)
        if key:
            get_limiter().check(str(key))
            return
    get_limiter().check("anonymous")


def get_predictor():
    """The process's one model (backend.predictor caches it)."""
    return load_predictor(settings=get_settings())


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux: nice is per thread; threads it starts inherit it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: predictions at normal priority
        log.info("could not lower the predictions' priority: %s", exc)


@functools.cache
def prediction_worker(kind: str = "media") -> ThreadPoolExecutor:
    """The thread that runs short predictions of one kind ("media": audio, images, video, and the model load;
    "text": text-only), at nice PREDICT_NICE; "long": the threads of long clips' analyses, at LONG_JOB_NICE.

    The predictor does one forward at a time anyway; here the threads doing it (torch's OpenMP team and
    CTranslate2's workers, started by this thread and so niced like it) give a core to a vote (~30 ms of CPU)
    as soon as it needs one instead of sharing both cores evenly with it (bench/serve.py --scenario crowd).
    Text-only requests have their own thread (and the predictor its text lock), so they never queue behind a
    clip that waits for a long analysis's step; that analysis runs below them all."""
    if kind == "long":
        nice, workers = LONG_JOB_NICE, LONG_JOBS_AT_ONCE
    else:
        nice, workers = PREDICT_NICE, 1
    return ThreadPoolExecutor(
        workers, thread_name_prefix=f"predict-{kind}", initializer=lower_priority, initargs=(nice,)
    )


def in_prediction_worker(fn: Callable[..., Any], *args: Any, kind: str = "media", **kwargs: Any) -> Any:
    """fn(*args) on the prediction worker of `kind` (directly on Spaces, whose ZeroGPU runs the call in another
    process)."""
    if ON_SPACES:
        return fn(*args, **kwargs)
    return prediction_worker(kind).submit(fn, *args, **kwargs).result()


def shows_errors(fn: Callable) -> Callable:
    """Turn the project's person-readable errors into gr.Error; anything else becomes a generic message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (MediaError, StoreError, ModelError, RateLimitError) as error:
            raise gr.Error(str(error)) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong on the server; please try again or use another file.") from None

    return wrapper


def new_session() -> dict[str, Any]:
    """Per-browser-session data: an anonymous contributor id, the analysis waiting for an answer, receipts."""
    return {"user": f"session:{uuid.uuid4().hex[:16]}", "pending": None, "receipts": []}


# ------------------------------------------------------------------------------------------ Analyze


LONG_JOBS_AT_ONCE = 2  # long clips analysed at once; the predict event gets this many workers more than usual
MSG_LONG_BUSY = (
    "Two long recordings are being analysed right now. Please try again in a few minutes, "
    "or send a clip of under {seconds:g} s."
)
_long_jobs = threading.BoundedSemaphore(LONG_JOBS_AT_ONCE)


@gpu
def run_model(sample, progress: gr.Progress | None = None, voice: SpeakerStats | None = None):
    """The prediction; a long clip in steps that let other requests go first, reported on the progress bar.
    voice: this session's earlier speech (backend.adapt), updated with this clip's."""
    predictor = get_predictor()
    if not predictor.is_long(sample):
        kind = "text" if sample.text_only else "media"
        return in_prediction_worker(predictor.predict_batch, [sample], speakers=[voice], kind=kind)[0]
    if not _long_jobs.acquire(blocking=False):  # a third would hold a worker that short requests need
        raise MediaError(MSG_LONG_BUSY.format(seconds=LONG_CLIP_SECONDS))
    steps = predictor.predict_steps(sample)
    try:
        while True:  # each step on a low-priority thread; the progress bar from this one
            step = in_prediction_worker(next, steps, None, kind="long")
            if step is None:
                raise RuntimeError("predict_steps ended without a prediction")
            if isinstance(step, Prediction):
                return step
            if progress is not None:
                progress(step, desc=f"Analysing {sample.duration / 60:.1f} minutes of audio")
    finally:
        steps.close()
        _long_jobs.release()


@shows_errors
def predict(
    audio: Any = None,
    video: str | None = None,
    image: str | None = None,
    text: str | None = None,
    session: dict | None = None,
    request: gr.Request = None,
    progress: gr.Progress = gr.Progress(),
):
    """Analyze whatever was given; the result waits in the session for the person's answer."""
    check_rate((session or {}).get("user"), request)
    sample = load_sample(
        audio=audio or None, video=video or None, image=image or None, text=text, settings=get_settings()
    )
    session = session or new_session()
    voice = SpeakerStats.from_dict(session.get("voice"))  # one browser session is taken as one voice
    try:
        prediction = run_model(sample, progress, voice)
    except ValueError as error:  # the predictor found nothing it could read, e.g. a photo without a face
        if not str(error).startswith("nothing to predict"):
            raise
        raise MediaError(MSG_NOTHING_READABLE) from None
    session["voice"] = voice.to_dict()
    session["pending"] = service.make_contribution(sample, prediction, video=video or None)
    frame = present.face_image(sample.frames, prediction.faces)
    timeline = present.timeline_frame(prediction)
    return (
        present.label_confidences(prediction),
        present.summary_markdown(prediction, device=str(get_predictor().device)),
        present.breakdown_table(prediction),
        present.highlighted_words(prediction.words, sample.text or prediction.transcript),
        gr.update(value=frame, visible=frame is not None),
        gr.update(value=timeline, visible=not timeline.empty),
        prediction.to_dict(),
        session,
        gr.update(value=[]),
        "",
    )


@shows_errors
def correct(
    choices: list[str],
    note: str | None = None,
    consent: bool = False,
    session: dict | None = None,
    request: gr.Request = None,
):
    """Store the person's answer about the last analysis (media only with consent) and say what was kept."""
    check_rate((session or {}).get("user"), request)
    session = session or new_session()
    if session["pending"] is None:
        raise StoreError("Analyze something first, then say what the right emotion is.")
    receipt = service.record_correction(
        get_store(), session["pending"], session["user"], choices, note=note, consent=bool(consent)
    )
    session["receipts"].append(receipt)
    return present.receipt_markdown(receipt.to_dict()), receipt.to_dict(), session


@shows_errors
def delete_my_data(session: dict | None = None, request: gr.Request = None):
    """Delete everything this browser session gave (clips it created, votes, kept media)."""
    check_rate((session or {}).get("user"), request)
    session = session or new_session()
    counts = service.delete_my_data(get_store(), session["user"], session["receipts"])
    session["receipts"] = []
    session.pop("voice", None)  # the statistics of this voice go too
    return present.deletion_markdown(counts), counts, session


# ------------------------------------------------------------------------------------------ Live voice


@functools.cache
def live_reader(predictor: Any) -> Reader:
    """Speech-only live readings through the process's predictor (one per loaded model)."""
    return speech_reader(predictor, threads=get_settings().live_threads)


def live_outputs(stream: LiveStream, update: LiveUpdate) -> tuple:
    """Widget values for the live view: headline, probabilities, timeline, JSON, the stream (gr.State)."""
    return (
        live_view.now_html(update),
        live_view.live_label(update),
        live_view.timeline_html(update),
        update.to_dict(),
        stream,
    )


def new_live_stream(request: gr.Request | None) -> LiveStream:
    check_rate(request)  # per recording, not per chunk (a chunk comes twice a second)
    config = LiveConfig.from_settings(get_settings(), model_threshold(get_predictor()))
    return LiveStream(config)


@shows_errors
def live_start(stream: LiveStream | None = None, request: gr.Request = None):
    """A new recording: a fresh live state and an empty view. A stream that this recording's first chunks have
    already opened (when this event waited in the queue) is kept; the last recording's finished one is not."""
    if stream is None or stream.finished:
        stream = new_live_stream(request)
    return live_outputs(stream, stream.update())


@shows_errors
def live_push(chunk: tuple[int, Any] | None, stream: LiveStream | None = None, request: gr.Request = None):
    """One chunk of microphone audio (rate, samples) -> the live reading; starts a stream when there is none."""
    arrived = time.perf_counter()
    if stream is None or stream.finished:
        stream = new_live_stream(request)
    if chunk is None:
        return live_outputs(stream, stream.update())
    audio = to_16k(chunk[0], chunk[1], get_settings())
    return live_outputs(stream, stream.push(audio, live_reader(get_predictor()), arrived=arrived))


@shows_errors
def live_end(stream: LiveStream | None = None, request: gr.Request = None):
    """The person stopped: close the live timeline and hand the spoken part to the full analysis (16 kHz wav)."""
    if stream is None:
        raise MediaError("Nothing was recorded; press record and speak.")
    update = stream.finish(live_reader(get_predictor()))
    utterance = stream.utterance()
    if utterance is None:
        raise MediaError("No speech was heard; record again closer to the microphone.")
    pcm = (np.clip(utterance, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (*live_outputs(stream, update), (SAMPLE_RATE, pcm))


# ------------------------------------------------------------------------------------------ Label


MEDIA_KINDS = ("audio", "image", "video")  # the crowd view's media widgets, in output order


def serve_copy(view: service.ClipView) -> str | None:
    """A short-lived private copy of a clip's media for one response (labeling.served); Gradio caches it.

    launch() blocks the media folder itself, so a stored file can be fetched only through a clip the
    queue handed to the requester, never by guessing its path."""
    if view.media_path is None:
        return None
    return str(get_served().copy(view.clip_id, view.media_path))


def show_clip(view: service.ClipView | None, annotator: str, message: str = "", on_screen: list | None = None) -> tuple:
    """Widget values for one queue item: exactly one of audio/image/video/text is visible; the note is cleared.

    on_screen: what the previous response made visible (the labeler state keeps it). When the new clip shows the
    same widgets, plain values are sent instead of gr.update: Gradio rebuilds a component and its config for
    every update, a tenth of the server's CPU under 20 annotators (py-spy), and most votes keep the same kind."""
    store = get_store()
    progress = present.progress_markdown(store.annotator_progress(annotator))
    if view is None:
        done = "Nothing left to label right now. Thank you! Come back later for more."
        labeler = {"annotator": annotator, "clip_id": None, "shown": None}
        hidden = [gr.update(value=None, visible=False) for _ in range(3)]
        return (*hidden, gr.update(value=done, visible=True), "", progress, "", "", labeler)
    path = serve_copy(view)
    text = present.clip_text_markdown(view.text) if view.text else message
    shown = [view.kind, bool(text)]
    labeler = {"annotator": annotator, "clip_id": view.clip_id, "shown": shown}
    media = [path if view.kind == kind else None for kind in MEDIA_KINDS]
    if shown != on_screen:  # visibility changes: updates
        media = [gr.update(value=value, visible=view.kind == kind) for value, kind in zip(media, MEDIA_KINDS)]
        text = gr.update(value=text, visible=bool(text))
    context = (
        "" if view.prediction is None and not view.votes else present.clip_context_markdown(view.prediction, view.votes)
    )
    return (*media, text, context, progress, view.clip_id, "", labeler)


def _annotator(labeler: dict | None) -> str:
    if not labeler or not labeler.get("annotator"):
        raise StoreError("Type your name (or sign in) and press Start first.")
    return labeler["annotator"]


@shows_errors
def next_item(
    name: str | None = None,
    key: str | None = None,
    known_keys: dict | None = None,
    labeler: dict | None = None,
    profile: gr.OAuthProfile | None = None,
    request: gr.Request = None,
):
    """Identify the annotator (HF login on Spaces, else the typed name and its key) and serve their next clip.

    A typed name's first Start issues its key, which this browser keeps (known_keys, localStorage) and the
    key box shows; later a name needs its key, unless this session already proved it."""
    annotator = service.annotator_id_for(name, profile.username if profile else None)
    check_rate(annotator, request)
    known_keys = dict(known_keys) if isinstance(known_keys, dict) else {}
    proven = (labeler or {}).get("annotator")
    key = service.identify(get_store(), annotator, key or known_keys.get(annotator), proven=proven)
    if key:
        known_keys[annotator] = key
    view = service.next_clip(get_store(), annotator, blind=get_settings().blind_labeling)
    shown = show_clip(view, annotator)
    return (*shown[:5], key or "", known_keys, *shown[5:])


@shows_errors
def vote(
    labels: list[str],
    unsure: bool = False,
    note: str | None = None,
    labeler: dict | None = None,
    clip_id: str | None = None,
    vote_key: str | None = None,
    request: gr.Request = None,
):
    """Record the annotator's vote on the clip they were handed, then serve the next one.

    Safe to retry: clip_id names the clip the vote is about (the browser sends the one on screen), so a
    retry after the first call went through never lands on the next clip; vote_key (any unique string per
    vote, e.g. a uuid4) makes the store count the vote once and a retry return the first result."""
    annotator = _annotator(labeler)
    check_rate(annotator, request)
    store = get_store()
    target = service.voted_clip(store, annotator, labeler.get("clip_id"), service.plain_text(clip_id) or None)
    store.vote(
        target,
        annotator,
        service.answer_labels(labels) or [],
        unsure=bool(unsure),
        note=service.plain_text(note) or None,
        request_id=service.plain_text(vote_key) or None,
    )
    view = service.next_clip(store, annotator, blind=get_settings().blind_labeling)
    # the browser sends the clip it shows: another one than the state's means it missed a response (and maybe its
    # visibility changes), so this one sends them all again
    shown_clip = service.plain_text(clip_id) or None
    in_sync = shown_clip is None or shown_clip == labeler.get("clip_id")
    return show_clip(view, annotator, on_screen=labeler.get("shown") if in_sync else None)


def quick_vote(label: str) -> Callable:
    """A one-emotion vote for a button (and its keyboard shortcut)."""

    def vote_for(note: str | None, labeler: dict | None, clip_id: str | None = None, request: gr.Request = None):
        return vote([label], False, note, labeler, clip_id, None, request)

    return vote_for


@shows_errors
def skip(labeler: dict | None = None, request: gr.Request = None):
    """Pass on the current clip (it is not shown to this annotator again) and serve the next one."""
    annotator = _annotator(labeler)
    check_rate(annotator, request)
    if labeler.get("clip_id"):
        get_store().skip(service.plain_text(labeler["clip_id"]), annotator)
    view = service.next_clip(get_store(), annotator, blind=get_settings().blind_labeling)
    return show_clip(view, annotator)  # skips are rare, and the browser does not say what it shows: updates


# ------------------------------------------------------------------------------------------ Model


def model_folder(settings: Settings) -> Path | None:
    """The served model's folder (registry's choice) when local or already in the Hub cache."""
    name = current_model(settings)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    try:
        return resolve_model_folder(name)
    except ModelError:
        return None


def public_agreement(report: dict[str, Any]) -> dict[str, Any]:
    """The agreement figures anyone may see: no per-annotator rows (their ids, vote counts, reliability);
    admins get those from `python -m labeling stats --agreement`."""
    return {key: value for key, value in report.items() if key != "annotators"}


def admin_retrain_log(token: str | None, request: gr.Request | None, settings: Settings) -> str:
    """The latest retraining log's tail, for an admin only: it holds tracebacks, server paths and repo ids."""
    if not token:
        return ""
    check_rate(request)  # slows down guessing the admin token
    try:
        service.require_admin(token, settings)
    except StoreError:
        return "_The retraining log is shown to admins only: that admin token is not right._"
    retrain_log = service.retrain_status(settings)
    return present.md_code_block(retrain_log) if retrain_log else ""


@shows_errors
def stats(token: str | None = None, request: gr.Request = None):
    """Model card figures, store counts, label distribution, agreement and retraining history; with the admin
    token also the retraining log."""
    settings, store = get_settings(), get_store()
    info = present.model_info(model_folder(settings), get_predictor().model_version)
    figures = store.stats()
    report = agreement_report(store)
    runs = store.training_runs()
    return (
        f"### Model {present.md_code(info.version)}",
        info.card or "_This model folder has no model card (README.md)._",
        info.metrics,
        gr.update(value=str(info.confusion) if info.confusion else None, visible=info.confusion is not None),
        present.counts_table(figures),
        present.label_distribution(figures),
        present.agreement_markdown(report),
        present.runs_table(runs),
        admin_retrain_log(token, request, settings),
        {"model_version": info.version, "stats": figures, "agreement": public_agreement(report), "training_runs": runs},
    )


@shows_errors
def annotators(token: str | None = None, request: gr.Request = None):
    """Admin: who is who (sign-in, votes, gold accuracy, weight, agreement) per annotator."""
    check_rate(request)
    service.require_admin(token, get_settings())
    return pd.DataFrame(service.annotator_overview(get_store()), columns=ANNOTATOR_COLUMNS)


@shows_errors
def export(token: str | None = None, request: gr.Request = None):
    check_rate(request)  # also slows down guessing the admin token
    settings = get_settings()
    service.require_admin(token, settings)
    out = Path(settings.data_dir) / "export"
    n = service.export_labels(get_store(), out)
    return f"Exported {n} labelled clip(s) to `{out}` (parquet + dataset card)."


@shows_errors
def retrain(token: str | None = None, request: gr.Request = None):
    check_rate(request)
    settings = get_settings()
    service.require_admin(token, settings)
    job = service.start_retraining(settings)
    return f"Retraining started (process {job.pid}); its log is `{job.log_path.name}`. Press Refresh to follow it."


@shows_errors
def delete_clip(token: str | None = None, clip_id: str | None = None, request: gr.Request = None):
    check_rate(request)
    service.require_admin(token, get_settings())
    return present.deletion_markdown(service.delete_clip(get_store(), clip_id))


@shows_errors
def delete_annotator(token: str | None = None, annotator_id: str | None = None, request: gr.Request = None):
    check_rate(request)
    service.require_admin(token, get_settings())
    return present.deletion_markdown(service.delete_annotator(get_store(), annotator_id))


# ------------------------------------------------------------------------------------------ layout

INTRO = """# Emotion studio
Record or upload your **voice**, add a **face** (webcam snapshot, photo or video) and/or type **text**,
then press **Analyze**. To pick a file instead of recording, use the upload icon under each box.
Clips of {timeline:g} s or longer also get a timeline of the emotion over time. Below the result you can tell
the model what the right answer was."""
LABEL_HELP = """Listen or look, then press the emotion you perceive. Keys (when not typing in a box): **1-7** vote,
**s** skips. Your first **Start** gives your name a key: this browser keeps it; copy it to label from elsewhere."""
ANNOTATOR_COLUMNS = [
    "annotator", "kind", "identity", "since", "votes", "gold_seen", "gold_accuracy", "weight", "consensus_agreement"
]  # fmt: skip
BLIND_NOTE = " You will not see the model's answer or other people's votes while labelling."
ADMIN_HELP = "Admins: paste the admin token (EMO_ADMIN_TOKEN) to export labels, start retraining or delete data."


class UploadedImage(gr.Image):
    """gr.Image for image_mode=None uploads, which Gradio hands over untouched (no decode, no RGB copy written under
    a content-named cache path), so backend.media.load_image checks the pixel count from the header before any
    decode; a header over PIL's own bomb limit gets the same clear refusal instead of Gradio's bare error."""

    is_template = True  # the browser side is gr.Image's (no __init__ here: Gradio reads props from its signature)

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except PIL.Image.DecompressionBombError:
            raise gr.Error(MSG_IMAGE_BOMB.format(limit=get_settings().max_image_pixels)) from None


class ClipAudio(gr.Audio):
    """gr.Audio for the Label tab: a served copy (labeling.served) is already browser-playable, so it goes out
    as is, without the ffprobe subprocess gr.Audio runs on every file path it returns."""

    is_template = True  # the browser side is gr.Audio's

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, (str, Path)) and get_served().owns(value):
            return FileData(path=str(value), orig_name=Path(value).name)
        return super().postprocess(value)


class ClipVideo(gr.Video):
    """gr.Video for the Label tab: a served copy is already playable (converted once per clip if it had to be),
    so it skips gr.Video's per-response ffprobe (and conversion)."""

    is_template = True  # the browser side is gr.Video's

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, (str, Path)) and get_served().owns(value):
            return FileData(path=str(value), orig_name=Path(value).name)
        return super().postprocess(value)


def keyboard_js() -> str:
    """Keys 1-7 press the emotion buttons and s presses Skip, unless typing in a field."""
    keys = {str(i + 1): f"vote-{name}" for i, name in enumerate(LABELS)} | {"s": "skip-btn"}
    return (
        "() => { const keys = " + json.dumps(keys) + ";"
        "document.addEventListener('keydown', (e) => {"
        " const t = e.target; if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;"
        " if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;"
        " const id = keys[e.key.toLowerCase()]; if (!id) return;"
        " const b = document.getElementById(id);"
        " if (b && b.offsetParent !== null && !b.disabled) { e.preventDefault(); b.click(); } }); }"
    )


LIVE_HELP = """**Live voice:** press record and speak; the emotion updates while you talk (speech only, every
{hop:g} s over the last {window:g} s; "not sure" when the top emotion is under the model's confidence threshold).
Stop, and the whole utterance gets the full analysis below."""


def build_live_view() -> dict[str, Any]:
    """The live-voice widgets (inside the Analyze tab's input column)."""
    settings = get_settings()
    with gr.Accordion("Live voice: emotion while you speak", open=True, elem_id="live-voice"):
        gr.Markdown(LIVE_HELP.format(hop=settings.live_hop_seconds, window=settings.live_window_seconds))
        widgets = {
            "mic": gr.Audio(
                sources=["microphone"], type="numpy", streaming=True, label="Live microphone", elem_id="live-in"
            ),
            "now": gr.HTML(elem_id="live-now"),
            "probs": gr.Label(num_top_classes=3, label="Live reading: top probabilities", elem_id="live-label"),
            "timeline": gr.HTML(elem_id="live-timeline"),
            "json": gr.JSON(visible=False),
            "state": gr.State(None, time_to_live=SESSION_TTL_S),
            "api_in": gr.Audio(type="numpy", visible=False),  # /live_push: one chunk per call
        }
    return widgets


def wire_live_view(live: dict[str, Any], analyze: tuple[list, list]) -> None:
    """Streaming events; on stop the utterance goes into the Voice box and through the usual `predict`."""
    settings = get_settings()
    shown = [live["now"], live["probs"], live["timeline"], live["json"], live["state"]]
    pool = {"concurrency_id": "live", "concurrency_limit": settings.live_streams}
    live["mic"].start_recording(live_start, [live["state"]], shown, api_name="live_start", **pool)
    live["mic"].stream(
        live_push,
        [live["mic"], live["state"]],
        shown,
        stream_every=settings.live_chunk_seconds,
        time_limit=int(settings.live_max_seconds),
        api_name="live_stream",
        api_visibility="private",
        **pool,
    )
    live["api_in"].change(live_push, [live["api_in"], live["state"]], shown, api_name="live_push", **pool)
    audio = analyze[0][0]
    live["mic"].stop_recording(live_end, [live["state"]], [*shown, audio], api_name="live_end").success(
        predict, *analyze, api_name="live_predict", api_visibility="private"
    )


def build_analyze_tab() -> None:
    session = gr.State(None, time_to_live=SESSION_TTL_S)
    gr.Markdown(INTRO.format(timeline=get_settings().timeline_min_seconds))
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            audio = gr.Audio(
                sources=["microphone", "upload"], type="filepath", label="Voice: record or upload", elem_id="audio-in"
            )
            live = build_live_view()
            with gr.Row():
                image = UploadedImage(
                    sources=["webcam", "upload", "clipboard"],
                    type="filepath",
                    image_mode=None,  # the upload as is: load_image checks its size before any decode
                    label="Face: webcam snapshot or photo",
                    elem_id="image-in",
                )
                video = gr.Video(
                    sources=["upload", "webcam"],
                    label="Face: video file or webcam",
                    include_audio=True,
                    elem_id="video-in",
                )
            text = gr.Textbox(label="Text (optional)", lines=2, placeholder="What was said or written")
            analyze = gr.Button("Analyze", variant="primary", elem_id="analyze-btn")
        with gr.Column(scale=1):
            emotion = gr.Label(num_top_classes=4, label="Emotion", elem_id="emotion-label")
            summary = gr.Markdown(elem_id="summary")
            breakdown = gr.Dataframe(
                headers=present.BREAKDOWN_COLUMNS,
                label="Which input said what (weight = its share in the result)",
                interactive=False,
            )
            words = gr.HighlightedText(
                label="Words (emotion words highlighted)", color_map=present.EMOTION_COLORS, show_legend=True
            )
            faces = gr.Image(label="Faces found", type="numpy", format="png", interactive=False, visible=False)
            timeline = gr.LinePlot(
                x="time",
                y="probability",
                color="emotion",
                color_map=present.EMOTION_COLORS,
                x_title="time (s)",
                y_lim=[0, 1],
                label="Emotion over time",
                visible=False,
            )
            details = gr.JSON(label="Full result", visible=False)
    with gr.Group(elem_id="correction"):
        gr.Markdown("### Is this right? Tell the model the right emotion")
        answer = gr.CheckboxGroup(
            [*LABELS, service.UNSURE], label="The right emotion (one or more, or unsure)", elem_id="answer"
        )
        note = gr.Textbox(label="Note (optional)", lines=1)
        consent = gr.Checkbox(
            False,
            elem_id="consent",
            label="Keep my recording / photo / text for training the model (optional). "
            "Without this tick only the prediction and your answer are kept, never the media.",
        )
        with gr.Row():
            save = gr.Button("Save my answer", variant="primary", elem_id="save-btn")
            delete = gr.Button("Delete all I gave this session", variant="secondary", elem_id="delete-btn")
        stored = gr.Markdown(elem_id="stored")
        receipt = gr.JSON(visible=False)
    outputs = [emotion, summary, breakdown, words, faces, timeline, details, session, answer, stored]
    # long clips run in steps and leave the usual workers to short requests (LONG_JOBS_AT_ONCE more workers)
    workers = get_settings().concurrency + LONG_JOBS_AT_ONCE
    analyze.click(predict, [audio, video, image, text, session], outputs, api_name="predict", concurrency_limit=workers)
    save.click(correct, [answer, note, consent, session], [stored, receipt, session], api_name="correct")
    delete.click(delete_my_data, [session], [stored, receipt, session], api_name="delete_my_data")
    wire_live_view(live, analyze=([audio, video, image, text, session], outputs))


def build_label_tab(settings: Settings) -> None:
    labeler = gr.State(None, time_to_live=SESSION_TTL_S)
    known_keys = gr.BrowserState({}, storage_key=KEYS_STORAGE, secret=KEYS_STORAGE)  # readable in the page anyway
    gr.Markdown(LABEL_HELP + (BLIND_NOTE if settings.blind_labeling else ""))
    if HF_LOGIN:
        gr.LoginButton()
    with gr.Row():
        name = gr.Textbox(label="Your name" + (" (or sign in above)" if HF_LOGIN else ""), scale=2, elem_id="name")
        key = gr.Textbox(
            label="Your annotator key (kept by this browser)", type="password", scale=2, elem_id="annotator-key"
        )
        start = gr.Button("Start / next clip", variant="primary", scale=1, elem_id="start-btn")
    progress = gr.Markdown(elem_id="progress")
    clip_audio = ClipAudio(type="filepath", interactive=False, visible=False, label="Clip", elem_id="clip-audio")
    clip_image = gr.Image(type="filepath", interactive=False, visible=False, label="Clip")
    clip_video = ClipVideo(interactive=False, visible=False, label="Clip")
    clip_text = gr.Markdown(visible=False, elem_id="clip-text")
    context = gr.Markdown(elem_id="context")
    clip_id = gr.Textbox(visible=False)
    vote_key = gr.Textbox(visible=False)  # API clients: an idempotency key per vote (the README's "Voting")
    with gr.Row():
        buttons = {name: gr.Button(f"{i + 1} {name}", elem_id=f"vote-{name}") for i, name in enumerate(LABELS)}
    with gr.Row():
        note = gr.Textbox(label="Note (optional)", scale=3, elem_id="label-note")
        skip_btn = gr.Button("s Skip", elem_id="skip-btn", scale=1)
    with gr.Accordion("More than one emotion, or not sure?", open=False):
        several = gr.CheckboxGroup(list(LABELS), label="Emotions")
        unsure = gr.Checkbox(False, label="I'm not sure")
        submit = gr.Button("Submit vote", elem_id="submit-vote")
    with gr.Accordion("Admin: who is who", open=False):
        admin_token = gr.Textbox(label="Admin token (to see who is who)", type="password")
        show_annotators = gr.Button("Show annotators", elem_id="show-annotators")
        annotator_table = gr.Dataframe(headers=ANNOTATOR_COLUMNS, interactive=False, elem_id="annotators")
    shown = [clip_audio, clip_image, clip_video, clip_text, context, progress, clip_id, note, labeler]
    started = [*shown[:5], key, known_keys, *shown[5:]]  # the API's last two stay clip id and note
    # labelling events share their own worker pool, so a backlog of predictions never slows a vote
    # (bench/serve.py: votes stay at ~0.3 s while 32 clients queue predictions)
    crowd = {"concurrency_id": "crowd", "concurrency_limit": LABEL_CONCURRENCY}
    who = [name, key, known_keys, labeler]
    start.click(next_item, who, started, api_name="next_item", **crowd)
    name.submit(next_item, who, started, api_name="next_item_enter", api_visibility="private", **crowd)
    submit.click(vote, [several, unsure, note, labeler, clip_id, vote_key], shown, api_name="vote", **crowd)
    skip_btn.click(skip, [labeler], shown, api_name="skip", **crowd)
    for label, button in buttons.items():
        button.click(
            quick_vote(label),
            [note, labeler, clip_id],
            shown,
            api_name=f"vote_{label}",
            api_visibility="private",
            **crowd,
        )
    show_annotators.click(annotators, [admin_token], annotator_table, api_name="annotators")


def build_model_tab(settings: Settings) -> gr.Tab:
    with gr.Tab("Model", id="model") as tab:
        with gr.Row():
            version = gr.Markdown()
            refresh = gr.Button("Refresh", scale=0, elem_id="refresh-btn")
        with gr.Row():
            metrics = gr.Dataframe(label="Dev-set metrics (training_summary.json)", interactive=False)
            confusion = gr.Image(label="Confusion matrix", visible=False, interactive=False)
        with gr.Accordion("Model card", open=False):
            card = gr.Markdown()
        with gr.Row():
            counts = gr.Dataframe(label="Corrections and votes", interactive=False)
            distribution = gr.BarPlot(
                x="emotion",
                y="votes",
                color="emotion",
                color_map=present.EMOTION_COLORS,
                sort=list(LABELS),
                label="Label distribution (all votes and corrections)",
            )
        agreement = gr.Markdown()
        runs = gr.Dataframe(
            label="Retraining history: each promotion decision with its test, the held-out gain and its confidence "
            "interval, McNemar p, the dev-set non-inferiority checks (Holm) and ECE before/after recalibration",
            interactive=False,
            wrap=True,
        )
        retrain_log = gr.Markdown()
        figures = gr.JSON(visible=False)
        with gr.Accordion("Admin", open=False):
            gr.Markdown(ADMIN_HELP)
            token = gr.Textbox(label="Admin token", type="password")
            with gr.Row():
                export_btn = gr.Button("Export labels")
                retrain_btn = gr.Button("Start retraining")
            with gr.Row():
                clip_box = gr.Textbox(label="Clip id to delete", scale=3)
                del_clip = gr.Button("Delete clip", variant="stop", scale=1)
            with gr.Row():
                annotator_box = gr.Textbox(
                    label="Annotator id to delete (name:<name>, hf:<user> or session:<id>)", scale=3
                )
                del_annotator = gr.Button("Delete annotator", variant="stop", scale=1)
            admin_out = gr.Markdown()
    shown = [version, card, metrics, confusion, counts, distribution, agreement, runs, retrain_log, figures]
    refresh.click(stats, [token], shown, api_name="stats")
    tab.select(stats, [token], shown, api_name="stats_on_open", api_visibility="private")
    export_btn.click(export, [token], admin_out, api_name="export")
    retrain_btn.click(retrain, [token], admin_out, api_name="retrain")
    del_clip.click(delete_clip, [token, clip_box], admin_out, api_name="delete_clip")
    del_annotator.click(delete_annotator, [token, annotator_box], admin_out, api_name="delete_annotator")
    return tab


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    """The whole app; cheap to build (no model load, no store access until an event runs)."""
    settings = settings or get_settings()
    with gr.Blocks(title="Emotion studio", delete_cache=(CACHE_TTL_S, CACHE_TTL_S)) as demo, gr.Tabs():
        with gr.Tab("Analyze", id="analyze"):
            build_analyze_tab()
        with gr.Tab("Label", id="label"):
            build_label_tab(settings)
        build_model_tab(settings)
    return demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)


def launch_options(settings: Settings) -> dict[str, Any]:
    """launch() arguments shared by __main__ and the end-to-end tests."""
    return {
        "max_file_size": int(settings.max_upload_mb * MB),
        "blocked_paths": [str(settings.media_dir)],  # clips go out only as serve_copy() links, never by path
        "js": keyboard_js(),
    }


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    started = time.perf_counter()
    in_prediction_worker(get_predictor)  # load once, before the first request (ZeroGPU needs it at startup)
    get_store().sweep_orphans()  # files a crash left without a row (or a row without its file deletion)
    log.info("model loaded in %.1f s", time.perf_counter() - started)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if ON_SPACES else "127.0.0.1"),
        **launch_options(get_settings()),
    )
