"""Batch inference: a folder or table in, one parquet row per input out; split across processes; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from backend import predict as cli
from backend.batch_predict import list_items, merge, parts_dir, predict_shard
from backend.labels import LABELS
from backend.model import EmotionModel
from backend.predictor import Predictor
from backend.settings import load_settings


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(folder / f"clip{i}.wav", (rng.standard_normal(16_000 + 4000 * i) * 0.1).astype(np.float32), 16_000)
    (folder / "sub").mkdir()
    sf.write(folder / "sub" / "deep.flac", (rng.standard_normal(20_000) * 0.1).astype(np.float32), 16_000)
    (folder / "broken.wav").write_bytes(b"not audio at all")
    (folder / "notes.txt").write_text("ignored: not media")
    return folder


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path, tiny_backbones) -> Predictor:
    model = EmotionModel.from_pretrained(tiny_model_dir, cache=Path(tiny_backbones["cache"]))
    return Predictor(model, load_settings(cache=Path(tiny_backbones["cache"]), asr=False))


class Counting:
    """Wraps a predictor and counts samples predicted."""

    def __init__(self, inner: Predictor) -> None:
        self.inner, self.n = inner, 0

    def predict_batch(self, samples, **kwargs):
        self.n += len(samples)
        return self.inner.predict_batch(samples, **kwargs)

    def predict(self, sample):
        self.n += 1
        return self.inner.predict(sample)


def test_lists_media_recursively(media: Path) -> None:
    keys = [it.key for it in list_items(media)]
    assert keys == sorted(keys) and "sub/deep.flac" in keys and "broken.wav" in keys
    assert not any(k.endswith(".txt") for k in keys)


def test_two_ranks_then_merge_cover_everything_once(media: Path, predictor: Predictor, tmp_path: Path) -> None:
    items, out, settings = list_items(media), tmp_path / "r.parquet", predictor.settings
    counts = [
        predict_shard(items, out, Counting(predictor), settings, rank=r, world=2, batch_size=2, workers=0)
        for r in (0, 1)
    ]
    assert counts == [4, 3]  # 7 inputs split between two processes
    table = merge(items, out)
    assert list(table["key"]) == [it.key for it in items] and set(table["rank"]) == {0, 1}
    bad = table[table["key"] == "broken.wav"].iloc[0]
    assert "not audio" in bad["error"] and pd.isna(bad["label"])
    good = table[table["error"].isna()]
    assert len(good) == 6 and set(good["label"]) <= set(LABELS)
    assert np.allclose(good[[f"p_{k}" for k in LABELS]].sum(axis=1), 1.0, atol=1e-4)


def test_resume_skips_done_inputs(media: Path, predictor: Predictor, tmp_path: Path) -> None:
    items, out, settings = list_items(media), tmp_path / "r.parquet", predictor.settings
    predict_shard(items[:3], out, predictor, settings, batch_size=2, workers=0)  # a run stopped after 3 inputs
    counting = Counting(predictor)
    assert predict_shard(items, out, counting, settings, batch_size=2, workers=0) == 4
    assert counting.n == 4  # only the 4 inputs not done before reach the model (broken.wav sorts first: done)
    table = merge(items, out)
    assert len(table) == len(items) == table["key"].nunique()
    assert len(list(parts_dir(out).glob("rank0-*.parquet"))) == 2 + 2  # earlier parts kept, new ones added


def test_cli_table_with_text_and_workers(
    tiny_model_dir: Path, tiny_backbones, media: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("EMO_CACHE", tiny_backbones["cache"])
    monkeypatch.setenv("EMO_ASR", "0")
    monkeypatch.setenv("EMO_DEVICE", "cpu")
    table = tmp_path / "in.csv"
    pd.DataFrame({"path": [str(media / "clip0.wav"), None], "text": [None, "I am thrilled"]}).to_csv(table, index=False)
    out = tmp_path / "res.parquet"
    assert cli.main(["--batch", str(table), "--out", str(out), "--model", str(tiny_model_dir), "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 2 and summary["errors"] == 0
    result = pd.read_parquet(out)
    assert list(result["modalities"]) == ["speech", "text"]


def test_cli_batch_needs_out(media: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--batch", str(media)])


def test_adapt_reads_each_folder_as_one_voice(media: Path, predictor: Predictor, tmp_path: Path) -> None:
    settings = load_settings(asr=False)
    items = list_items(media)
    reference = predictor.model.heads.speech_head.reference_mean
    plain_out, adapted_out = tmp_path / "plain.parquet", tmp_path / "adapted.parquet"
    try:
        reference.fill_(0.5)  # a trained model's mean (the tiny folder ships zeros, which means "do not adapt")
        predict_shard(items, plain_out, predictor, settings, batch_size=4, workers=0)
        predict_shard(items, adapted_out, predictor, settings, batch_size=4, workers=0, adapt=True)
    finally:
        reference.zero_()
    plain, adapted = (merge(items, out).set_index("key") for out in (plain_out, adapted_out))
    cols = [f"p_{k}" for k in LABELS]
    moved = (plain[cols] - adapted[cols]).abs().max(axis=1)
    assert (moved[[f"clip{i}.wav" for i in range(5)]] > 1e-5).all()  # five clips in one folder: adapted
    assert moved["sub/deep.flac"] < 1e-6  # one clip alone in its folder: too little to go on
    assert adapted.loc["broken.wav", "error"] and adapted["error"].notna().sum() == 1
