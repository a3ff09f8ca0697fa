"""Tables of a speech training run (train/device_job.sh speech): variants, corpora, robustness, adaptation.

Reads <run>/<name>.json and <name>_dev.npz as train_speech writes them and prints Markdown (or JSON with
--json). Unlabelled speaker adaptation is scored from the saved dev embeddings: the classifier is linear in the
embedding, so shifted logits are exact (its weights are recovered by least squares from embedding/logit pairs).

    python -m train.speech_report --run runs/v2/speech
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.adapt import group_stats
from backend.labels import LABELS
from train.conditions import CONDITIONS
from train.fit_speech import SHARED_LABELS, shared_uar
from train.gate_stats import mcnemar_exact, paired_bootstrap
from train.metrics import classification_report


def adapted_logits(dev: dict, corpus: str, by: str) -> np.ndarray:
    """Dev logits after the product's unlabelled adaptation (backend.adapt) per speaker (by="speaker") or over the
    whole set (by="folder"), each group's statistics taken over all its clips."""
    emb = np.concatenate([dev["ravdess_emb"], dev["ased_emb"]])
    logits = np.concatenate([dev["ravdess_logits"], dev["ased_logits"]])
    design = np.hstack([emb, np.ones((len(emb), 1))])
    weights = np.linalg.lstsq(design, logits, rcond=None)[0]
    e = dev[f"{corpus}_emb"]
    groups = [str(g) for g in dev[f"{corpus}_speakers"]] if by == "speaker" else ["folder"] * len(e)
    stats = group_stats(e, groups)
    shifts = {g: s.shift(dev["train_emb_mean"]) for g, s in stats.items()}
    shifted = np.stack([row if shifts[g] is None else row + shifts[g] for row, g in zip(e, groups)])
    return np.hstack([shifted, np.ones((len(e), 1))]) @ weights


def paired(labels: np.ndarray, logits_a: np.ndarray, logits_b: np.ndarray, shared: bool = False) -> dict:
    """b vs a on the same clips: exact McNemar on accuracy and a paired-bootstrap 95% interval of the UAR gain."""
    if shared:
        allowed = np.array([name in SHARED_LABELS for name in LABELS])
        keep = allowed[labels]
        labels, logits_a, logits_b = labels[keep], logits_a[keep], logits_b[keep]
        logits_a, logits_b = (np.where(allowed, x, -np.inf) for x in (logits_a, logits_b))
    pa, pb = logits_a.argmax(1), logits_b.argmax(1)
    right_a, right_b = pa == labels, pb == labels
    test = mcnemar_exact(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
    deltas = paired_bootstrap(labels, pa, pb, metric="uar")
    return {
        "n": len(labels),
        "uar_gain": float(np.mean(deltas)),
        "uar_gain_95ci": [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))],
        "mcnemar": test,
    }


def comparisons(run: dict[str, dict]) -> dict[str, dict]:
    """The paired tests behind the choices: channel augmentation, speaker and folder adaptation."""
    out = {}
    if {"l16_s0", "l16_noaug"} <= set(run):
        for corpus in ("ravdess", "ased"):
            a, b = run["l16_noaug"]["dev"], run["l16_s0"]["dev"]
            out[f"channel_augmentation_{corpus}_clean"] = paired(
                a[f"{corpus}_labels"], a[f"{corpus}_logits"], b[f"{corpus}_logits"]
            )
    for name, corpus in (("l16_s0", "ravdess"), ("l16_s0", "ased"), ("loco_rav", "ased"), ("loco_ased", "ravdess")):
        if name in run:
            dev = run[name]["dev"]
            for by in ("speaker", "folder"):
                out[f"{by}_adaptation_{name}_on_{corpus}"] = paired(
                    dev[f"{corpus}_labels"], dev[f"{corpus}_logits"], adapted_logits(dev, corpus, by), shared=True
                )
    return out


def load_run(run: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(run.glob("*.json")):
        summary = json.loads(f.read_text())
        if "dev_sets" in summary and (run / f"{f.stem}_dev.npz").is_file():
            out[f.stem] = {"summary": summary, "dev": dict(np.load(run / f"{f.stem}_dev.npz"))}
    return out


def rows(run: dict[str, dict]) -> list[dict]:
    table = []
    for name, item in run.items():
        s, dev = item["summary"], item["dev"]
        row = {
            "variant": name,
            "trained_on": s["config"]["corpora"].strip("()").replace("'", "").rstrip(","),
            "lora": f"{s['model_config']['speech_lora_rank']} on {','.join(s['model_config']['speech_lora_targets'])}",
            "unfreeze_top": s["model_config"].get("speech_unfreeze_top", 0),
            "channel_augmentation": s["config"]["conditions"],
            "seed": s["config"]["seed"],
            "best_epoch": s["best_epoch"],
        }
        for corpus in ("ravdess", "ased"):
            logits, labels = dev[f"{corpus}_logits"], dev[f"{corpus}_labels"]
            report = classification_report(labels, logits.argmax(1))
            row[f"{corpus}_acc"], row[f"{corpus}_uar"] = report["accuracy"], report["uar"]
            row[f"{corpus}_uar_shared"] = shared_uar(logits, labels)
            for by in ("speaker", "folder"):
                row[f"{corpus}_uar_shared_{by}_adapted"] = shared_uar(adapted_logits(dev, corpus, by), labels)
        row["robustness"] = {
            c: {k: v["accuracy"] if k == "ravdess" else v["uar"] for k, v in s.get("robustness", {}).get(c, {}).items()}
            for c in CONDITIONS
        }
        row["calibration"] = s["calibration"]
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    f = "{:.3f}".format
    lines = [
        "| variant | trained on | LoRA | top layers | channel aug. | seed | RAVDESS 17-20 acc | UAR | ASED dev UAR | "
        "shared-class UAR RAVDESS / ASED | + speaker adaptation | + folder adaptation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['variant']} | {r['trained_on']} | {r['lora']} | {r['unfreeze_top']} | {r['channel_augmentation']} | "
            f"{r['seed']} | {f(r['ravdess_acc'])} | {f(r['ravdess_uar'])} | {f(r['ased_uar'])} | "
            f"{f(r['ravdess_uar_shared'])} / {f(r['ased_uar_shared'])} | "
            f"{f(r['ravdess_uar_shared_speaker_adapted'])} / {f(r['ased_uar_shared_speaker_adapted'])} | "
            f"{f(r['ravdess_uar_shared_folder_adapted'])} / {f(r['ased_uar_shared_folder_adapted'])} |"
        )
    lines += ["", "Robustness (RAVDESS actors 17-20 accuracy / ASED dev UAR):", ""]
    lines.append("| condition | " + " | ".join(r["variant"] for r in table) + " |")
    lines.append("|---|" + "---|" * len(table))
    for c in CONDITIONS:
        cells = []
        for r in table:
            v = r["robustness"].get(c, {})
            cells.append(f"{f(v['ravdess'])} / {f(v['ased'])}" if "ravdess" in v and "ased" in v else "-")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.speech_report", description=__doc__)
    p.add_argument("--run", default="runs/v2/speech")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    run = load_run(Path(args.run))
    table, tests = rows(run), comparisons(run)
    if args.json:
        print(json.dumps({"variants": table, "paired": tests}, default=float))
        return
    print(markdown(table))
    print("Paired comparisons (same dev clips; UAR gain with its paired-bootstrap 95% interval, exact McNemar):\n")
    print("| comparison | n | UAR gain | 95% CI | McNemar b / c | p (two-sided) |")
    print("|---|---|---|---|---|---|")
    for name, t in tests.items():
        lo, hi = t["uar_gain_95ci"]
        m = t["mcnemar"]
        print(
            f"| {name} | {t['n']} | {t['uar_gain']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {m['b']} / {m['c']} | {m['p_two_sided']:.3g} |"
        )


if __name__ == "__main__":
    main()
