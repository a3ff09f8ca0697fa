"""Corrections from the store as training items (soft labels, hard negatives, reliability weights, consent,
the held-out slice), replay of the base corpora, and the batch builder."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from backend.labels import LABEL_TO_ID
from labeling.store import Store
from tests.retrain_helpers import add_prediction, add_speech, add_text, ravdess_examples
from train.corrections import in_holdout, load_corrections, split
from train.replay import ReplayPool
from train.retrain_step import build_inputs


def face_png(shared: Path, index: int = 1) -> bytes:
    """A FER2013 val face the Haar cascade finds once upscaled, as the app keeps an image (png)."""
    face = np.load(shared / "faces" / "fer2013_val.npz")["images"][index]
    frame = np.full((300, 300), 150, dtype=np.uint8)
    frame[60:240, 60:240] = cv2.resize(face, (180, 180), interpolation=cv2.INTER_CUBIC)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([frame] * 3, axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def store(tmp_path: Path, shared_data: Path) -> Store:
    with Store.open(tmp_path / "studio.db", k=3, gold_rate=0.0) as s:
        yield s


def test_items_carry_soft_labels_hard_negatives_and_weights(store: Store, shared_data: Path) -> None:
    speech = [add_speech(store, ex) for ex in ravdess_examples(shared_data, [3], 2)]
    disputed, agreed = speech
    add_prediction(store, disputed, "sad")
    for annotator, label in (("a", "angry"), ("b", "angry"), ("c", "happy")):
        store.vote(disputed, annotator, label)
    add_prediction(store, agreed, "neutral")
    store.vote(agreed, "a", "neutral")  # the model was right: no hard negative
    items = {it.clip_id: it for it in load_corrections(store)}
    d = items[disputed]
    assert d.target[LABEL_TO_ID["angry"]] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert d.target[LABEL_TO_ID["happy"]] == pytest.approx(0.5 / 3)
    assert d.target.sum() == pytest.approx(1.0) and d.label == LABEL_TO_ID["angry"]
    assert d.negative == LABEL_TO_ID["sad"] and d.trusted and d.weight == pytest.approx(0.5)
    a = items[agreed]
    assert a.negative == -1 and not a.trusted  # one vote: trained on, never judged on
    assert a.audio is not None and a.audio.dtype == np.float32 and a.modalities == ("speech",)


def test_gold_and_reliability_set_the_weight(store: Store, shared_data: Path) -> None:
    clips = [add_text(store, f"sentence number {i} about feelings") for i in range(4)]
    for clip in clips[:3]:
        store.add_gold(clip, "sad")
        store.vote(clip, "spammer", "happy")  # wrong on every gold item
        store.vote(clip, "careful", "sad")
    store.vote(clips[3], "spammer", "happy")
    items = {it.clip_id: it for it in load_corrections(store)}
    assert items[clips[0]].weight == 1.0 and items[clips[0]].label == LABEL_TO_ID["sad"]
    assert items[clips[0]].target.max() == 1.0  # gold: one-hot, whatever the votes say
    assert items[clips[3]].weight == pytest.approx(0.2)  # (0 + 1) / (3 + 2): the spammer's reliability


def test_unconsented_clips_and_media_are_left_out(store: Store, shared_data: Path) -> None:
    kept = add_text(store, "I am thrilled with this")
    hidden = store.add_clip(None, sha256="ab" * 32, ext=".wav", modalities=["speech"], consent=False)
    withdrawn = add_speech(store, ravdess_examples(shared_data, [4], 1)[0])
    for clip in (kept, hidden, withdrawn):
        store.vote(clip, "a", "happy")
    store.set_consent(withdrawn, False)
    assert [it.clip_id for it in load_corrections(store)] == [kept]


def test_images_give_face_crops(store: Store, shared_data: Path) -> None:
    clip = store.add_clip(face_png(shared_data), ext=".png", modalities=["face"], consent=True)
    store.vote(clip, "a", "fearful")
    (item,) = load_corrections(store)
    assert item.faces.shape == (1, 48, 48) and item.faces.dtype == np.float32
    assert item.faces.min() >= 0.0 and item.faces.max() <= 1.0
    assert item.frames[0].shape == (300, 300, 3) and item.modalities == ("face",)


def test_media_kinds_follow_the_store_extensions() -> None:
    from labeling.io import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS
    from train.corrections import media_kind

    assert {media_kind(e) for e in AUDIO_EXTS} == {"audio"} and {media_kind(e) for e in IMAGE_EXTS} == {"image"}
    assert {media_kind(e) for e in VIDEO_EXTS} == {"video"} and media_kind(".txt") is None


def test_holdout_is_a_stable_hash_slice() -> None:
    rng = np.random.default_rng(0)
    ids = [f"{rng.integers(1 << 62):064x}" for _ in range(3000)]
    share = np.mean([in_holdout(i, 0.2) for i in ids])
    assert 0.17 < share < 0.23
    assert [in_holdout(i, 0.2) for i in ids[:50]] == [in_holdout(i, 0.2) for i in ids[:50]]
    assert not any(in_holdout(i, 0.0) for i in ids) and all(in_holdout(i, 1.0) for i in ids)


def test_split_keeps_untrusted_holdout_clips_out_of_both(store: Store) -> None:
    clips = [add_text(store, f"text {i}") for i in range(40)]
    for i, clip in enumerate(clips):
        store.vote(clip, "a", "happy")
        if i % 2:
            store.vote(clip, "b", "happy")
    items = load_corrections(store)
    train, held = split(items, 0.5)
    held_ids = {it.clip_id for it in held}
    assert held and all(it.trusted for it in held)
    assert not held_ids & {it.clip_id for it in train}
    assert len(train) + len(held) < len(items)  # single-vote held-out clips: neither trained nor judged on


def test_replay_pool_draws_reproducibly(shared_data: Path) -> None:
    pool = ReplayPool.load(shared_data, ("speech", "text", "face"), limit=10, seed=0)
    assert pool.size("speech") == pool.size("text") == pool.size("face") == 10
    a = pool.sample("text", 4, np.random.default_rng(5))
    b = pool.sample("text", 4, np.random.default_rng(5))
    assert [x.text for x in a] == [x.text for x in b]
    speech = pool.sample("speech", 2, np.random.default_rng(1))
    assert all(x.audio is not None and x.target.sum() == 1.0 and x.negative == -1 for x in speech)
    face = pool.sample("face", 3, np.random.default_rng(1))
    assert face[0].faces.shape == (1, 48, 48) and face[0].modalities == ("face",)


def test_build_inputs_per_branch_with_seeded_augmentation(shared_data: Path) -> None:
    pool = ReplayPool.load(shared_data, ("speech", "text", "face"), limit=6, seed=0)
    rows = [
        *pool.sample("speech", 2, np.random.default_rng(0)),
        *pool.sample("text", 3, np.random.default_rng(0)),
        *pool.sample("face", 2, np.random.default_rng(0)),
    ]
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    inputs, targets = build_inputs(rows, ("speech", "text", "face"), cpu, seed=7, max_seconds=2.0)
    torch.manual_seed(0)
    again, _ = build_inputs(rows, ("speech", "text", "face"), cpu, seed=7, max_seconds=2.0)
    assert len(inputs["speech"]) == 2 and len(inputs["text"]) == 3 and inputs["face"].shape == (2, 1, 48, 48)
    assert targets["text"].owner.tolist() == [2, 3, 4] and targets["face"].target.shape == (2, 7)
    assert all(len(w) <= 2.0 * 16_000 / 0.9 + 1 for w in inputs["speech"])  # cropped (then sped up or slowed)
    assert all(torch.equal(x, y) for x, y in zip(inputs["speech"], again["speech"]))
    assert torch.equal(inputs["face"], again["face"])
    plain, _ = build_inputs(rows, ("speech",), cpu)
    assert np.array_equal(plain["speech"][0].numpy(), rows[0].audio[: 30 * 16_000])  # evaluation: no augmentation


def test_replay_targets_mix_the_champions_probabilities(shared_data: Path, tiny_model_dir: Path) -> None:
    from backend.branches import face_eval_logits, speech_forward_batched, text_forward
    from backend.model import EmotionModel

    model = EmotionModel.from_pretrained(tiny_model_dir, cache=tiny_model_dir / "cache")
    pool = ReplayPool.load(shared_data, ("speech", "text", "face"), limit=5, seed=0)
    plain = {m: pool.sample(m, 5, np.random.default_rng(3)) for m in ("speech", "text", "face")}
    pool.attach_teacher(model, 0.0)  # alpha 0: labels only, no teacher computed
    assert not pool.teacher and all(it.target.max() == 1.0 for it in plain["text"])
    pool.attach_teacher(model, 0.8)
    with torch.inference_mode():
        expected = {
            "speech": speech_forward_batched(model, [pool._wave(i) for i in range(5)]),
            "text": text_forward(model, [t for t, _ in pool.text])[0],
            "face": face_eval_logits(model, pool.face[0]),
        }
    for modality, logits in expected.items():
        teacher = logits.float().softmax(-1).numpy()
        assert np.allclose(pool.teacher[modality], teacher, atol=1e-5)
        for before, after in zip(plain[modality], pool.sample(modality, 5, np.random.default_rng(3))):
            i = int(after.clip_id.rsplit(":", 1)[1])
            assert np.allclose(after.target, 0.2 * before.target + 0.8 * teacher[i], atol=1e-6)
            assert abs(after.target.sum() - 1.0) < 1e-5
