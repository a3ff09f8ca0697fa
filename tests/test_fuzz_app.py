"""Fuzzing the app: the service's string fields and the running server (gradio_client) with nasty inputs.

Every call must either succeed or be refused with a clear message (gr.Error -> AppError); the server
must keep answering; a flood degrades to 'busy, try again' (rate limit or full queue) without losing an
acknowledged vote. EMO_FUZZ=long raises the budgets (bench/fuzz.py drives the long run).
"""

from __future__ import annotations

import concurrent.futures as futures
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hypothesis import given
from hypothesis import strategies as st

from backend.labels import LABELS
from backend.media import encode_wav
from backend.ratelimit import RateLimiter
from backend.settings import load_settings
from labeling import service
from labeling.errors import StoreError
from labeling.store import Store
from tests.app_support import ADMIN_TOKEN, free_port, launched, studio  # noqa: F401  (module fixture)
from tests.fuzz_support import SCALE, TEXTS, budget
from tests.nasty_files import TWO_GB, build_corpus, is_clear, nasty_texts, tone

CALL_LIMIT_S = 60.0  # no single request may take longer (the real model on a CPU)


def refused_clearly(error: Exception) -> None:
    message = getattr(error, "message", None) or str(error)  # gr.Error's str() adds quotes
    assert is_clear(message), f"unclear refusal: {error!r}"


# ------------------------------------------------------------------------------------------ service fields


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-store")
    with Store.open(root / "studio.db", root / "media", k=3, gold_rate=0.0) as opened:
        yield opened


def contribution(text: str | None) -> service.Contribution:
    audio = tone(0.5)[:, 0]
    data = encode_wav(audio)
    probs = {label: 1.0 / len(LABELS) for label in LABELS}
    return service.Contribution(
        sha256=service.sha256_bytes(data),
        ext=".wav",
        modalities=["speech"],
        duration=0.5,
        probs=probs,
        model_version="fuzz",
        text=text,
        media=data,
    )


@budget(80)
@given(name=TEXTS, note=TEXTS, text=TEXTS, choices=st.lists(st.one_of(TEXTS, st.sampled_from(LABELS)), max_size=3))
def test_service_string_fields_are_stored_verbatim_or_refused(store, name, note, text, choices):
    try:
        annotator = service.annotator_id_for(name)
        receipt = service.record_correction(store, contribution(text), annotator, choices, note=note, consent=True)
    except StoreError as error:
        refused_clearly(error)
        return
    vote = [v for v in store.votes(receipt.clip_id) if v["annotator_id"] == annotator]
    if receipt.vote_id is not None:
        assert vote and vote[0]["note"] == receipt.note  # parameters, never SQL text: stored as given
    assert store.get_annotator(annotator)["id"] == annotator
    path = store.media_path(receipt.clip_id)
    assert path.is_relative_to(store.media_dir.resolve()) and path.name == f"{receipt.clip_id}.wav"


@budget(60)
@given(clip_id=TEXTS, annotator=TEXTS)
def test_ids_from_the_outside_never_reach_a_path_or_sql(store, clip_id, annotator):
    clean_clip, clean_annotator = service.plain_text(clip_id), service.plain_text(annotator) or "x"
    for action in (  # what the app does with ids and notes typed into it
        lambda: service.delete_clip(store, clip_id),
        lambda: service.delete_annotator(store, annotator),
        lambda: store.media_path(clean_clip),
        lambda: store.vote(clean_clip, clean_annotator, service.answer_labels(["sad"]), note=clean_annotator),
        lambda: store.skip(clean_clip, clean_annotator),
        lambda: service.next_clip(store, service.annotator_id_for(annotator or "x")),
    ):
        try:
            action()
        except StoreError as error:
            refused_clearly(error)
    assert store.stats()["clips"] >= 0  # the schema is still there


# ------------------------------------------------------------------------------------------ the running app


@pytest.fixture(scope="module")
def server(studio):  # noqa: F811
    with launched(studio) as url:
        yield url


@pytest.fixture
def generous(studio, monkeypatch):  # noqa: F811
    """No rate limit in the way of the fuzz calls (one client makes many)."""
    monkeypatch.setattr(studio, "get_limiter", lambda: RateLimiter(0))
    monkeypatch.setattr(studio, "get_ip_limiter", lambda: RateLimiter(0))


def call(client: Client, **kwargs) -> str:
    """'ok' or 'refused' (with a clear message); anything else fails the test. Checks the time taken."""
    started = time.perf_counter()
    try:
        client.predict(**kwargs)
        outcome = "ok"
    except AppError as error:
        if "is not in the list of choices" in str(error):  # Gradio's own check of a forged API value
            return "refused"
        refused_clearly(error)
        outcome = "refused"
    assert time.perf_counter() - started < CALL_LIMIT_S, kwargs.get("api_name")
    return outcome


@pytest.mark.slow
def test_nasty_files_through_the_app(server, generous, tmp_path):
    client = Client(server, verbose=False)
    outcomes = {}
    corpus = [n for n in build_corpus(tmp_path) if n.path.stat().st_size < 64 * 1024**2]  # 2 GB: next test
    for nasty in corpus:
        field = {"audio": "audio", "image": "image", "video": "video"}[nasty.kind]
        outcomes[nasty.name] = call(client, **{field: handle_file(str(nasty.path))}, api_name="/predict")
        if nasty.expect == "refused":
            assert outcomes[nasty.name] == "refused", nasty.name
    assert outcomes["good.wav"] == "ok" and outcomes["twenty-faces.png"] == "ok"
    assert outcomes["one-hour.wav"] == "refused" and outcomes["10000x10000.png"] == "refused"
    assert call(client, text="still answering", api_name="/predict") == "ok"


@pytest.mark.slow
def test_a_2gb_upload_is_cut_off_at_the_size_limit(server, studio):  # noqa: F811
    limit = int(studio.get_settings().max_upload_mb * 1024**2)
    sent = 0

    def body():
        nonlocal sent
        yield b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.wav"\r\n\r\n'
        block = bytes(1 << 20)
        while sent < TWO_GB:
            sent += len(block)
            yield block
        yield b"\r\n--B--\r\n"

    started = time.perf_counter()
    headers = {"content-type": "multipart/form-data; boundary=B"}
    try:
        response = httpx.post(f"{server}gradio_api/upload", content=body(), headers=headers, timeout=60)
        status, text = response.status_code, response.text
    except httpx.HTTPError as error:  # the server may close the connection mid-upload
        status, text = 0, str(error)
    took = time.perf_counter() - started
    assert status in (0, 413), (status, text[:200])  # refused (Gradio drains the rest of the body unread)
    assert took < 60
    from gradio.utils import get_upload_folder

    kept = [p for p in Path(get_upload_folder()).rglob("*") if p.is_file() and p.stat().st_size > limit]
    assert not kept, "a file over the limit was kept"
    assert Client(server, verbose=False).predict(text="ok after a big upload", api_name="/predict")


def handler_level(app, text: str) -> None:
    """Strings JSON clients cannot encode (lone surrogates) go straight to the handlers instead."""
    import gradio as gr

    for action in (
        lambda: app.predict(text=text),
        lambda: app.next_item(text),
        lambda: app.vote(["sad"], False, text, {"annotator": "name:x", "clip_id": text}),
        lambda: app.delete_clip(text, text),
        lambda: app.delete_annotator(ADMIN_TOKEN, text),
        lambda: app.export(text),
    ):
        try:
            action()
        except gr.Error as error:
            refused_clearly(error)


@pytest.mark.slow
def test_nasty_strings_in_every_field_through_the_app(server, studio, generous):  # noqa: F811
    client = Client(server, verbose=False)
    texts = nasty_texts()
    for text in texts:
        if text.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") != text:  # the client cannot send it
            handler_level(studio, text)
            continue
        call(client, text=text, api_name="/predict")
        call(client, choices=["sad"], note=text, consent=True, api_name="/correct")
        call(client, name=text, api_name="/next_item")
        call(client, labels=["sad", text], unsure=False, note=text, api_name="/vote")
        call(client, token=text, clip_id=text, api_name="/delete_clip")
        call(client, token=text, annotator_id=text, api_name="/delete_annotator")
        call(client, token=text, api_name="/export")
    assert call(client, text="I am happy", api_name="/predict") == "ok"


@pytest.mark.slow
def test_random_text_through_the_app(server, generous):
    client = Client(server, verbose=False)
    rng = np.random.default_rng(7)
    alphabet = [chr(c) for c in (*range(0, 0x80), 0x202E, 0x200D, 0xFEFF, 0x1F621, 0x05D0, 0x0627)]
    for _ in range(20 * SCALE):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 200))))
        call(client, text=text, api_name="/predict")
        call(client, choices=[str(rng.choice([*LABELS, "unsure", text]))], note=text, api_name="/correct")


# ------------------------------------------------------------------------------------------ floods


@pytest.mark.slow
def test_rate_limit_says_busy_and_the_next_window_works(server, studio, monkeypatch):  # noqa: F811
    clock = {"now": 0.0}
    monkeypatch.setattr(studio, "get_limiter", lambda limiter=RateLimiter(3, clock=lambda: clock["now"]): limiter)
    client = Client(server, verbose=False)
    answers = [call(client, name="flooder", api_name="/next_item") for _ in range(3)]
    assert answers == ["ok"] * 3
    with pytest.raises(AppError, match=r"Too many requests.*try again"):
        client.predict(name="flooder", api_name="/next_item")
    other = Client(server, verbose=False)
    assert call(other, name="someone else", api_name="/next_item") == "ok"  # per annotator, not global
    clock["now"] += 20.0  # one token back after 60/3 s
    assert call(client, name="flooder", api_name="/next_item") == "ok"


@pytest.mark.slow
def test_new_sessions_from_one_address_share_its_limit(server, studio, monkeypatch):  # noqa: F811
    """Opening a fresh session (and name) per request does not get around the limit: the address has one too."""
    clock = {"now": 0.0}
    limiter = RateLimiter(3, clock=lambda: clock["now"], message=studio.MSG_BUSY_NETWORK)
    monkeypatch.setattr(studio, "get_ip_limiter", lambda: limiter)
    answers = [call(Client(server, verbose=False), name=f"fresh-{i}", api_name="/next_item") for i in range(3)]
    assert answers == ["ok"] * 3
    with pytest.raises(AppError, match=r"Too many requests from your network.*try again"):
        Client(server, verbose=False).predict(name="fresh-3", api_name="/next_item")
    clock["now"] += 20.0
    assert call(Client(server, verbose=False), name="fresh-4", api_name="/next_item") == "ok"


def test_client_address_on_spaces_is_the_proxy_appended_hop(studio, monkeypatch):  # noqa: F811
    request = SimpleNamespace(
        headers={"x-forwarded-for": "6.6.6.6, 203.0.113.9"}, client=SimpleNamespace(host="10.0.0.2")
    )
    assert studio.client_ip(request) == "10.0.0.2"  # not on Spaces: the socket peer; the header is ignored
    monkeypatch.setattr(studio, "ON_SPACES", True)
    assert studio.client_ip(request) == "203.0.113.9"  # the hop the platform's proxy added, not the forgeable first
    request.headers = {}
    assert studio.client_ip(request) == "10.0.0.2"
    assert studio.client_ip(None) is None


@pytest.mark.slow
def test_a_flood_of_votes_is_busy_or_stored_never_lost(studio, tmp_path):  # noqa: F811
    """A tiny queue (2 places, 1 worker) and 24 simultaneous voters: each vote is acknowledged and in
    SQLite, or refused with 'busy, try again'; none is acknowledged and missing, and the server lives."""
    settings = load_settings(queue_size=2, concurrency=1)
    demo = studio.build_demo(settings)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        store = studio.get_store()
        for i in range(8):  # open clips for everyone (3 votes wanted per clip)
            data = encode_wav(tone(0.7, freq=300.0 + 10 * i)[:, 0])
            store.add_clip(data, ext=".wav", modalities=["speech"], duration=0.7, consent=True)
        voters = [f"flood-{i}" for i in range(24)]

        def one(name: str) -> tuple[str, str]:
            client = Client(url, verbose=False)
            try:
                client.predict(name=name, api_name="/next_item")
                client.predict(labels=["happy"], unsure=False, note=name, api_name="/vote")
                return name, "acked"
            except Exception as error:  # QueueError ('Queue is full! Please try again.') or a clear AppError
                text = str(error)
                assert is_clear(text), text
                return name, "busy" if "try again" in text.lower() else "refused"

        with futures.ThreadPoolExecutor(24) as pool:
            results = dict(pool.map(one, voters))
        with sqlite3.connect(studio.get_settings().database) as conn:
            stored = {row[0] for row in conn.execute("SELECT annotator_id FROM votes WHERE note LIKE 'flood-%'")}
        acked = {f"name:{n}" for n, r in results.items() if r == "acked"}
        assert acked <= stored, f"acknowledged but missing: {acked - stored}"
        assert "busy" in results.values() or len(acked) == len(voters), results
        assert Client(url, verbose=False).predict(api_name="/stats")
    finally:
        demo.close()


def test_token_bucket_refills_evicts_and_can_be_off():
    clock = {"now": 100.0}
    limiter = RateLimiter(2, max_keys=3, clock=lambda: clock["now"])
    assert limiter.try_acquire("a") == 0.0 and limiter.try_acquire("a") == 0.0
    assert limiter.try_acquire("a") == pytest.approx(30.0)  # 2 per minute: one token every 30 s
    clock["now"] += 30.0
    assert limiter.try_acquire("a") == 0.0
    for key in ("b", "c", "d", "e"):  # the table never grows past max_keys
        limiter.try_acquire(key)
    assert len(limiter) <= 3
    off = RateLimiter(0)
    assert all(off.try_acquire("x") == 0.0 for _ in range(1000))
