"""Live voice end to end: the launched app, a Python client pushing chunks, and Chromium with a fake microphone.

The recording is bench/streaming.py's: three RAVDESS clips the default model reads correctly alone (angry, sad,
happy), with 1.5 s of silence before and between them. The browser plays it as its microphone (48 kHz stereo,
as browsers record); the live label must follow the emotions in that order while the recording goes on, and
stopping must run the full analysis. The screenshot goes to tests/artifacts/analyze_live.png.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from backend.labels import LABELS
from bench.streaming import BROWSER_RATE, as_browser, make_recording
from tests.app_support import launched, studio  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
EXPECTED = ["angry", "sad", "happy"]
CHUNK_S = 0.5
TIMEOUT_MS = 120_000


def collapse(labels: list[str]) -> list[str]:
    """Consecutive repeats and "not sure" removed: the order in which emotions were shown."""
    out: list[str] = []
    for label in labels:
        if label in LABELS and (not out or out[-1] != label):
            out.append(label)
    return out


def in_order(expected: list[str], seen: list[str]) -> bool:
    """expected is a subsequence of seen."""
    it = iter(seen)
    return all(any(x == e for x in it) for e in expected)


@pytest.fixture(scope="module")
def recording(shared_data):
    audio, spans = make_recording(shared_data)
    return audio, spans


@pytest.fixture(scope="module")
def server(studio):  # noqa: F811
    with launched(studio) as url:
        yield url


def test_api_live_push_follows_the_emotions_then_full_analysis(server, studio, recording, tmp_path):  # noqa: F811
    audio, spans = recording
    client = Client(server, verbose=False)  # one client = one session = one live stream
    step = int(CHUNK_S * 16_000)
    labels, infos = [], []
    for k, a in enumerate(range(0, len(audio), step)):
        path = tmp_path / f"chunk{k:03d}.wav"
        sf.write(path, audio[a : a + step], 16_000, subtype="PCM_16")
        *_, info = client.predict(chunk=handle_file(str(path)), api_name="/live_push")
        infos.append(info)
        if info["new_reading"]:
            labels.append(info["label"])
            assert any(s - 0.2 <= info["seconds"] <= t + 1.0 for s, t, _ in spans), info  # only around speech
    silent = [i for i in infos if i["seconds"] <= spans[0][0] - 0.3]
    assert silent and all(i["label"] is None for i in silent)  # the leading silence gave no reading
    assert in_order(EXPECTED, collapse(labels)), labels
    *_, info, utterance = client.predict(api_name="/live_end")
    assert info["finished"] and [s["top"] for s in info["segments"]] == EXPECTED, info["segments"]
    assert all(s["label"] in (s["top"], "not sure") for s in info["segments"])
    calibrated = getattr(studio.get_predictor().model.config, "uncertain_threshold", 0.0)
    assert info["threshold"] == (calibrated or studio.get_settings().live_uncertain_threshold)
    seconds = len(sf.read(utterance)[0]) / 16_000
    assert spans[-1][1] - spans[0][0] - 1.5 < seconds < len(audio) / 16_000, seconds  # trimmed to the speech
    label, summary, *_ = client.predict(audio=handle_file(utterance), api_name="/predict")
    assert label["label"] in LABELS and f"{seconds:.1f} s of audio" in summary


@pytest.fixture(scope="module")
def browser(recording):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Debian chromium is needed for the browser tests (bash .ci/install --dev)"
    mic = Path(tempfile.mkdtemp(prefix="live-mic-")) / "mic-48k-stereo.wav"
    sf.write(mic, as_browser(recording[0]), BROWSER_RATE, subtype="PCM_16")
    args = [
        *("--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"),
        *("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"),
        f"--use-file-for-fake-audio-capture={mic}%noloop",
    ]
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


WATCH_JS = """() => {
  window.__live = []; window.__heard = [];
  const seen = () => {
    const e = document.querySelector('#live-now .live-now');
    if (!e) return;
    const label = e.dataset.label, t = performance.now();
    const last = window.__live[window.__live.length - 1];
    if (label && (!last || last.label !== label)) window.__live.push({label, t});
    window.__heard.push({s: parseFloat(e.dataset.seconds), t});
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_browser_fake_microphone_live_label_follows_the_recording(browser, server, recording):
    audio = recording[0]
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("#live-in")
    page.evaluate(WATCH_JS)
    page.click("#live-in button.record-button")
    clicked = page.evaluate("() => performance.now()")
    page.wait_for_timeout(int((len(audio) / 16_000 + 1.0) * 1000))  # the whole recording, then stop
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#live-voice").screenshot(path=str(ARTIFACTS / "analyze_live_recording.png"))
    page.click("#live-in button.stop-button")
    seen = page.evaluate("() => window.__live")
    heard = page.evaluate("() => window.__heard")
    page.wait_for_function(
        "() => { const e = document.querySelector('#emotion-label'); return e && !e.querySelector('.empty'); }",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_function("() => document.querySelectorAll('.pending').length === 0", timeout=TIMEOUT_MS)
    page.wait_for_timeout(600)
    page.screenshot(path=str(ARTIFACTS / "analyze_live.png"), full_page=True)
    blocks = page.eval_on_selector_all("#live-timeline .live-seg", "es => es.map(e => e.dataset.top)")
    summary = page.inner_text("#summary")
    lag = [round((h["t"] - clicked) / 1000 - h["s"], 2) for h in heard]  # wall time since Record - audio heard
    report = {"seen": seen, "timeline": blocks, "lag_s": lag, "summary": summary}
    (ARTIFACTS / "analyze_live.json").write_text(json.dumps(report, indent=2) + "\n")
    context.close()
    labels = [s["label"] for s in seen]
    assert in_order(EXPECTED, collapse(labels)), seen  # the live label followed the recording
    assert collapse(blocks) == EXPECTED, blocks  # one timeline block per spoken clip (its top emotion), no silence
    assert len(lag) > 10 and lag[-1] < lag[len(lag) // 2] + 2.0, lag  # keeps up: the backlog does not grow
    assert " s of audio" in summary and "speech" in summary, summary  # the full analysis ran on the utterance
