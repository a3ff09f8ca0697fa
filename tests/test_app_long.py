"""The predict handler with long clips: steps reported as progress, at most LONG_JOBS_AT_ONCE at a time."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import soundfile as sf

from backend.errors import MediaError
from backend.types import SAMPLE_RATE, Prediction, Sample
from tests.app_support import studio  # noqa: F401  (module fixture)
from tests.conftest import RAVDESS


class FakePredictor:
    """is_long / predict / predict_steps like the Predictor; steps wait for `go` when it is given."""

    def __init__(self, go: threading.Event | None = None) -> None:
        self.go, self.started = go, threading.Event()

    def is_long(self, sample: Sample) -> bool:
        return sample.duration > 30

    def predict(self, sample: Sample) -> Prediction:
        return Prediction(probs={}, modalities={}, model_version="fake", duration=sample.duration)

    def predict_batch(self, samples: list[Sample], **_: object) -> list[Prediction]:
        return [self.predict(s) for s in samples]

    def predict_steps(self, sample: Sample):
        self.started.set()
        self.step_nice: list[int] = []
        for fraction in (0.25, 0.5, 0.75):
            if self.go is not None:
                self.go.wait(10)
            self.step_nice.append(os.getpriority(os.PRIO_PROCESS, 0))  # who=0: the thread running the step
            yield fraction
        yield self.predict(sample)


def test_long_clips_report_progress_and_short_ones_do_not(studio, monkeypatch):  # noqa: F811
    fake = FakePredictor()
    monkeypatch.setattr(studio, "get_predictor", lambda: fake)
    seen: list[float] = []
    long_result = studio.run_model(Sample(audio=np.zeros(40 * SAMPLE_RATE, np.float32)), lambda f, desc: seen.append(f))
    assert isinstance(long_result, Prediction) and seen == [0.25, 0.5, 0.75]
    if hasattr(os, "setpriority"):  # the steps ran below every request's priority (Linux: nice per thread)
        here = os.getpriority(os.PRIO_PROCESS, 0)
        assert fake.step_nice == [max(here, studio.LONG_JOB_NICE)] * 3
    seen.clear()
    studio.run_model(Sample(audio=np.zeros(4 * SAMPLE_RATE, np.float32)), lambda f, desc: seen.append(f))
    assert seen == []


def test_a_long_clip_beyond_the_slots_is_refused_with_a_clear_message(studio, monkeypatch):  # noqa: F811
    go = threading.Event()
    fake = FakePredictor(go)
    monkeypatch.setattr(studio, "get_predictor", lambda: fake)
    long = Sample(audio=np.zeros(40 * SAMPLE_RATE, np.float32))
    jobs = [threading.Thread(target=studio.run_model, args=(long, None)) for _ in range(studio.LONG_JOBS_AT_ONCE)]
    for job in jobs:
        fake.started.clear()
        job.start()
        assert fake.started.wait(10)
    with pytest.raises(MediaError, match="long recordings"):
        studio.run_model(long, None)
    assert isinstance(studio.run_model(Sample(audio=np.zeros(SAMPLE_RATE, np.float32)), None), Prediction)
    go.set()
    for job in jobs:
        job.join(10)
    assert isinstance(studio.run_model(long, None), Prediction)  # the slots are free again


def test_predict_event_has_workers_beyond_the_long_jobs(studio):  # noqa: F811
    [fn] = [f for f in studio.demo.fns.values() if f.api_name == "predict"]
    assert fn.concurrency_limit == studio.get_settings().concurrency + studio.LONG_JOBS_AT_ONCE


@pytest.mark.slow
def test_a_long_recording_through_the_handler_with_the_real_model(studio, tmp_path):  # noqa: F811
    clip, _ = sf.read(str(RAVDESS / "Actor_17" / "03-01-01-01-01-01-17.flac"), dtype="float32")
    gap = np.zeros(12 * SAMPLE_RATE, np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), np.concatenate([clip, gap, clip, gap, clip]), SAMPLE_RATE)
    details = studio.predict(str(path), None, None, None, None)[6]
    assert details["duration"] > 30 and len(details["timeline"]) > 10
    assert details["transcript"].lower().count("kids are talking by the door") == 3  # 2 + 1 in two 30 s pieces
    assert set(details["modalities"]) == {"speech", "text"}
