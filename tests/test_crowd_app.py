"""Crowd-grade, through the running app (issue 17): what a load test, hostile input and a browser found.

The real server runs in this process over a temporary store (tests/app_support.py); clients are
gradio_client sessions and Debian's headless Chromium, as a person or an API client meets the app.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import stat
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from backend.labels import LABELS
from backend.ratelimit import RateLimiter
from tests.app_support import ADMIN_TOKEN, launched, seed_tone, studio  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
CONCURRENT = 12
RETRAIN_SECRET = "Traceback: /srv/secret/server/path repo_id=acme/private-model"
# Every payload is at most 60 characters (the longest name allowed) and marks what it would create with
# an id starting "xss" or a global window.__xss, so the test can tell whether any of them came alive.
PAYLOADS = [
    '<img src=x id=xss1 onerror="window.__xss=1">',
    '<svg id=xss2 onload="window.__xss=2"></svg>',
    '<a id=xss3 href="javascript:window.__xss=3">x</a>',
    "[xss4](javascript:window.__xss=4)",
    '<iframe id=xss5 srcdoc="<b id=xss5b>x</b>"></iframe>',
    "`</code><img src=x id=xss6 onerror=window.__xss=6>`",
    '<details open id=xss7 ontoggle="window.__xss=7">',
    "**xss8** _x_ # <b id=xss8>bold</b>",
]
ALIVE_JS = """() => ({
    elements: [...document.querySelectorAll('[id^=xss]')].map(e => e.outerHTML),
    links: [...document.querySelectorAll('a[href^="javascript"]')].map(e => e.outerHTML),
    flag: window.__xss === undefined ? null : String(window.__xss),
})"""


@pytest.fixture(scope="module")
def server(studio):  # noqa: F811
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(studio, "get_limiter", lambda: RateLimiter(0))
        with launched(studio) as url:
            yield url


def start(client: Client, name: str, key: str = "") -> tuple[str, str]:
    """(annotator key, clip id) after pressing Start as `name`."""
    *_, key_out, _keys, _progress, clip_id, _note = client.predict(name=name, key=key, api_name="/next_item")
    return key_out, clip_id


def votes_of(studio, annotator: str) -> list[tuple[str, str]]:  # noqa: F811
    rows = studio.get_store().db.query("SELECT clip_id, labels FROM votes WHERE annotator_id = ?", [annotator])
    return [(r["clip_id"], r["labels"]) for r in rows]


# ---- 1. a vote stored but reported failed: retries are safe --------------------------------------------


def test_a_retried_vote_with_its_key_returns_the_first_result(server, studio):  # noqa: F811
    for freq in (301.0, 302.0):
        seed_tone(studio, freq)
    client = Client(server, verbose=False)
    _, clip_a = start(client, "retrier")
    ask = {"labels": ["sad"], "unsure": False, "note": "", "clip_id": clip_a, "vote_key": "retrier-vote-1"}
    first = client.predict(**ask, api_name="/vote")
    retry = client.predict(**ask, api_name="/vote")  # the first answer never reached the client
    assert first[-2] and first[-2] != clip_a  # the next clip was handed out
    assert retry[-2] == first[-2] and retry[5] == first[5]  # the same answer again: same next clip, same progress
    assert votes_of(studio, "name:retrier") == [(clip_a, '["sad"]')]  # counted once, on the clip voted on
    row = studio.get_store().db.query("SELECT clip_id FROM vote_requests WHERE request_id = 'retrier-vote-1'")
    assert [r["clip_id"] for r in row] == [clip_a]


def test_a_retry_without_a_key_still_lands_on_its_own_clip(server, studio):  # noqa: F811
    for freq in (303.0, 304.0):
        seed_tone(studio, freq)
    client = Client(server, verbose=False)
    _, clip_a = start(client, "keyless")
    ask = {"labels": ["angry"], "unsure": False, "note": "", "clip_id": clip_a}
    client.predict(**ask, api_name="/vote")
    client.predict(**ask, api_name="/vote")
    assert votes_of(studio, "name:keyless") == [(clip_a, '["angry"]')]
    stranger = seed_tone(studio, 305.0)
    with pytest.raises(AppError, match="not handed to you"):
        client.predict(labels=["sad"], unsure=False, note="", clip_id=stranger, api_name="/vote")


@pytest.mark.parametrize("per_call_tls", [True, False])
def test_the_load_benchs_clients_vote_without_building_a_tls_context_per_call(server, studio, per_call_tls):  # noqa: F811
    """bench/serve.py's annotators: gradio_client alone builds a TLS context per HTTP call (~40 ms of CPU each on a
    2-core box, four per vote), which made the vote bench time its own clients; the bench's client shares one."""
    import ssl

    from bench.serve import _tls_context
    from bench.serve import client as bench_client

    _tls_context()  # built once per process, before counting
    for freq in (306.0, 307.0):
        seed_tone(studio, freq)
    built = []
    real = ssl.create_default_context
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssl, "create_default_context", lambda *a, **k: built.append(1) or real(*a, **k))
        session = bench_client(server, per_call_tls)
        _, clip = start(session, f"bench-tls-{per_call_tls}")
        session.predict(labels=["happy"], unsure=False, note="", clip_id=clip, api_name="/vote")
    assert votes_of(studio, f"name:bench-tls-{per_call_tls}") == [(clip, '["happy"]')]
    assert (len(built) >= 3) if per_call_tls else (built == [])


# ---- 2. anyone can be anyone: names need their key -----------------------------------------------------


def test_typing_someone_elses_name_is_refused_without_their_key(server, studio):  # noqa: F811
    seed_tone(studio, 311.0)
    alice = Client(server, verbose=False)
    key, clip = start(alice, "alice-17")
    assert len(key) >= 20
    alice.predict(labels=["happy"], unsure=False, note="", clip_id=clip, api_name="/vote")
    start(alice, "alice-17")  # the same session goes on without pasting the key
    mallory = Client(server, verbose=False)
    for guess in ("", "alice", key[:-1]):
        with pytest.raises(AppError, match="already belongs"):
            start(mallory, "alice-17", guess)
    assert votes_of(studio, "name:alice-17") == [(clip, '["happy"]')]
    elsewhere = Client(server, verbose=False)  # alice on another device, with her key
    assert start(elsewhere, "alice-17", key)[0] == key


def test_the_admin_sees_who_is_who(server, studio):  # noqa: F811
    start(Client(server, verbose=False), "listed-17")
    with pytest.raises(AppError, match="admin token is not right"):
        Client(server, verbose=False).predict("nope", api_name="/annotators")
    table = Client(server, verbose=False).predict(ADMIN_TOKEN, api_name="/annotators")
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    assert rows["name:listed-17"]["identity"] == "name + key" and rows["name:listed-17"]["weight"] == 0.0


# ---- 5. leaks --------------------------------------------------------------------------------------


def test_the_retraining_log_is_for_admins_only(server, studio):  # noqa: F811
    folder = Path(studio.get_settings().data_dir) / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "20991231-235959.log").write_text(f"step 1\n{RETRAIN_SECRET}\n")
    client = Client(server, verbose=False)
    assert RETRAIN_SECRET not in json.dumps(client.predict(api_name="/stats"))
    assert RETRAIN_SECRET not in json.dumps(client.predict("wrong-token", api_name="/stats"))
    assert RETRAIN_SECRET in json.dumps(client.predict(ADMIN_TOKEN, api_name="/stats"))


def test_served_copies_are_private_and_go_with_the_clip(server, studio):  # noqa: F811
    clip = seed_tone(studio, 321.0)
    client = Client(server, verbose=False, download_files=False)
    answer = None
    for _ in range(40):  # walk this annotator's queue until the clip comes up
        answer = client.predict(name="viewer-17", api_name="/next_item")
        if answer[-2] in (clip, ""):
            break
        client.predict(api_name="/skip")
    assert answer[-2] == clip
    url = answer[0]["value"]["url"]
    stored = studio.get_store().media_path(clip)
    served = studio.get_served()
    assert stat.S_IMODE(served.folder.stat().st_mode) == 0o700 and served.folder.name != "emo-studio-serve"
    copies = list(served.folder.iterdir())
    assert copies and all(p.stat().st_ino != stored.stat().st_ino for p in copies)
    assert stored.stat().st_nlink == 1  # a copy, not a hard link
    data = stored.read_bytes()
    assert httpx.get(url, timeout=30).content == data
    Client(server, verbose=False).predict(ADMIN_TOKEN, clip, api_name="/delete_clip")
    assert not stored.exists() and not [p for p in served.folder.iterdir() if p.read_bytes() == data]
    assert not Path(url.split("file=", 1)[1]).exists()  # Gradio's cached copy went too
    assert httpx.get(url, timeout=30).status_code in (403, 404)


# ---- 4. image uploads: limits before any decode, identical uploads at once --------------------------


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """12000x12000 greyscale, ~140 KB on disk, 144 Mpx (the limit is 40 Mpx)."""
    path = tmp_path_factory.mktemp("img") / "huge.png"
    Image.new("L", (12_000, 12_000), 128).save(path, compress_level=9)
    return path


@pytest.fixture
def seen_images(studio, monkeypatch):  # noqa: F811
    """sha256 of the file each analysis was handed as its image, taken as the handler starts."""
    seen: list[str] = []
    real = studio.load_sample

    def spy(*args, image=None, **kwargs):
        if image:
            seen.append(hashlib.sha256(Path(image).read_bytes()).hexdigest())
        return real(*args, image=image, **kwargs)

    monkeypatch.setattr(studio, "load_sample", spy)
    return seen


def analyze_at_once(server: str, path: Path, text: str | None = None) -> list[object]:
    def one(_: int) -> object:
        for attempt in range(2):  # a saturated 2-core box can drop a connection while 12 clients start: retry once
            try:
                return Client(server, verbose=False).predict(
                    image=handle_file(str(path)), text=text, api_name="/predict"
                )
            except AppError as error:
                return error
            except httpx.TransportError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    with futures.ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


def test_a_huge_image_is_refused_from_its_header(server, huge_png, seen_images):
    results = analyze_at_once(server, huge_png)
    assert all(isinstance(r, AppError) and "12000x12000 pixels" in str(r) for r in results), results
    original = hashlib.sha256(huge_png.read_bytes()).hexdigest()
    assert seen_images == [original] * CONCURRENT  # the upload itself: Gradio decoded and converted nothing


def test_a_header_over_pils_own_bomb_limit_gets_the_same_clear_refusal(server, tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)  # 400 Mpx, greyscale
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    with pytest.raises(AppError, match="far more than 40,000,000 pixels"):
        Client(server, verbose=False).predict(image=handle_file(str(path)), api_name="/predict")


@pytest.mark.parametrize("mode", ["L", "P", "LA"])
def test_identical_concurrent_uploads_of_a_non_rgb_image_all_work(server, tmp_path, seen_images, mode):
    path = tmp_path / f"grey-{mode}.png"
    pixels = (np.arange(96 * 96) % 251).reshape(96, 96).astype(np.uint8)
    Image.fromarray(pixels, "L").convert(mode).save(path)
    results = analyze_at_once(server, path, text="I am so happy today")
    assert all(not isinstance(r, AppError) for r in results), [str(r) for r in results if isinstance(r, AppError)]
    assert all(r[0]["label"] in LABELS for r in results)
    assert seen_images == [hashlib.sha256(path.read_bytes()).hexdigest()] * CONCURRENT


# ---- 3. HTML from a name: every user string shows as text ----------------------------------------------


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Debian chromium is needed for the browser tests"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server)
        page.wait_for_selector("#analyze-btn")
        page.dialogs = dialogs
        yield page
        browser.close()


def nothing_came_alive(page) -> None:
    alive = page.evaluate(ALIVE_JS)
    assert alive == {"elements": [], "links": [], "flag": None}, alive
    assert page.dialogs == []


def seed_text_clips(studio) -> None:  # noqa: F811
    """Two consented text clips per payload, each with two votes, and nothing else in the queue (each annotator
    votes on one and is then handed the next)."""
    store = studio.get_store()
    for row in list(store.db.query("SELECT id FROM clips")):  # earlier tests' clips would compete in the queue
        store.delete_clip(row["id"])
    for text in [f"{payload} #{n}" for payload in PAYLOADS for n in (1, 2)]:
        clip = store.add_clip(
            None, sha256=store.text_clip_id(text), ext=".txt", modalities=["text"], consent=True, text=text
        )
        store.vote(clip, "name:seed-a", ["sad"])
        store.vote(clip, "name:seed-b", ["happy"])


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=30_000,
    )


def settle(page) -> None:
    """Wait until no event is pending (an analysis resets the answer boxes when it finishes)."""
    page.wait_for_timeout(500)
    page.wait_for_function("() => document.querySelectorAll('.pending').length === 0", timeout=120_000)


def test_injection_payloads_in_every_field_render_as_text(page, studio):  # noqa: F811
    seed_text_clips(studio)
    page.get_by_role("tab", name="Label").click()
    for payload in PAYLOADS:
        page.locator("#name").locator("input, textarea").first.fill(payload)
        page.locator("#annotator-key input").fill(payload)  # a fresh name ignores it and gets its own key
        page.click("#start-btn")
        wait_text(page, "#progress", f"{payload}: 0 vote(s)")  # the name, literally
        page.wait_for_function(  # the clip box may still show Gradio's "processing" overlay for a moment
            "() => !document.querySelector('#clip-text').innerText.includes('processing')", timeout=30_000
        )
        shown = page.inner_text("#clip-text")
        assert shown.strip().rsplit(" #", 1)[0] in PAYLOADS, shown  # a clip's text, literally
        page.locator("#label-note").locator("input, textarea").first.fill(payload)
        page.locator("body").click(position={"x": 5, "y": 5})
        page.click("#vote-happy")
        wait_text(page, "#progress", f"{payload}: 1 vote(s)")
        nothing_came_alive(page)
    page.get_by_text("Admin: who is who").click()
    page.get_by_label("Admin token (to see who is who)").fill(PAYLOADS[0])
    page.click("#show-annotators")
    page.wait_for_timeout(1_500)
    nothing_came_alive(page)
    page.get_by_role("tab", name="Analyze").click()
    for payload in PAYLOADS[:3]:
        page.get_by_label("Text (optional)").fill(payload)
        page.click("#analyze-btn")
        settle(page)
        page.locator("#answer").get_by_label("sad", exact=True).check()
        page.locator("#correction").get_by_label("Note (optional)").fill(payload)
        page.click("#save-btn")
        wait_text(page, "#stored", "Saved")
        nothing_came_alive(page)
    page.get_by_role("tab", name="Model").click()
    page.get_by_text("Admin", exact=True).click()
    for payload in PAYLOADS[:3]:
        page.get_by_label("Admin token", exact=True).fill(payload)
        page.get_by_label("Clip id to delete").fill(payload)
        page.click("text=Delete clip")
        page.wait_for_timeout(1_500)
        nothing_came_alive(page)


def test_a_browser_upload_of_a_greyscale_photo_is_analysed(page, tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray((np.arange(128 * 128) % 241).reshape(128, 128).astype(np.uint8), "L").save(path)
    page.get_by_role("tab", name="Analyze").click()
    page.click("#image-in button[aria-label='Upload file']")
    page.locator("#image-in input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#image-in img", state="attached")
    page.get_by_label("Text (optional)").fill("What a wonderful surprise, I love it")
    page.click("#analyze-btn")
    settle(page)
    assert any(name in page.inner_text("#emotion-label") for name in LABELS)
    assert "face" in page.inner_text("#summary").lower()  # the photo was read (no face in it: said so)
