"""Access through the running app's API: admin actions need EMO_ADMIN_TOKEN; blind labelling hides
others' votes; uploaded file names never reach a path; stored media is served only through a clip the
queue handed out; HF_TOKEN and the admin token never appear in logs, errors, pages or exported data.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from backend.ratelimit import RateLimiter
from tests.app_support import ADMIN_TOKEN, launched, seed_tone, studio  # noqa: F401  (module fixture)
from tests.nasty_files import tone, wav_bytes

pytestmark = pytest.mark.slow
HF_SECRET = "hf_FAKEsecretTOKENforTHEaccessTEST0123"


@pytest.fixture(scope="module")
def server(studio):  # noqa: F811
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", HF_SECRET)
        mp.setattr(studio, "get_limiter", lambda: RateLimiter(0))
        with launched(studio, load_model=False) as url:
            yield url


@pytest.mark.parametrize("api", ["/export", "/retrain", "/delete_clip", "/delete_annotator"])
@pytest.mark.parametrize("token", [None, "", "wrong", ADMIN_TOKEN + " x", ADMIN_TOKEN.upper()])
def test_admin_actions_refuse_without_the_right_token(server, studio, api, token):  # noqa: F811
    clips = studio.get_store().stats()["clips"]
    with pytest.raises(AppError, match="admin token is not right") as refused:
        Client(server, verbose=False).predict(token, api_name=api)
    assert ADMIN_TOKEN not in str(refused.value)
    assert studio.get_store().stats()["clips"] == clips  # nothing was deleted


def test_admin_actions_are_off_without_a_configured_token(studio, monkeypatch):  # noqa: F811
    import gradio as gr

    from backend.settings import load_settings

    monkeypatch.setattr(studio, "get_settings", lambda: load_settings(admin_token=None))
    for action in (studio.export, studio.retrain, studio.delete_clip, studio.delete_annotator):
        with pytest.raises(gr.Error, match="Admin actions are off"):
            action("")


def test_blind_labelling_shows_no_other_votes_through_the_api(server, studio):  # noqa: F811
    clip = seed_tone(studio, 611.0)
    store = studio.get_store()
    store.vote(clip, "name:alice-secret", ["angry"], note="alice's private note")
    store.add_prediction(clip, "v-secret", {"angry": 0.8765, "sad": 0.1235})
    client = Client(server, verbose=False)
    seen = []
    for _ in range(30):  # walk this annotator's queue until the clip comes up
        answer = client.predict(name="bob", api_name="/next_item")
        seen.append(json.dumps(answer))
        if answer[-2] == clip or not answer[-2]:
            break
        client.predict(api_name="/skip")
    assert any(clip in s for s in seen), "the clip was not served"
    everything = " ".join(seen) + json.dumps(client.predict(api_name="/stats"))
    for secret in ("alice-secret", "alice's private note", "v-secret", "0.8765", "0.876"):
        assert secret not in everything


def test_uploaded_file_names_never_reach_a_path(server, studio, tmp_path):  # noqa: F811
    nasty = tmp_path / "..;'; DROP TABLE clips; --$(reboot)..wav"
    nasty.write_bytes(wav_bytes(tone(1.2, freq=523.0)))
    client = Client(server, verbose=False)
    client.predict(audio=handle_file(str(nasty)), api_name="/predict")
    _, receipt = client.predict(choices=["happy"], note="", consent=True, api_name="/correct")
    media_dir = studio.get_settings().media_dir.resolve()
    path = studio.get_store().media_path(receipt["clip_id"])
    assert path == media_dir / receipt["clip_id"][:2] / f"{receipt['clip_id']}.wav"
    assert not [p for p in media_dir.rglob("*") if "DROP" in p.name or "reboot" in p.name]
    with sqlite3.connect(studio.get_settings().database) as conn:
        dump = "\n".join(conn.iterdump())
    assert "DROP TABLE clips" not in dump and "reboot" not in dump


def test_media_is_served_only_through_a_clip_the_queue_handed_out(server, studio):  # noqa: F811
    clip = seed_tone(studio, 733.0)
    stored = studio.get_store().media_path(clip)
    direct = httpx.get(f"{server}gradio_api/file={stored}", timeout=30)
    assert direct.status_code == 403  # the media folder is blocked: guessing a path gets nothing
    client = Client(server, verbose=False, download_files=False)
    for _ in range(30):
        audio, *_rest, clip_id, _note = client.predict(name="carol", api_name="/next_item")
        if clip_id == clip or not clip_id:
            break
        client.predict(api_name="/skip")
    assert clip_id == clip
    url = audio["value"]["url"]
    assert str(stored) not in url and str(studio.get_settings().data_dir) not in url
    served = httpx.get(url, timeout=30)
    assert served.status_code == 200 and served.content == stored.read_bytes()


def test_tokens_never_appear_in_logs_errors_pages_or_exports(server, studio, caplog, tmp_path):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    client = Client(server, verbose=False)
    texts = []
    seed_tone(studio, 811.0)
    studio.get_store().vote(seed_tone(studio, 877.0), "name:dave", ["sad"])
    for token in (ADMIN_TOKEN[:-1], HF_SECRET, "nope"):
        for api in ("/export", "/retrain", "/delete_clip"):
            with pytest.raises(AppError) as refused:
                client.predict(token, api_name=api)
            texts.append(str(refused.value))
    texts.append(client.predict(ADMIN_TOKEN, api_name="/export"))
    with pytest.raises(AppError) as refused:
        client.predict(ADMIN_TOKEN, "0" * 64, api_name="/delete_clip")
    texts.append(str(refused.value))
    texts.append(json.dumps(client.predict(api_name="/stats")))
    for page in ("", "config", "gradio_api/info"):
        texts.append(httpx.get(f"{server}{page}", timeout=30).text)
    export_dir = Path(studio.get_settings().data_dir) / "export"
    exported = [p for p in export_dir.rglob("*") if p.is_file()]
    assert exported, "the export wrote nothing"
    blobs = [p.read_bytes() for p in exported]
    logs = caplog.text
    for secret in (ADMIN_TOKEN, HF_SECRET):
        assert all(secret not in t for t in texts), secret
        assert secret not in logs
        assert all(secret.encode() not in b for b in blobs)
    shutil.rmtree(export_dir)
