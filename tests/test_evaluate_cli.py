"""The evaluation command's plumbing, end to end, with small deterministic stand-in predictors.

These check data loading, decoding, batching, the report fields and the PNG, not a model: the
predictors below answer by a fixed rule so that the expected confusion matrix can be worked out by
hand. The real-model integration test lives with the predictor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from backend.errors import ModelError
from backend.labels import LABELS
from backend.types import SAMPLE_RATE, ModalityResult, Prediction, Sample, probs_dict
from train import corpora, evaluate
from train.corpora import Example


@dataclass
class MajorityPredictor:
    """Plumbing check: always answers "neutral" (p = 0.7) and records what it was given."""

    model_version: str = "majority-v0"
    calls: list[dict] = field(default_factory=list)

    def predict_batch(self, samples: list[Sample], faces_are_crops: bool = False) -> list[Prediction]:
        self.calls.append({"samples": samples, "faces_are_crops": faces_are_crops})
        probs = probs_dict([0.7] + [0.05] * (len(LABELS) - 1))
        return [Prediction(probs=dict(probs), modalities={}, model_version=self.model_version) for _ in samples]


@dataclass
class FirstWordPredictor:
    """Plumbing check for text: predicts the label named by the first word, else neutral (p = 1)."""

    model_version: str = "first-word-v0"

    def predict_batch(self, samples: list[Sample]) -> list[Prediction]:
        out = []
        for s in samples:
            word = s.text.split()[0].lower()
            label = word if word in LABELS else "neutral"
            out.append(Prediction(probs={n: float(n == label) for n in LABELS}, modalities={}, model_version="fw"))
        return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def majority(monkeypatch) -> MajorityPredictor:
    predictor = MajorityPredictor()
    asked: list = []
    monkeypatch.setattr(evaluate, "load_model", lambda model: asked.append(model) or predictor)
    predictor.asked = asked
    return predictor


def _text_folder(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    rows = ["neutral a", "neutral b", "neutral c", "happy d", "happy e", "sad f"]
    lines = ["text,label"] + [f"{r},{r.split()[0]}" for r in rows]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_folder_report_fields_and_png(tmp_path, majority):
    out = tmp_path / "reports" / "report.json"
    returned = evaluate.main(
        ["--data", str(_text_folder(tmp_path)), "--model", "some/model", "--out", str(out), "--no-progress"]
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(returned))
    assert majority.asked == ["some/model"]
    # Truth: 3 neutral, 2 happy, 1 sad; every prediction is neutral:
    #   accuracy 3/6; UAR over present {neutral, happy, sad} = (1 + 0 + 0)/3;
    #   F1 neutral = 2*3/(6 + 3 + 0) = 2/3, happy = sad = 0 -> macro-F1 = 2/9, weighted-F1 = 3*(2/3)/6 = 1/3.
    assert report["n"] == 6
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["uar"] == pytest.approx(1 / 3)
    assert report["macro_f1"] == pytest.approx(2 / 9)
    assert report["weighted_f1"] == pytest.approx(1 / 3)
    assert report["per_class"]["neutral"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 3})
    assert report["confusion"]["labels"] == list(LABELS)
    assert [row[0] for row in report["confusion"]["matrix"]] == [3, 2, 1, 0, 0, 0, 0]
    # All six at confidence 0.7 in one bin, accuracy 0.5: ECE = |0.5 - 0.7| = 0.2.
    assert report["ece"] == pytest.approx(0.2)
    assert report["model_version"] == "majority-v0" and report["model"] == "some/model"
    assert report["modality"] == "text"
    assert report["dataset"]["name"] == "folder" and report["dataset"]["path"].endswith("set")
    assert report["wall_seconds"] >= 0
    assert report["branches"] == {}  # MajorityPredictor reports no per-modality results
    png = out.with_name("report_confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_with_a_rule_predictor_gives_the_hand_matrix():
    # truth -> prediction: happy->happy, happy->neutral ("i"), sad->sad, angry->happy, neutral->neutral
    examples = [
        Example("text", 1, text="happy day"),
        Example("text", 1, text="i am glad"),
        Example("text", 2, text="sad news"),
        Example("text", 3, text="happy to shout"),
        Example("text", 0, text="a table"),
    ]
    report = evaluate.evaluate(examples, FirstWordPredictor(), batch_size=2, progress=False)
    m = np.array(report["confusion"]["matrix"])
    expected = np.zeros((7, 7), dtype=int)
    for t, p in [(1, 1), (1, 0), (2, 2), (3, 1), (0, 0)]:
        expected[t, p] += 1
    assert np.array_equal(m, expected)
    # recalls: neutral 1, happy 1/2, sad 1, angry 0 -> UAR 5/8; accuracy 3/5
    assert report["accuracy"] == pytest.approx(0.6) and report["uar"] == pytest.approx(5 / 8)
    assert report["ece"] == pytest.approx(0.4)  # confidence 1 everywhere, accuracy 0.6


@dataclass
class BranchPredictor:
    """Plumbing check for per-branch scores: fused = neutral; its "text" branch = FirstWordPredictor;
    a "face" branch only on texts that start with "happy"."""

    model_version: str = "branches-v0"

    def predict_batch(self, samples: list[Sample]) -> list[Prediction]:
        out = []
        for s, rule in zip(samples, FirstWordPredictor().predict_batch(samples)):
            branches = {"text": ModalityResult(probs=rule.probs, weight=1.0)}
            if s.text.startswith("happy"):
                branches["face"] = ModalityResult(probs=probs_dict([0.0, 0.0, 1.0, 0, 0, 0, 0]), weight=1.0)
            out.append(Prediction(probs=probs_dict([1, 0, 0, 0, 0, 0, 0]), modalities=branches, model_version="b"))
        return out


def test_branch_scores_are_reported():
    examples = [
        Example("text", 1, text="happy day"),
        Example("text", 1, text="i am glad"),
        Example("text", 2, text="sad news"),
        Example("text", 3, text="happy to shout"),
        Example("text", 0, text="a table"),
    ]
    report = evaluate.evaluate(examples, BranchPredictor(), progress=False)
    assert report["accuracy"] == pytest.approx(0.2)  # fused: always neutral, 1 of 5 is neutral
    text = report["branches"]["text"]  # the hand matrix of the test above
    assert text["n"] == 5 and text["accuracy"] == pytest.approx(0.6) and text["uar"] == pytest.approx(5 / 8)
    face = report["branches"]["face"]  # "happy day" (happy) and "happy to shout" (angry), both read as sad
    assert face["n"] == 2 and face["accuracy"] == 0.0 and face["ece"] == pytest.approx(1.0)


def test_ravdess_defaults_to_the_dev_actors(tmp_path, majority):
    out = tmp_path / "r.json"
    report = evaluate.main(
        ["--dataset", "ravdess", "--limit", "6", "--batch-size", "4", "--out", str(out), "--no-progress"]
    )
    assert report["dataset"]["split"] == "dev" and report["dataset"]["actors"] == [17, 18, 19, 20]
    samples = [s for call in majority.calls for s in call["samples"]]
    assert [len(call["samples"]) for call in majority.calls] == [4, 2]
    assert len(samples) == 6 and report["n"] == 6 and report["modality"] == "speech"
    assert all(int(s.source_name[-7:-5]) in range(17, 21) for s in samples)  # ...-AA.flac
    assert all(s.audio.dtype == np.float32 and s.audio.ndim == 1 for s in samples)
    assert all(2 * SAMPLE_RATE < len(s.audio) < 6 * SAMPLE_RATE for s in samples)  # ~3.5 s clips
    assert not any(call["faces_are_crops"] for call in majority.calls)
    assert out.with_name("r_confusion.png").is_file()


def test_ravdess_actors_and_limit_are_deterministic(tmp_path, majority):
    argv = ["--dataset", "ravdess", "--actors", "1-2,5", "--limit", "5", "--no-progress"]
    first = evaluate.main([*argv, "--out", str(tmp_path / "a.json")])
    names_a = [s.source_name for c in majority.calls for s in c["samples"]]
    majority.calls.clear()
    evaluate.main([*argv, "--out", str(tmp_path / "b.json")])
    names_b = [s.source_name for c in majority.calls for s in c["samples"]]
    assert names_a == names_b and len(names_a) == 5
    assert first["dataset"]["actors"] == [1, 2, 5] and first["dataset"]["split"] == "custom"
    assert {int(n[-7:-5]) for n in names_a} <= {1, 2, 5}


def test_fer2013_passes_rgb_crops(tmp_path, majority):
    report = evaluate.main(
        ["--dataset", "fer2013", "--limit", "10", "--out", str(tmp_path / "f.json"), "--no-progress"]
    )
    assert report["n"] == 10 and report["modality"] == "face"
    assert report["dataset"]["path"].endswith("fer2013_val.npz")
    assert all(call["faces_are_crops"] for call in majority.calls)
    frame = majority.calls[0]["samples"][0].frames[0]
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame[..., 0], frame[..., 2])  # gray repeated into three channels


@pytest.mark.parametrize(
    ("name", "split", "path_end"),
    [("goemotions", "dev", "dev.tsv"), ("meld", "dev", "dev_sent_emo.csv"), ("meld", "train", "train_sent_emo.csv")],
)
def test_text_corpora(tmp_path, majority, name, split, path_end):
    argv = ["--dataset", name, "--split", split, "--limit", "20", "--out", str(tmp_path / "t.json"), "--no-progress"]
    report = evaluate.main(argv)
    assert report["n"] == 20 and report["modality"] == "text"
    assert report["dataset"]["path"].endswith(path_end) and report["dataset"]["split"] == split
    assert all(s.text and s.audio is None for c in majority.calls for s in c["samples"])


def test_unknown_label_in_metadata_is_a_clear_error(tmp_path, majority, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "metadata.csv").write_text("text,label\nfine,happy\nhmm,bored\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--data", str(folder), "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "row 3: unknown emotion label 'bored'" in err and "Traceback" not in err
    assert majority.calls == [] and not (tmp_path / "x.json").exists()


def test_model_that_cannot_load_is_a_clear_error(tmp_path, monkeypatch, capsys):
    def refuse(model):
        raise ModelError(f"cannot load model {model!r}: not a local folder")

    monkeypatch.setattr(evaluate, "load_model", refuse)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--data", str(_text_folder(tmp_path)), "--model", "nope", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "cannot load model 'nope'" in err and "Traceback" not in err


def test_actors_only_for_ravdess(tmp_path, majority, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--dataset", "meld", "--actors", "1-3", "--out", str(tmp_path / "x.json")])
    assert "--actors only applies" in capsys.readouterr().err


def test_mixed_modalities_are_batched_apart():
    faces = corpora.fer2013(corpora.SHARED_DATA / "faces" / "fer2013_val.npz")[:3]
    examples = [*faces, Example("text", 0, text="hello"), Example("text", 1, text="yay")]
    predictor = MajorityPredictor()
    report = evaluate.evaluate(examples, predictor, batch_size=8, progress=False)
    assert report["modality"] == "mixed" and report["modalities"] == ["face", "text"]
    kinds = [({tuple(s.modalities) for s in c["samples"]}, c["faces_are_crops"]) for c in predictor.calls]
    assert kinds == [({("face",)}, True), ({("text",)}, False)]


def test_module_runs_as_a_command():
    done = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "--dataset" in done.stdout and "--out" in done.stdout


@dataclass
class SpeakerAwarePredictor:
    """Records the speaker statistics it is handed; says "disgust" 0.5, else "sad" 0.3: --classes must drop disgust."""

    model_version: str = "speaker-v0"
    seen: list = field(default_factory=list)

    def predict_batch(self, samples, faces_are_crops=False, speakers=None, update_speakers=True):
        self.seen.append((len(samples), [None if s is None else s.count for s in speakers or []], update_speakers))
        for s in speakers or []:
            if s is not None and update_speakers:
                s.add(np.ones(4))
        probs = {n: 0.5 if n == "disgust" else 0.3 if n == "sad" else 0.2 / 5 for n in LABELS}
        return [Prediction(probs=dict(probs), modalities={}, model_version=self.model_version) for _ in samples]


def test_ased_with_speaker_adaptation_and_shared_classes(tmp_path, monkeypatch):
    predictor = SpeakerAwarePredictor()
    monkeypatch.setattr(evaluate, "load_model", lambda model: predictor)
    argv = ["--dataset", "ased", "--limit", "12", "--adapt", "speaker", "--no-progress"]
    report = evaluate.main([*argv, "--classes", "neutral,happy,sad,angry,fearful", "--out", str(tmp_path / "a.json")])
    assert report["dataset"]["speakers"] == list(corpora.ASED_DEV_SPEAKERS) and report["adapt"] == "speaker"
    first, second = predictor.seen[: len(predictor.seen) // 2], predictor.seen[len(predictor.seen) // 2 :]
    assert all(update for _, _, update in first) and not any(update for _, _, update in second)
    assert sum(n for n, _, _ in second) == 12 and all(c and c > 0 for _, counts, _ in second for c in counts)
    assert report["per_class"]["disgust"]["support"] == 0 and report["per_class"]["sad"]["recall"] == 1.0
    assert report["confusion"]["matrix"][LABELS.index("sad")][LABELS.index("disgust")] == 0  # argmax over the 5
