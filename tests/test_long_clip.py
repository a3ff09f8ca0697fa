"""Long clips in steps: requests go before a long job's next step, and the steps add up to predict()."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backend.model import EmotionModel
from backend.predictor import LONG_CLIP_SECONDS, Predictor
from backend.priority_lock import PriorityLock
from backend.settings import load_settings
from backend.types import SAMPLE_RATE, Prediction, Sample


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_requests_go_before_waiting_long_steps_and_in_arrival_order():
    lock, order = PriorityLock(), []

    def step() -> None:
        with lock.low():
            order.append("step")

    def request(name: str) -> None:
        with lock:
            order.append(name)

    lock.acquire()
    threads = [threading.Thread(target=step)]
    threads[0].start()
    time.sleep(0.05)  # the long job's step is waiting first
    for name in ("first", "second"):
        threads.append(threading.Thread(target=request, args=(name,)))
        threads[-1].start()
        _wait_until(lambda n=len(threads) - 1: lock.waiting == n)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == ["first", "second", "step"]
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_step_runs_when_nobody_waits():
    lock, ran = PriorityLock(), threading.Event()

    def step() -> None:
        with lock.low():
            ran.set()

    thread = threading.Thread(target=step)
    thread.start()
    assert ran.wait(5)
    thread.join(5)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path, tiny_backbones) -> Predictor:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    return Predictor(model, load_settings(cache=Path(tiny_backbones["cache"]), asr=True))


@pytest.fixture(scope="module")
def long_clip(ravdess_clip: Path) -> np.ndarray:
    audio, _ = sf.read(str(ravdess_clip), dtype="float32")
    clip = np.tile(audio, int(np.ceil((LONG_CLIP_SECONDS + 12) * SAMPLE_RATE / len(audio))))
    assert len(clip) / SAMPLE_RATE > LONG_CLIP_SECONDS
    return clip


def test_steps_report_progress_and_end_with_what_predict_gives(predictor: Predictor, long_clip: np.ndarray):
    sample = Sample(audio=long_clip)
    assert predictor.is_long(sample) and not predictor.is_long(Sample(audio=long_clip[: 5 * SAMPLE_RATE]))
    steps = list(predictor.predict_steps(sample))
    fractions, result = steps[:-1], steps[-1]
    assert isinstance(result, Prediction) and all(isinstance(f, float) for f in fractions)
    assert len(fractions) > 10 and fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
    whole = predictor.predict(sample)
    assert result.transcript == whole.transcript and result.transcript is not None
    assert [(s.start, s.end) for s in result.timeline] == [(s.start, s.end) for s in whole.timeline]
    for mine, theirs in zip(result.timeline, whole.timeline):
        assert mine.probs == pytest.approx(theirs.probs, abs=1e-4)
    assert result.probs == pytest.approx(whole.probs, abs=1e-4)
    assert set(result.modalities) == set(whole.modalities)


def test_short_samples_are_predicted_in_one_step(predictor: Predictor):
    [only] = list(predictor.predict_steps(Sample(text="what a lovely day")))
    assert isinstance(only, Prediction) and set(only.modalities) == {"text"}


class RecordingLock(PriorityLock):
    """Notes who got the lock, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.holders: list[str] = []

    def acquire(self) -> bool:
        super().acquire()
        self.holders.append("request")
        return True

    def acquire_low(self) -> bool:
        super().acquire_low()
        self.holders.append("step")
        return True


def test_a_request_overtakes_a_long_job_between_its_steps(predictor: Predictor, long_clip: np.ndarray, monkeypatch):
    """While a request holds the model, the long job's next step waits, and a request arriving later still goes
    before it; the long job then resumes."""
    lock = RecordingLock()
    monkeypatch.setattr(predictor, "lock", lock)
    steps = predictor.predict_steps(Sample(audio=long_clip))
    next(steps)  # the long job is between two steps
    lock.holders.clear()
    progressed: list = []
    with lock:  # a request holds the model
        long_job = threading.Thread(target=lambda: progressed.append(next(steps)))
        long_job.start()
        time.sleep(0.2)
        assert progressed == []  # the step waits for the request
        short_clip = threading.Thread(target=lambda: predictor.predict(Sample(audio=long_clip[: 3 * SAMPLE_RATE])))
        short_clip.start()
        _wait_until(lambda: lock.waiting == 1)
    short_clip.join(30)
    long_job.join(30)
    assert lock.holders == ["request", "request", "step"]
    assert len(progressed) == 1 and isinstance(progressed[0], float)
    assert isinstance(list(steps)[-1], Prediction)


def test_a_text_only_request_does_not_wait_for_a_long_jobs_step(predictor: Predictor, long_clip: np.ndarray):
    """A text-only request needs the text branch alone: it answers while a long job's speech step holds the model,
    while a request with audio waits for the step."""
    answers: dict[str, Prediction] = {}
    with predictor.lock.low():  # a long job's step is running
        text_only = threading.Thread(target=lambda: answers.update(text=predictor.predict(Sample(text="so happy"))))
        clip = threading.Thread(target=lambda: answers.update(clip=predictor.predict(Sample(audio=long_clip[:48_000]))))
        clip.start()
        text_only.start()
        text_only.join(30)
        assert set(answers) == {"text"} and set(answers["text"].modalities) == {"text"}
        assert predictor.lock.waiting == 1  # the clip
    clip.join(30)
    assert set(answers) == {"text", "clip"}


def test_the_text_branch_runs_one_call_at_a_time(predictor: Predictor, long_clip: np.ndarray):
    """A request with audio reads its transcript with the text branch under the text lock, the one text-only requests
    take: a fast tokenizer must not be used by two threads at once."""
    entered = threading.Event()
    with predictor.text_lock:
        clip = threading.Thread(target=lambda: (predictor.predict(Sample(audio=long_clip[:48_000])), entered.set()))
        clip.start()
        assert not entered.wait(3.0)  # its speech branch ran; its text step waits for the text lock
    clip.join(30)
    assert entered.is_set()
