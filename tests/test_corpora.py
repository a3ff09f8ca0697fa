"""Corpus loaders on the real shared data (counts from ../shared/data/README.md) and the folder format."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from backend.labels import LABEL_TO_ID, LABELS
from train import corpora
from train.corpora import CorpusError, Example

DATA = corpora.SHARED_DATA
RAVDESS = DATA / "ravdess-speech-16k"
GOEMOTIONS_DEV = DATA / "text" / "goemotions-ekman" / "dev.tsv"
MELD_DEV = DATA / "text" / "meld" / "dev_sent_emo.csv"
FER_VAL = DATA / "faces" / "fer2013_val.npz"


@pytest.fixture(scope="module")
def ravdess_all() -> list[Example]:
    return corpora.ravdess(RAVDESS)


def test_ravdess_counts(ravdess_all):
    assert len(ravdess_all) == 1200
    per_actor = collections.Counter(e.meta["actor"] for e in ravdess_all)
    assert sorted(per_actor) == list(range(1, 21))
    assert set(per_actor.values()) == {60}
    # calm folds into neutral: 20 actors x (4 neutral + 8 calm) = 240; 20 x 8 = 160 for every other class
    per_label = collections.Counter(e.label_name for e in ravdess_all)
    assert per_label == {"neutral": 240, **{name: 160 for name in LABELS[1:]}}


def test_ravdess_file_name_fields(ravdess_all):
    by_name = {e.path.name: e for e in ravdess_all}
    calm = by_name["03-01-02-02-01-02-07.flac"]
    assert calm.label == LABEL_TO_ID["neutral"] and calm.modality == "speech"
    assert calm.meta == {
        "emotion": "calm",
        "intensity": "strong",
        "statement": 1,
        "repetition": 2,
        "actor": 7,
        "corpus": "ravdess",
    }
    assert calm.speaker == "actor07"
    assert by_name["03-01-08-01-02-02-01.flac"].label_name == "surprised"
    assert by_name["03-01-07-01-01-01-20.flac"].label_name == "disgust"
    assert by_name["03-01-06-01-01-01-20.flac"].label_name == "fearful"


def test_ravdess_speaker_independent_split():
    dev = corpora.ravdess(RAVDESS, corpora.SPEECH_DEV_ACTORS)
    train = corpora.ravdess(RAVDESS, corpora.SPEECH_TRAIN_ACTORS)
    assert len(dev) == 240 and len(train) == 960
    assert not {e.speaker for e in dev} & {e.speaker for e in train}
    assert {e.meta["actor"] for e in dev} == {17, 18, 19, 20}


def test_ravdess_rejects_foreign_file_names(tmp_path):
    (tmp_path / "Actor_01").mkdir()
    (tmp_path / "Actor_01" / "hello.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"hello\.wav: not a RAVDESS name"):
        corpora.ravdess(tmp_path)
    with pytest.raises(CorpusError, match="not found"):
        corpora.ravdess(tmp_path / "missing")


def test_goemotions_dev():
    rows = corpora.goemotions(GOEMOTIONS_DEV)
    assert len(rows) == 5426
    assert all(e.modality == "text" and e.text for e in rows)
    first = rows[0]  # "Is this in New Orleans?? ..." id 4 = neutral in labels.txt
    assert first.text.startswith("Is this in New Orleans") and first.label_name == "neutral"
    second = rows[1]  # ids "3,4" = joy, neutral: the first label is kept, both are recorded
    assert second.label_name == "happy"
    assert second.meta == {"id": "ee84bjg", "labels": [LABEL_TO_ID["happy"], LABEL_TO_ID["neutral"]], "multi": True}
    assert rows[2].label_name == "sad"  # id 5 = sadness
    multi = sum(e.meta["multi"] for e in rows)
    assert multi == 480
    single = corpora.goemotions(GOEMOTIONS_DEV, single_label_only=True)
    assert len(single) == 5426 - multi and not any(e.meta["multi"] for e in single)
    assert {e.label_name for e in rows} == set(LABELS)


def test_meld_dev():
    rows = corpora.meld(MELD_DEV)
    assert len(rows) == 1109
    first = rows[0]
    assert first.text == "Oh my God, he’s lost it. He’s totally lost it."
    assert first.label_name == "sad" and first.speaker == "Phoebe"  # Emotion "sadness"
    assert first.meta["sentiment"] == "negative" and first.meta["dialogue_id"] == "0"
    assert rows[1].label_name == "surprised"  # "surprise"
    assert {e.label_name for e in rows} == set(LABELS)


def test_meld_odd_encodings(tmp_path):
    header = "Sr No.,Utterance,Speaker,Emotion\n"
    cp1252 = tmp_path / "cp1252.csv"  # a raw 0x92 byte: not UTF-8 at all
    cp1252.write_bytes((header + "1,He’s here,Ross,joy\n").encode("cp1252"))
    assert b"He\x92s" in cp1252.read_bytes()
    c1 = tmp_path / "c1.csv"  # UTF-8 holding the C1 control U+0092 (cp1252 once read as Latin-1)
    c1.write_text(header + "1,He\x92s here,Ross,anger\n", encoding="utf-8")
    mojibake = tmp_path / "mojibake.csv"  # UTF-8 read as cp1252 and saved again
    mojibake.write_text(header + "1,He’s here,Ross,fear\n".encode().decode("cp1252"), encoding="utf-8")
    for path in (cp1252, c1, mojibake):
        (row,) = corpora.meld(path)
        assert row.text == "He’s here", path.name
    assert corpora.meld(mojibake)[0].label_name == "fearful"


def test_meld_bad_label_names_the_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Utterance,Emotion\nhi,joy\nhey,bored\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.csv row 3: unknown emotion label 'bored'"):
        corpora.meld(path)


def test_fer2013_val_arrays_are_remapped():
    images, labels = corpora.fer2013_arrays(FER_VAL)
    assert images.shape == (5383, 48, 48) and images.dtype == np.uint8
    with np.load(FER_VAL) as raw:
        classes, raw_labels = list(raw["classes"]), raw["labels"]
    assert classes == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    # npz class k -> taxonomy id of its name; counts move with the names
    for k, name in enumerate(["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]):
        assert (labels == LABEL_TO_ID[name]).sum() == (raw_labels == k).sum()
    assert np.array_equal(labels[raw_labels == 3], np.full((raw_labels == 3).sum(), LABEL_TO_ID["happy"]))


def test_fer2013_examples():
    rows = corpora.fer2013(FER_VAL)
    assert len(rows) == 5383
    assert rows[0].modality == "face" and rows[0].image.shape == (48, 48) and rows[0].meta["face_crop"]


def _write_meta(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.csv").write_text(text, encoding="utf-8")
    return folder


def test_folder_text_and_files(tmp_path):
    clip = next(RAVDESS.glob("Actor_01/*.flac"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / clip.name).symlink_to(clip)
    images, _ = corpora.fer2013_arrays(FER_VAL)
    import cv2

    cv2.imwrite(str(tmp_path / "face.PNG"), images[0])
    folder = _write_meta(tmp_path, f"file_name,text,label\na/{clip.name},,Calm\nface.PNG,,joy\n,I am furious,anger\n")
    rows = corpora.folder(folder)
    assert [(e.modality, e.label_name) for e in rows] == [
        ("speech", "neutral"),
        ("face", "happy"),
        ("text", "angry"),
    ]
    assert rows[0].path == folder / "a" / clip.name and rows[2].text == "I am furious"


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(CorpusError, match=r"no metadata\.csv"):
        corpora.folder(tmp_path)
    _write_meta(tmp_path, "text,label\nhello,happy\nugh,bored\nmeh,contempt\n")
    with pytest.raises(CorpusError, match=r"row 3: unknown emotion label 'bored'.*row 4: .*'contempt'"):
        corpora.folder(tmp_path)
    _write_meta(tmp_path, "file_name,label\nmissing.wav,happy\n")
    with pytest.raises(CorpusError, match=r"row 2: file not found: missing\.wav"):
        corpora.folder(tmp_path)
    _write_meta(tmp_path, "file_name,label\nclip.txt,happy\n")
    with pytest.raises(CorpusError, match="cannot tell the modality"):
        corpora.folder(tmp_path)
    _write_meta(tmp_path, "name,emotion\nx,happy\n")
    with pytest.raises(CorpusError, match="needs a label column"):
        corpora.folder(tmp_path)


def test_to_folder_round_trip(tmp_path):
    speech = corpora.ravdess(RAVDESS, actors=[17])[:3]
    faces = corpora.fer2013(FER_VAL)[:3]
    text = corpora.meld(MELD_DEV)[:3]
    meta_path = corpora.to_folder(speech + faces + text, tmp_path / "set")
    header = meta_path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "file_name,text,label,speaker,face_crop"
    back = corpora.folder(tmp_path / "set")
    assert [(e.modality, e.label) for e in back] == [(e.modality, e.label) for e in speech + faces + text]
    assert back[0].path.resolve() == speech[0].path.resolve()  # symlinked, not copied
    assert back[3].meta["face_crop"] and back[6].text == text[0].text and back[6].speaker == text[0].speaker
    import cv2

    png = cv2.imread(str(back[3].path), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(png, faces[0].image)


def test_to_folder_text_only_is_plain_text_label(tmp_path):
    rows = [Example("text", 1, text="yay"), Example("text", 2, text="boo, hiss")]
    meta_path = corpora.to_folder(rows, tmp_path)
    assert meta_path.read_text(encoding="utf-8") == 'text,label\nyay,happy\n"boo, hiss",sad\n'
    assert [e.text for e in corpora.folder(tmp_path)] == ["yay", "boo, hiss"]


def test_shared_data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EMO_SHARED_DATA", str(tmp_path))
    assert corpora.shared_data_dir() == tmp_path
    monkeypatch.delenv("EMO_SHARED_DATA")
    assert corpora.shared_data_dir() == corpora.REPO_ROOT.parent / "shared" / "data"


def test_ased_speaker_splits_are_disjoint_and_cover_every_speaker(shared_data):
    train, dev, test = (
        set(s) for s in (corpora.ASED_TRAIN_SPEAKERS, corpora.ASED_DEV_SPEAKERS, corpora.ASED_TEST_SPEAKERS)
    )
    assert not (train & dev or train & test or dev & test) and train | dev | test == set(range(1, 66))
    everything = corpora.ased(shared_data / "ased-speech-16k")
    dev_ex = corpora.ased(shared_data / "ased-speech-16k", speakers=corpora.ASED_DEV_SPEAKERS)
    assert len(everything) == 2474 and len(dev_ex) == 446
    assert {e.label_name for e in everything} == set(corpora.ASED_LABELS)
    assert {e.meta["speaker_number"] for e in dev_ex} == dev and all(e.path.is_file() for e in dev_ex[:20])
    assert dev_ex[0].meta["corpus"] == "ased" and dev_ex[0].speaker.startswith("ased-")


def test_ased_bad_metadata_names_the_row(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,label,speaker\naudio/x.flac,bored,ased-01\n")
    with pytest.raises(corpora.CorpusError, match=r"metadata\.csv:2"):
        corpora.ased(tmp_path)
