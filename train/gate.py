"""The promotion gate: a challenger replaces the champion only when a paired test shows it better on held-out
corrections and non-inferior on every fixed dev set.

Superiority: both models answer the same trusted held-out corrections; the gate bootstraps the paired difference of
the primary metric (accuracy) and promotes only when its one-sided (1 - alpha) lower bound is above `min_gain` (0)
and at least `min_n` clips were judged (`test="mcnemar"`: the exact one-sided McNemar p below alpha instead; the
McNemar table and p are recorded either way). Non-inferiority: on each dev set and gated metric, H0 "challenger
worse by more than the margin" must be rejected; the margin is one binomial standard error at 0.5 for that set's
size (0.5 / sqrt(n), at least 0.01; `tolerance` overrides it), and the checks share alpha through Holm's step-down
correction. Promotion needs every test to pass (an intersection-union test: the chance of promoting a challenger
that is not better is at most alpha).

Gold audit: the held-out labels come from the same crowd as the training labels, so a crowd that poisons both can
make a poisoned challenger look better. Before any of that counts, the crowd's own labels (reliability-weighted,
without the gold mark) must match gold on at least `audit_min` (90%) of the gold clips that have votes, once
`audit_min_n` (10) of them do (labeling.aggregate.gold_audit); below that floor nothing is promoted (with fewer
voted gold clips the audit is recorded but not judged).

Dev sets are fixed subsets (same seed, same examples) of the splits no training ever sees: RAVDESS dev actors
17-20 (speech branch), GoEmotions-ekman dev single-label (text branch), FER2013 val (face branch). The held-out
corrections are scored through the predictor (fusion of every modality the clip has; no ASR) against their
trusted labels; the slice rotates between runs (train.corrections.partition). A rotated slice may hold clips an
earlier run trained the champion on: that favours the champion, so it can only make promotion harder.

    python -m train.gate --db data/studio.db --champion models/v3 --challenger runs/x/challenger [--record]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.branches import face_eval_logits, speech_forward_batched, text_forward
from backend.labels import LABEL_TO_ID, LABELS
from backend.model import EmotionModel
from backend.settings import Settings, load_settings
from labeling.aggregate import aggregate_labels, gold_audit
from labeling.store import Store, now_iso
from train import gate_stats
from train.corpora import SPEECH_DEV_ACTORS, fer2013_arrays, goemotions, ravdess, shared_data_dir
from train.corrections import CorrectionItem
from train.evaluate import parse_actors, subsample
from train.fit_speech import load_clips
from train.metrics import classification_report

log = logging.getLogger(__name__)

DEV_NAMES = {"speech": "ravdess_dev", "text": "goemotions_dev", "face": "fer2013_val"}
CORRECTIONS = "corrections_holdout"
HEADLINE = ("n", "accuracy", "uar", "macro_f1")
ANSWERS = "answers"  # per-example true and predicted ids kept beside the figures for the paired tests


@dataclass
class GateConfig:
    """Sizes: 0 = the whole split, < 0 = leave that dev set out. tolerance: a fixed non-inferiority margin for
    every dev set (None: from each set's size); min_gain: the bound the improvement's lower limit must exceed."""

    data: Path = field(default_factory=shared_data_dir)
    speech_actors: tuple[int, ...] = tuple(SPEECH_DEV_ACTORS)
    speech_size: int = 0
    text_size: int = 1000
    face_size: int = 1000
    tolerance: float | None = None
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    primary: str = "accuracy"
    min_gain: float = 0.0
    seed: int = 0
    alpha: float = 0.05
    min_n: int = 30
    test: str = "bootstrap"
    n_boot: int = 2000
    margin_se: float = 1.0
    margin_floor: float = 0.01
    audit_min: float = 0.9  # the crowd's labels must match gold on at least this share of voted gold clips
    audit_min_n: int = 10  # ... once at least this many gold clips have votes (fewer: not judged)

    def __post_init__(self) -> None:
        if not 0.0 <= self.audit_min <= 1.0:
            raise ValueError(f"the gold audit's floor is a share between 0 and 1, got {self.audit_min}")


@dataclass
class DevSets:
    """Decoded inputs and label ids of each dev set: speech clips, texts, face crops (N, 48, 48)."""

    speech: tuple[list[np.ndarray], np.ndarray] | None = None
    text: tuple[list[str], np.ndarray] | None = None
    face: tuple[np.ndarray, np.ndarray] | None = None
    speech_split: str = "dev actors 17-20"


def load_dev_sets(cfg: GateConfig) -> DevSets:
    """The same fixed subsets on every call with the same config."""
    from backend.face import normalize_face

    data, dev = Path(cfg.data), DevSets()
    if cfg.speech_size >= 0:
        clips = subsample(ravdess(data / "ravdess-speech-16k", cfg.speech_actors), cfg.speech_size, cfg.seed)
        dev.speech = (load_clips(clips), np.array([e.label for e in clips]))
        dev.speech_split = "actors " + ",".join(str(a) for a in cfg.speech_actors)
    if cfg.text_size >= 0:
        texts = goemotions(data / "text" / "goemotions-ekman" / "dev.tsv", single_label_only=True)
        texts = subsample(texts, cfg.text_size, cfg.seed)
        dev.text = ([e.text for e in texts], np.array([e.label for e in texts]))
    if cfg.face_size >= 0:
        images, labels = fer2013_arrays(data / "faces" / "fer2013_val.npz")
        keep = np.array(subsample(list(range(len(images))), cfg.face_size, cfg.seed))
        dev.face = (np.stack([normalize_face(images[i]) for i in keep]).astype(np.float32), labels[keep])
    return dev


def headline(y_true: np.ndarray, y_pred: np.ndarray, modality: str, split: str) -> dict:
    """Headline figures plus the answers the paired tests need (decide() leaves them out of what it records)."""
    report = classification_report(y_true, y_pred, LABELS)
    answers = {"y": np.asarray(y_true).tolist(), "pred": np.asarray(y_pred).tolist()}
    return {**{k: report[k] for k in HEADLINE}, "modality": modality, "split": split, ANSWERS: answers}


def evaluate_dev(model: EmotionModel, dev: DevSets) -> dict[str, dict]:
    """Each branch alone on its own dev set."""
    model.eval()
    out = {}
    with torch.inference_mode():
        if dev.speech is not None:
            logits = speech_forward_batched(model, dev.speech[0])
            out[DEV_NAMES["speech"]] = headline(dev.speech[1], logits.argmax(-1).numpy(), "speech", dev.speech_split)
        if dev.text is not None:
            texts = dev.text[0]
            logits = torch.cat(
                [text_forward(model, texts[a : a + 64])[0].float().cpu() for a in range(0, len(texts), 64)]
            )
            out[DEV_NAMES["text"]] = headline(dev.text[1], logits.argmax(-1).numpy(), "text", "dev (single-label)")
        if dev.face is not None:
            logits = face_eval_logits(model, dev.face[0])
            out[DEV_NAMES["face"]] = headline(dev.face[1], logits.argmax(-1).numpy(), "face", "val")
    return out


def evaluate_corrections(
    model: EmotionModel, items: list[CorrectionItem], settings: Settings | None = None
) -> dict | None:
    """Fused predictions through the app's predictor (ASR off: both models get the same inputs) vs trusted labels."""
    if not items:
        return None
    from backend.predictor import Predictor

    predictor = Predictor(model, dataclasses.replace(settings or load_settings(), asr=False))
    preds = [LABEL_TO_ID[p.label] for p in predictor.predict_chunked([it.sample() for it in items])]
    combos = ["+".join(it.modalities) for it in items]  # e.g. "speech+text" for audio with typed text
    main = max(sorted(set(combos)), key=combos.count)
    return headline(np.array([it.label for it in items]), np.array(preds), main, "held-out corrections")


def evaluate(model: EmotionModel, dev: DevSets, held: list[CorrectionItem], settings: Settings | None = None) -> dict:
    """All figures the gate compares: every dev set plus the held-out corrections (None when there are none)."""
    return {**evaluate_dev(model, dev), CORRECTIONS: evaluate_corrections(model, held, settings)}


def public(figures: dict) -> dict:
    """evaluate()'s figures without the per-example answers (what is recorded and shown)."""
    return {k: ({m: x for m, x in v.items() if m != ANSWERS} if v else v) for k, v in figures.items()}


def paired(old: dict, new: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, champion answers, challenger answers) of one set; both models must have answered the same examples."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (old[ANSWERS]["y"], old[ANSWERS]["pred"], new[ANSWERS]["pred"]))
    assert np.array_equal(y, np.asarray(new[ANSWERS]["y"])), "champion and challenger were judged on different sets"
    return y, a, b


def superiority(old: dict | None, new: dict | None, cfg: GateConfig) -> dict:
    """The paired test on the held-out corrections: difference, bootstrap interval, McNemar, pass or not."""
    if not old or not new:
        return {"n": 0, "passed": False}
    y, a, b = paired(old, new)
    deltas = gate_stats.paired_bootstrap(y, a, b, cfg.primary, cfg.n_boot, cfg.seed)
    mcnemar = gate_stats.mcnemar_exact(int(np.sum((a == y) & (b != y))), int(np.sum((a != y) & (b == y))))
    delta = float(new[cfg.primary] - old[cfg.primary])
    low, high = gate_stats.lower_bound(deltas, cfg.alpha), float(np.quantile(deltas, 1 - cfg.alpha))
    if cfg.test == "mcnemar":
        significant = mcnemar["p_one_sided"] < cfg.alpha and delta > cfg.min_gain
    else:
        significant = low > cfg.min_gain
    return {
        "n": int(y.size),
        "metric": cfg.primary,
        "champion": float(old[cfg.primary]),
        "challenger": float(new[cfg.primary]),
        "delta": delta,
        "ci_low": low,
        "ci_high": high,
        "ci_level": 1 - 2 * cfg.alpha,  # two-sided interval whose lower end is the one-sided (1 - alpha) bound
        "p_bootstrap": gate_stats.p_at_most(deltas, cfg.min_gain),
        "mcnemar": mcnemar,
        "significant": bool(significant),
        "passed": bool(significant and y.size >= cfg.min_n),
    }


def noninferiority(champion: dict, challenger: dict, cfg: GateConfig) -> list[dict]:
    """One check per dev set and metric: margin from the set's size, paired bootstrap p of H0 'worse by more than
    the margin', Holm-corrected over all checks; the interval is Bonferroni-simultaneous (alpha / checks)."""
    checks = []
    for name in sorted(k for k in champion if k != CORRECTIONS and champion[k]):
        y, a, b = paired(champion[name], challenger[name])
        margin = (
            cfg.tolerance
            if cfg.tolerance is not None
            else gate_stats.noninferiority_margin(y.size, cfg.margin_se, cfg.margin_floor)
        )
        for metric in cfg.metrics:
            deltas = gate_stats.paired_bootstrap(y, a, b, metric, cfg.n_boot, cfg.seed)
            old, new = float(champion[name][metric]), float(challenger[name][metric])
            checks.append(
                {
                    "set": name,
                    "metric": metric,
                    "n": int(y.size),
                    "champion": old,
                    "challenger": new,
                    "delta": new - old,
                    "margin": margin,
                    "p": gate_stats.p_at_most(deltas, -margin),
                    "_deltas": deltas,
                }
            )
    level = cfg.alpha / max(1, len(checks))
    for check, ok in zip(checks, gate_stats.holm([c["p"] for c in checks], cfg.alpha)):
        deltas = check.pop("_deltas")
        check.update(ci_low=gate_stats.lower_bound(deltas, level), ci_level=1 - level, ok=bool(ok))
    return checks


def test_name(cfg: GateConfig) -> str:
    """The decision rule in words (stored with every decision)."""
    sup = (
        f"exact one-sided McNemar p < {cfg.alpha:g}"
        if cfg.test == "mcnemar"
        else f"paired bootstrap ({cfg.n_boot}) one-sided {1 - cfg.alpha:.0%} lower bound of the {cfg.primary} gain > "
        f"{cfg.min_gain:g}"
    )
    margin = (
        f"{cfg.tolerance:g}"
        if cfg.tolerance is not None
        else f"{cfg.margin_se:g} x 0.5/sqrt(n), >= {cfg.margin_floor:g}"
    )
    return (
        f"superiority on held-out corrections: {sup}, n >= {cfg.min_n}; non-inferiority on each dev set "
        f"({', '.join(cfg.metrics)}; margin {margin}): paired bootstrap, Holm at family alpha {cfg.alpha:g}"
    )


def explain(sup: dict, checks: list[dict], cfg: GateConfig) -> list[str]:
    """Why the challenger is not promoted (empty when it is)."""
    reasons = []
    if not sup["n"]:
        reasons.append("no trusted held-out corrections to judge on (gold clips or clips with agreeing votes)")
    else:
        figures = (
            f"{cfg.primary} {sup['challenger']:.3f} vs champion {sup['champion']:.3f}, gain {sup['delta']:+.3f}, "
            f"{sup['ci_level']:.0%} CI [{sup['ci_low']:+.3f}, {sup['ci_high']:+.3f}], "
            f"McNemar p={sup['mcnemar']['p_one_sided']:.3g} (n={sup['n']})"
        )
        if not sup["significant"]:
            reasons.append(f"not better on held-out corrections beyond chance: {figures}")
        if sup["n"] < cfg.min_n:
            shown = "" if not sup["significant"] else f" ({figures})"
            reasons.append(f"too few held-out corrections to decide: n={sup['n']} < {cfg.min_n}{shown}")
    failed = [c for c in checks if not c["ok"]]
    if failed:
        reasons.append(
            "not shown non-inferior on "
            + "; ".join(
                f"{c['set']} {c['metric']} {c['challenger']:.3f} vs {c['champion']:.3f} (margin {c['margin']:.3f}, "
                f"lower bound {c['ci_low']:+.3f}, p={c['p']:.3g})"
                for c in failed
            )
        )
    return reasons


def audit_failure(audit: dict | None, cfg: GateConfig) -> str | None:
    """Why the crowd's labels are not trusted to train a model (labeling.aggregate.gold_audit), or None."""
    if not audit or audit["n"] < cfg.audit_min_n or audit["accuracy"] >= cfg.audit_min:
        return None
    return (
        f"the crowd's labels match gold on only {audit['agree']} of {audit['n']} gold clips "
        f"({audit['accuracy']:.0%} < {cfg.audit_min:.0%}): the training labels look poisoned or noisy, so the "
        "held-out labels from the same crowd cannot vouch for this challenger"
    )


def decide(champion: dict, challenger: dict, cfg: GateConfig, audit: dict | None = None) -> dict:
    """Compare the figures of evaluate(); the decision dict names every test, interval and why it promotes or not.
    audit: the crowd's labels against gold (labeling.aggregate.gold_audit); below cfg.audit_min nothing promotes."""
    sup = superiority(champion.get(CORRECTIONS), challenger.get(CORRECTIONS), cfg)
    checks = noninferiority(champion, challenger, cfg)
    reasons = explain(sup, checks, cfg)
    failed_audit = audit_failure(audit, cfg)
    if failed_audit:
        reasons.append(failed_audit)
    promote = not reasons
    if promote:
        audited = (
            f"; crowd labels match gold on {audit['agree']}/{audit['n']} gold clips" if audit and audit["n"] else ""
        )
        reasons.append(
            f"better on held-out corrections ({cfg.primary} {sup['challenger']:.3f} vs {sup['champion']:.3f}, gain "
            f"{sup['delta']:+.3f}, {sup['ci_level']:.0%} CI [{sup['ci_low']:+.3f}, {sup['ci_high']:+.3f}], n={sup['n']}) "
            f"and non-inferior on all {len(checks)} dev checks (Holm, alpha {cfg.alpha:g}){audited}"
        )
    return {
        "audit": {**(audit or {"n": 0, "agree": 0, "accuracy": None}), "min": cfg.audit_min, "min_n": cfg.audit_min_n},
        "promote": promote,
        "reason": "; ".join(reasons),
        "champion": public(champion),
        "challenger": public(challenger),
        "superiority": sup,
        "checks": checks,
        "test": test_name(cfg),
        "alpha": cfg.alpha,
        "min_n": cfg.min_n,
        "tolerance": cfg.tolerance,
        "min_gain": cfg.min_gain,
        "primary": cfg.primary,
    }


def record_run(
    store: Store,
    decision: dict,
    *,
    started: str,
    base_version: str,
    candidate_version: str,
    n_corrections: int,
    extra: dict | None = None,
) -> int:
    """One row of the store's training_runs table with the decision and every figure behind it."""
    keys = (
        "audit",
        "champion",
        "challenger",
        "superiority",
        "checks",
        "test",
        "alpha",
        "min_n",
        "tolerance",
        "min_gain",
        "primary",
    )
    metrics = {k: decision[k] for k in keys if k in decision}
    return store.record_training_run(
        {
            "started": started,
            "finished": now_iso(),
            "base_version": base_version,
            "candidate_version": candidate_version,
            "n_corrections": n_corrections,
            "metrics": {**metrics, **(extra or {})},
            "decision": "promoted" if decision["promote"] else "rejected",
            "reason": decision["reason"],
        }
    )


def gate_config(args: argparse.Namespace | object) -> GateConfig:
    """From the fields train.retrain's config and this CLI share (data, speech_dev_actors, *_dev_size, ...)."""
    return GateConfig(
        data=Path(args.data),
        speech_actors=tuple(parse_actors(args.speech_dev_actors)),
        speech_size=args.speech_dev_size,
        text_size=args.text_dev_size,
        face_size=args.face_dev_size,
        tolerance=args.tolerance,
        min_gain=args.min_gain,
        seed=args.seed,
        alpha=getattr(args, "gate_alpha", 0.05),
        min_n=getattr(args, "min_holdout", 30),
        test=getattr(args, "gate_test", "bootstrap"),
        audit_min=getattr(args, "gold_audit_min", 0.9),
    )


def next_rotation(store: Store) -> int:
    """The held-out rotation of the next retraining run: one more for every run the store has recorded."""
    return int(store.db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0])


def last_rotation(store: Store) -> int:
    """The rotation the latest recorded run was judged with (0 before any), so the CLI re-judges on its slice."""
    runs = store.training_runs()
    return int(runs[-1]["metrics"].get("rotation", 0)) if runs else 0


def main(argv: Sequence[str] | None = None) -> dict:
    """Judge two model folders on the dev sets and a store's held-out corrections; print the decision."""
    from train.corrections import load_corrections, split

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m train.gate", description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--champion", required=True)
    p.add_argument("--challenger", required=True)
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--speech-dev-actors", default="17-20")
    p.add_argument("--speech-dev-size", type=int, default=0)
    p.add_argument("--text-dev-size", type=int, default=1000)
    p.add_argument("--face-dev-size", type=int, default=1000)
    p.add_argument("--tolerance", type=float, default=None, help="fixed dev margin (default: 0.5/sqrt(n) per set)")
    p.add_argument("--min-gain", type=float, default=0.0)
    p.add_argument("--gate-alpha", type=float, default=0.05)
    p.add_argument("--min-holdout", type=int, default=30, help="held-out clips needed to promote")
    p.add_argument("--gate-test", choices=["bootstrap", "mcnemar"], default="bootstrap")
    p.add_argument("--gold-audit-min", type=float, default=0.9, help="crowd labels' least agreement with gold")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--rotation", type=int, default=-1, help="held-out rotation (-1: the last recorded run's)")
    p.add_argument("--min-eval-votes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", action="store_true", help="record the decision in the store's training runs")
    args = p.parse_args(argv)
    settings = load_settings()
    started = now_iso()
    with Store.open(args.db) as store:
        rotation = args.rotation if args.rotation >= 0 else last_rotation(store)
        items = load_corrections(store, min_eval_votes=args.min_eval_votes, settings=settings)
        _, held = split(items, args.holdout, rotation)
        cfg = gate_config(args)
        dev = load_dev_sets(cfg)
        champion, challenger = (
            EmotionModel.from_pretrained(m, cache=settings.cache) for m in (args.champion, args.challenger)
        )
        audit = gold_audit(aggregate_labels(store))
        decision = decide(
            evaluate(champion, dev, held, settings), evaluate(challenger, dev, held, settings), cfg, audit
        )
        if args.record:
            record_run(
                store,
                decision,
                started=started,
                base_version=champion.version,
                candidate_version=challenger.version,
                n_corrections=0,
                extra={"rotation": rotation},
            )
    print(json.dumps(decision))
    return decision


if __name__ == "__main__":
    main()
