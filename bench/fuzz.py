"""The long fuzz run: >= 10,000 generated inputs into the media and text entry points, plus a few hundred
through the running app (gradio_client). Prints one JSON object: counts by entry point and outcome,
crashes (anything but a clear refusal), unclear refusals, and the max latency.

    python bench/fuzz.py                      # 10,000 direct inputs + 300 app calls (~10-20 min on 2 CPUs)
    python bench/fuzz.py --direct 2000 --app 0 --seed 3

The CI suite runs the short version of the same ideas (tests/test_fuzz_*.py; EMO_FUZZ=long for more).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from backend.errors import MediaError
from backend.media import clean_text, load_audio, load_image, load_sample, prepare_audio
from backend.settings import load_settings
from labeling import service
from labeling.errors import StoreError
from labeling.store import Store
from tests.fuzz_support import BASE_FILES, BASE_IMAGES
from tests.nasty_files import PATH_FRAGMENTS, SQL_FRAGMENTS, build_corpus, is_clear, nasty_texts

SETTINGS = load_settings()
PIECES = [*SQL_FRAGMENTS, *PATH_FRAGMENTS, "\x00", "\u202e", "\ud800", "\ufeff", "\U0001f621", "\u200d", "\r\n"]


class Tally:
    """Outcomes per entry point, the worst latency, and a few examples of each failure kind."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.max_latency: dict[str, float] = defaultdict(float)
        self.failures: list[dict[str, str]] = []

    def run(self, entry: str, fn: Callable[[], object], refusals: tuple[type[Exception], ...]) -> None:
        started = time.perf_counter()
        try:
            fn()
            outcome = "ok"
        except refusals as error:
            message = getattr(error, "message", None) or str(error)
            outcome = "refused" if is_clear(message) else "unclear"
            if outcome == "unclear":
                self.failures.append({"entry": entry, "kind": "unclear", "message": message[:300]})
        except Exception as error:  # a crash: anything but the boundary's own error
            outcome = "crash"
            self.failures.append({"entry": entry, "kind": "crash", "error": repr(error)[:300]})
        self.counts[entry][outcome] += 1
        self.max_latency[entry] = max(self.max_latency[entry], time.perf_counter() - started)

    def report(self) -> dict:
        total = Counter()
        for counts in self.counts.values():
            total.update(counts)
        return {
            "inputs": sum(total.values()),
            "outcomes": dict(total),
            "crashes": total["crash"],
            "unclear_refusals": total["unclear"],
            "by_entry": {k: dict(v) for k, v in sorted(self.counts.items())},
            "max_latency_s": {k: round(v, 3) for k, v in sorted(self.max_latency.items())},
            "failure_examples": self.failures[:20],
        }


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        how = rng.choice(["cut", "flip", "splice", "header", "grow"])
        if how == "cut" and out:
            out = out[: int(rng.integers(0, len(out) + 1))]
        elif how == "flip" and out:
            out[int(rng.integers(0, len(out)))] ^= int(rng.integers(1, 256))
        elif how == "splice":
            at = int(rng.integers(0, len(out) + 1))
            out[at:at] = rng.bytes(int(rng.integers(0, 64)))
        elif how == "header" and len(out) > 48:
            at = int(rng.integers(0, 45))
            out[at : at + 4] = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00"][int(rng.integers(0, 3))]
        elif how == "grow":
            out += bytes(int(rng.integers(0, 4096)))
    return bytes(out)


def random_text(rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return "".join(
            chr(int(c)) for c in rng.integers(0, 0x10FFFF, int(rng.integers(0, 80))) if not 0xD800 <= c < 0xE000
        )
    if kind == 1:
        return "".join(rng.choice(PIECES, int(rng.integers(1, 8))))
    if kind == 2:
        return "x" * int(rng.integers(0, 12_000))
    return "".join(chr(int(c)) for c in rng.integers(0, 0x3000, int(rng.integers(0, 300))))


def random_waveform(rng: np.random.Generator) -> tuple[np.ndarray, object]:
    n = int(rng.integers(0, 40_000))
    shape = [(n,), (n, int(rng.choice([1, 2, 8]))), (int(rng.choice([1, 2, 8])), n)][int(rng.integers(0, 3))]
    x = rng.normal(0, float(rng.choice([0.0, 1e-6, 0.1, 1.0, 1e4])), shape)
    if x.size and rng.random() < 0.3:
        x.flat[int(rng.integers(0, x.size))] = rng.choice([np.nan, np.inf, -np.inf, 1e30])
    dtype = rng.choice(["float32", "float64", "int16", "int32", "uint8", "int64", "float16"])
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.nan_to_num(x * info.max / 4), info.min, info.max)
    rate = rng.choice([8_000, 16_000, 44_100, 48_000, 192_000, 191_999, 4_000, 0, -1, 1e9, 22_050.0, float("nan")])
    return x.astype(dtype), rate.item() if hasattr(rate, "item") else rate


def direct(tally: Tally, n: int, rng: np.random.Generator, store: Store, corpus: list) -> None:
    """n inputs spread over the media, text and store entry points."""
    audio_bases, image_bases = list(BASE_FILES.values()), list(BASE_IMAGES.values())
    loaders = {"audio": load_audio, "image": load_image}
    for i in range(n):
        which = i % 8
        if which == 0:
            w, r = random_waveform(rng)
            tally.run("prepare_audio", lambda w=w, r=r: prepare_audio(w, r, SETTINGS), (MediaError,))
        elif which in (1, 2):
            data = mutate(rng, audio_bases[int(rng.integers(0, len(audio_bases)))])
            tally.run("load_audio", lambda d=data: load_audio(d, SETTINGS), (MediaError,))
        elif which == 3:
            data = mutate(rng, image_bases[int(rng.integers(0, len(image_bases)))])
            tally.run("load_image", lambda d=data: load_image(d, SETTINGS), (MediaError,))
        elif which == 4:
            text = random_text(rng)
            tally.run("clean_text", lambda t=text: clean_text(t, SETTINGS), (MediaError,))
        elif which == 5:
            audio = mutate(rng, audio_bases[0]) if rng.random() < 0.5 else None
            text = random_text(rng) if rng.random() < 0.7 else None
            tally.run(
                "load_sample", lambda a=audio, t=text: load_sample(audio=a, text=t, settings=SETTINGS), (MediaError,)
            )
        elif which == 6:
            name, note, clip = random_text(rng), random_text(rng), random_text(rng)

            def store_calls(name=name, note=note, clip=clip) -> None:
                annotator = service.annotator_id_for(name)
                store.vote(
                    service.plain_text(clip),
                    annotator,
                    service.answer_labels(["sad"]),
                    note=service.plain_text(note) or None,
                )

            tally.run("store_fields", store_calls, (StoreError,))
        else:
            nasty = corpus[i // 8 % len(corpus)]
            if nasty.kind in loaders:
                tally.run(
                    f"corpus_{nasty.kind}", lambda p=nasty.path, k=nasty.kind: loaders[k](p, SETTINGS), (MediaError,)
                )
            else:
                from backend.media import load_video

                tally.run("corpus_video", lambda p=nasty.path: load_video(p, SETTINGS), (MediaError,))


def through_app(tally: Tally, n: int, rng: np.random.Generator, corpus: list, folder: Path) -> None:
    """n calls through a launched app (in this process) with gradio_client; the rate limit is off."""
    import socket

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    os.environ.update({"EMO_DATA_DIR": str(folder / "data"), "EMO_RATE_LIMIT_PER_MINUTE": "0"})
    os.environ.setdefault("EMO_ADMIN_TOKEN", "fuzz-admin-token")
    import app

    app.get_settings.cache_clear()
    app.get_store.cache_clear()
    app.get_limiter.cache_clear()
    app.get_predictor()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_demo()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(app.get_settings()),
    )
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    texts = [t for t in nasty_texts() if t.encode("utf-8", "ignore").decode() == t]
    small = [c for c in corpus if c.path.stat().st_size < 64 * 1024**2]
    refusals = (AppError,)
    try:
        for i in range(n):
            which = i % 5
            text = texts[i % len(texts)] if rng.random() < 0.5 else random_text(rng).encode("utf-8", "ignore").decode()
            if which == 0:
                nasty = small[i // 5 % len(small)]
                kw = {nasty.kind: handle_file(str(nasty.path))}
                tally.run(
                    f"app_predict_{nasty.kind}", lambda kw=kw: client.predict(**kw, api_name="/predict"), refusals
                )
            elif which == 1:
                tally.run("app_predict_text", lambda t=text: client.predict(text=t, api_name="/predict"), refusals)
            elif which == 2:
                tally.run(
                    "app_correct",
                    lambda t=text: client.predict(
                        choices=["sad"], note=t, consent=bool(rng.random() < 0.5), api_name="/correct"
                    ),
                    refusals,
                )
            elif which == 3:
                tally.run(
                    "app_next_vote",
                    lambda t=text: (
                        client.predict(name=t, api_name="/next_item"),
                        client.predict(labels=["happy"], unsure=False, note=t, api_name="/vote"),
                    ),
                    refusals,
                )
            else:
                api = ["/delete_clip", "/delete_annotator", "/export"][i % 3]
                args = (text,) if api == "/export" else (text, text)
                tally.run("app_admin", lambda api=api, args=args: client.predict(*args, api_name=api), refusals)
    finally:
        demo.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direct", type=int, default=10_000, help="inputs into the media/text/store entry points")
    parser.add_argument("--app", type=int, default=300, help="calls through the running app")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rng = np.random.default_rng(args.seed)
    tally = Tally()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="emo-fuzz-") as tmp:
        folder = Path(tmp)
        corpus = build_corpus(folder / "corpus")
        with Store.open(folder / "store" / "studio.db", folder / "store" / "media", k=3, gold_rate=0.0) as store:
            store.add_clip(b"fuzz", ext=".txt", modalities=["text"], consent=True, text="fuzz")
            direct(tally, args.direct, rng, store, corpus)
        if args.app:
            through_app(tally, args.app, rng, corpus, folder)
    report = tally.report() | {"seconds": round(time.perf_counter() - started, 1), "seed": args.seed}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
