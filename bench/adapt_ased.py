"""Adaptation to a new community, measured honestly: v1 (which never saw ASED, in training or in any selection)
learns from crowd-labelled Amharic clips of one group of ASED speakers and is scored on other ASED speakers.

For every seed and every number of corrections N (nested: the first N of one shuffled list per seed) the real path
runs: N clips of the adaptation speakers (ASED train speakers) go into a fresh store as the app imports them, with
v1's prediction (the hard negative); simulated annotators vote (3 of 5 per clip: three honest, two noisy that
answer at random 30% of the time), 25% of the clips are gold-marked (--gold-share; 10% before); the store aggregates; then
`python -m train.retrain` runs in a subprocess (training, recalibration, the statistical gate) from --base-model.
Scored: UAR/accuracy on every clip of the unseen ASED test speakers (speech branch, true labels; ASED dev speakers
are left alone), forgetting on RAVDESS actors 17-20 and the text and face dev sets (the gate's own figures,
champion vs challenger on the same examples), the gate's decision with its interval and test, ECE before/after.

    # full run (GPU): 5 sizes x 3 seeds = 15 retraining runs, ~20-40 min on one H200 (estimate, not measured)
    python bench/adapt_ased.py --base-model /work/v1-model --out runs/adapt_ased --json runs/adapt_ased.json
    # under a per-command time limit: repeat until the JSON holds 15 runs (a run cut short is redone)
    timeout 580 python bench/adapt_ased.py --base-model /work/v1-model --out /root/adapt_ased --resume
    # CPU smoke check (~5 min on 2 cores): 25 corrections, 1 seed, 1 epoch, small dev/scoring sets
    python bench/adapt_ased.py --base-model /work/v1-model --out /tmp/adapt --json /tmp/adapt.json --cpu --quick

Hostile crowds (the populations and the poisoning of bench/hostile_crowd.py, on this informative setting):
--population NAME replaces the default crowd by six honest annotators plus that hostile population (noisy,
always_one, flipping, coordinated; `honest`: the six alone), still 3 votes per clip and 25% gold; --poisoned trains
on a copy of the store where every vote is replaced by its clip's majority label (no reliability defence; the gate
inside train.retrain then also judges on those labels). --pool ravdess-train is a control: the corrections are
RAVDESS clips of the base model's own training actors (1-16), which teach it nothing new, so its loss on RAVDESS
dev (17-20) is drift of the retraining itself, not forgetting caused by ASED. Each run records its training labels'
accuracy against the truth. A non-default setting keeps its work folders apart (<out>/seed<S>-<setting>/n<N>) and
its JSON too (default <out>/adapt_ased-<setting>.json); --resume refuses a JSON written for another setting.

    python bench/adapt_ased.py --base-model /work/v1-model --out /tmp/adapt_h --cpu --quick \
        --population coordinated --poisoned
    python bench/adapt_ased.py --base-model /work/v1-model --out /tmp/adapt_c --cpu --quick --pool ravdess-train

Writes one JSON file (rewritten after every run, so a stopped bench keeps what it measured; the same command with
--resume continues it, e.g. under a per-command time limit) and prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.branches import speech_forward_batched  # noqa: E402
from backend.labels import LABELS  # noqa: E402
from backend.media import encode_wav  # noqa: E402
from backend.model import EmotionModel  # noqa: E402
from backend.predictor import Predictor  # noqa: E402
from backend.settings import load_settings  # noqa: E402
from backend.types import Sample  # noqa: E402
from bench.hostile_crowd import POPULATIONS, Annotator, pool, undefended_copy, vote_for  # noqa: E402
from labeling.aggregate import aggregate_clip, aggregate_labels, gold_audit, load_votes  # noqa: E402
from labeling.store import Store  # noqa: E402
from train.corpora import (  # noqa: E402
    ASED_TEST_SPEAKERS,
    ASED_TRAIN_SPEAKERS,
    SPEECH_TRAIN_ACTORS,
    Example,
    ased,
    ravdess,
    shared_data_dir,
)
from train.fit_speech import load_clips  # noqa: E402
from train.metrics import classification_report  # noqa: E402

log = logging.getLogger("adapt_ased")

# (annotator, chance of answering at random; otherwise the true label): three honest, two noisy
CROWD = (("honest:1", 0.05), ("honest:2", 0.1), ("honest:3", 0.15), ("noisy:1", 0.3), ("noisy:2", 0.3))
VOTES_PER_CLIP = 3
# ~100 voted gold clips at 400 corrections (~50 at 200): with 10% (~40) the gold audit let 2 of 18 poisoned
# challengers through over 6 seeds, with 25% none (bench/results/gold_audit_share_ased.json)
GOLD_SHARE = 0.25
UNTAGGED_GOLD_SHARE = 0.1  # the share of the runs before: their folders and JSON carry no gold tag
SIZES = (25, 50, 100, 200, 400)
FIGURES = ("n", "accuracy", "uar", "macro_f1")
DEFAULT_POPULATION = "default"  # CROWD above; any other name: bench/hostile_crowd.py's honest pool + that population
POOLS = ("ased-train", "ravdess-train")
MANIFEST = "data_manifest.json"  # train.retrain's record of which clips it trained on


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-model", required=True, help="a model that never saw ASED (v1: /work/v1-model)")
    p.add_argument("--out", required=True, help="work folder (stores, runs); must not exist")
    p.add_argument("--json", default=None, help="where the figures go (default <out>/adapt_ased.json)")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of corrections")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--score-limit", type=int, default=0, help="score on a fixed subset of the unseen speakers")
    p.add_argument("--speech-dev-size", type=int, default=0, help="RAVDESS 17-20 clips the gate judges (0 = 240)")
    p.add_argument("--text-dev-size", type=int, default=1000)
    p.add_argument("--face-dev-size", type=int, default=1000)
    p.add_argument("--replay-limit", type=int, default=0)
    p.add_argument("--calib-replay", type=int, default=120)
    p.add_argument(
        "--retrain-args", default="", help="more train.retrain flags, given with '=': --retrain-args='--lr 1e-3'"
    )
    p.add_argument(
        "--population",
        default=DEFAULT_POPULATION,
        choices=(DEFAULT_POPULATION, *POPULATIONS),
        help="who votes: the default crowd (3 honest + 2 noisy) or hostile_crowd.py's honest pool + this population",
    )
    p.add_argument("--poisoned", action="store_true", help="train on the votes' majority labels (no defence)")
    p.add_argument(
        "--pool",
        default=POOLS[0],
        choices=POOLS,
        help="where the corrections come from: ASED train speakers, or (control) RAVDESS training actors 1-16",
    )
    p.add_argument(
        "--gold-share",
        type=float,
        default=GOLD_SHARE,
        help="share of the clips marked gold (the same votes at any share: the draw per clip is kept)",
    )
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--audit-only", action="store_true", help="build the stores only: the gate's gold audit of each")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped bench: keep the runs already in --json, redo the rest (same --out)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 25 corrections, seed 0, 1 epoch, 60 scored clips, small dev sets and replay",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.seeds, args.epochs, args.score_limit = "25", "0", 1, 60
        args.speech_dev_size, args.text_dev_size, args.face_dev_size = 28, 100, 100
        args.replay_limit, args.calib_replay = 64, 32
    return args


def check_base(folder: Path) -> None:
    """Refuse a base model whose card or training summary mentions ASED (it would not be a new community)."""
    for name in ("README.md", "training_summary.json", "config.json"):
        path = folder / name
        if path.is_file() and re.search(r"\based\b", path.read_text(errors="replace"), re.IGNORECASE):
            raise SystemExit(f"{path} mentions ASED: the base model must never have seen it (use /work/v1-model)")


def scoring_set(data: Path, limit: int) -> tuple[list[Example], list[np.ndarray]]:
    """Every clip of the ASED test speakers (or a fixed `limit` of them) and its audio."""
    clips = ased(data / "ased-speech-16k", ASED_TEST_SPEAKERS)
    if limit and limit < len(clips):
        keep = np.sort(np.random.default_rng(0).choice(len(clips), size=limit, replace=False))
        clips = [clips[i] for i in keep]
    return clips, load_clips(clips)


def score(model: EmotionModel, audio: list[np.ndarray], clips: list[Example]) -> dict:
    """Speech-branch figures against the true labels."""
    with torch.inference_mode():
        pred = speech_forward_batched(model.eval(), audio).argmax(-1).numpy()
    report = classification_report(np.array([c.label for c in clips]), pred, LABELS)
    return {k: report[k] for k in FIGURES}


def setting_tag(args: argparse.Namespace) -> str:
    """'' for the default setting (its folders and JSON keep their old names, so --resume still finds them),
    else e.g. 'ravdess-train-coordinated-poisoned': what keeps other settings' results apart."""
    parts = [args.pool] if args.pool != POOLS[0] else []
    parts += [args.population] if args.population != DEFAULT_POPULATION else []
    parts += ["poisoned"] if args.poisoned else []
    return "-".join(parts + ([f"gold{args.gold_share:g}"] if args.gold_share != UNTAGGED_GOLD_SHARE else []))


def setting(args: argparse.Namespace) -> dict:
    return {"pool": args.pool, "population": args.population, "poisoned": args.poisoned, "gold_share": args.gold_share}


def crowd(population: str) -> list[Annotator]:
    """The annotators who vote: CROWD (default), or hostile_crowd.py's six honest annotators plus a population."""
    if population != DEFAULT_POPULATION:
        return pool(population)
    return [
        Annotator(name, name.startswith("noisy"), lambda c, t, r, n=noise: vote_for(t, n, r)) for name, noise in CROWD
    ]


def correction_pool(data: Path, name: str) -> list[Example]:
    """The clips corrections are drawn from: ASED adaptation speakers, or RAVDESS actors the base model trained on."""
    if name == "ravdess-train":
        return ravdess(data / "ravdess-speech-16k", SPEECH_TRAIN_ACTORS)
    return ased(data / "ased-speech-16k", ASED_TRAIN_SPEAKERS)


def base_predictions(base: EmotionModel, audio: list[np.ndarray]) -> list[dict]:
    """The base model's probabilities per clip: the prediction a person corrects (the hard negative)."""
    preds = Predictor(base, load_settings(asr=False)).predict_chunked([Sample(audio=w) for w in audio])
    return [p.probs for p in preds]


def fill_store(
    db: Path,
    clips: list[Example],
    wavs: list[bytes],
    preds: list[dict],
    annotators: list[Annotator],
    seed: int,
    version: str = "base",
    gold_share: float = GOLD_SHARE,
) -> tuple[dict, dict[str, int]]:
    """Import the clips with the base model's prediction, crowd votes (VOTES_PER_CLIP distinct annotators drawn
    per clip) and gold marks; returns (counts, true label id per clip id)."""
    rng = np.random.default_rng([seed, len(clips)])
    wrong_votes, truth = 0, {}
    with Store.open(db, k=VOTES_PER_CLIP, gold_rate=0.0) as store:
        for ex, data, probs in zip(clips, wavs, preds):
            duration = (len(data) - 44) / 32_000  # 16 kHz 16-bit mono wav
            clip = store.add_clip(
                data, ext=".wav", modalities=["speech"], duration=duration, source="import", consent=True
            )
            truth[clip] = ex.label
            store.add_prediction(clip, version, probs)
            if rng.random() < gold_share:
                store.add_gold(clip, LABELS[ex.label])
            for i in rng.choice(len(annotators), size=VOTES_PER_CLIP, replace=False):
                annotator = annotators[int(i)]
                label = annotator.answer(clip, ex.label, rng)
                wrong_votes += label != LABELS[ex.label]
                store.vote(clip, annotator.name, label)
    return {"clips": len(clips), "votes": len(clips) * VOTES_PER_CLIP, "wrong_votes": wrong_votes}, truth


def label_accuracy(labels: dict[str, str | None], truth: dict[str, int], clips: list[str]) -> dict:
    wrong = sum(labels.get(c) != LABELS[truth[c]] for c in clips)
    return {"n": len(clips), "wrong": wrong, "accuracy": round(1 - wrong / len(clips), 4) if clips else None}


def training_labels(work: Path, truth: dict[str, int]) -> dict:
    """How many of the labels train.retrain learned from were wrong: the training store's labels (as it
    aggregates them: gold, else reliability-weighted) on the clips of its training slice, and on every clip;
    beside them the plain majority of the crowd's votes, the poisoned label."""
    with Store.open(work / "studio.db") as store:
        used = {item.clip_id: item.label for item in aggregate_labels(store)}
    with Store.open(work / ("crowd.db" if (work / "crowd.db").is_file() else "studio.db")) as store:
        majority = {c: aggregate_clip(c, v, {}).majority for c, v in load_votes(store).items()}
    manifest = work / "run" / MANIFEST
    trained = json.loads(manifest.read_text())["train"] if manifest.is_file() else []
    return {
        "train_slice": label_accuracy(used, truth, [c for c in trained if c in truth]),
        "all_clips": label_accuracy(used, truth, sorted(truth)),
        "majority_all_clips": label_accuracy(majority, truth, sorted(truth)),
    }


def retrain_command(args: argparse.Namespace, work: Path, seed: int) -> list[str]:
    """The production retraining job, as a person would start it."""
    cmd = [sys.executable, "-m", "train.retrain", "--db", str(work / "studio.db"), "--out", str(work / "run")]
    cmd += ["--base-model", args.base_model, "--data", args.data, "--data-dir", str(work / "data")]
    cmd += ["--epochs", str(args.epochs), "--seed", str(seed), "--replay-limit", str(args.replay_limit)]
    cmd += ["--calib-replay", str(args.calib_replay), "--speech-dev-size", str(args.speech_dev_size)]
    cmd += ["--text-dev-size", str(args.text_dev_size), "--face-dev-size", str(args.face_dev_size)]
    cmd += ["--checkpoint-every", "0", "--no-lock"] + (["--cpu"] if args.cpu else [])
    return cmd + shlex.split(args.retrain_args)


def run_retrain(cmd: list[str], work: Path) -> tuple[dict, float]:
    """Run train.retrain; returns (its JSON summary, wall seconds). Its log goes to <work>/retrain.log."""
    start = time.perf_counter()
    with (work / "retrain.log").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ.copy())
        try:
            stdout, _ = proc.communicate()
        finally:  # stopped (timeout, Ctrl-C): the job goes with us, it does not keep the GPU
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"train.retrain failed ({proc.returncode}); see {work / 'retrain.log'}")
    return json.loads(stdout.strip().splitlines()[-1]), seconds


def dev_changes(decision: dict) -> dict:
    """Forgetting: challenger minus champion on each dev set the gate judged (same examples)."""
    out = {}
    for name, new in decision["challenger"].items():
        old = decision["champion"].get(name)
        if name == "corrections_holdout" or not new or not old:
            continue
        out[name] = {
            "n": new["n"],
            "champion": {k: old[k] for k in ("accuracy", "uar")},
            "challenger": {k: new[k] for k in ("accuracy", "uar")},
            "delta_accuracy": new["accuracy"] - old["accuracy"],
            "delta_uar": new["uar"] - old["uar"],
        }
    return out


def gate_figures(decision: dict) -> dict:
    """The decision and the numbers behind it."""
    sup = decision.get("superiority") or {}
    return {
        "promote": decision["promote"],
        "reason": decision["reason"],
        "test": decision.get("test"),
        "held_out": {k: sup.get(k) for k in ("n", "delta", "ci_low", "ci_high", "ci_level", "p_bootstrap")},
        "mcnemar": sup.get("mcnemar"),
        "failed_checks": [f"{c['set']} {c['metric']}" for c in decision.get("checks", []) if not c.get("ok")],
        "audit": decision.get("audit"),
    }


def audit_only(args: argparse.Namespace, clip_pool: list[Example]) -> dict:
    """--audit-only: the same stores as the runs (same seeds, clips, crowd, gold marks, poisoned copy), no model:
    what the gate's gold audit (labeling.aggregate.gold_audit) sees in the training store, beside how right the
    training labels and the plain majority are. Predictions are uniform (votes do not depend on them)."""
    uniform = {name: 1.0 / len(LABELS) for name in LABELS}
    rows = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        order = np.random.default_rng([seed, 2026]).permutation(len(clip_pool))
        for n in [int(x) for x in args.sizes.split(",")]:
            clips, work = [clip_pool[i] for i in order[:n]], work_folder(args, seed, n)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            wavs, preds = [encode_wav(w) for w in load_clips(clips)], [uniform] * n
            db = work / ("crowd.db" if args.poisoned else "studio.db")
            _, truth = fill_store(db, clips, wavs, preds, crowd(args.population), seed, gold_share=args.gold_share)
            if args.poisoned:
                undefended_copy(db, work / "studio.db", wavs, preds)
            with Store.open(work / "studio.db") as store:
                audit = gold_audit(aggregate_labels(store))
            labels = training_labels(work, truth)
            rows.append({"seed": seed, "corrections": n, **setting(args), "audit": audit, "training_labels": labels})
            log.info("seed %d, n %d, %s: gold audit %s, labels %s", seed, n, setting_tag(args), audit, labels)
    report = {"what": "gold audit of the training store (no model)", "runs": rows}
    write(Path(args.json) if args.json else Path(args.out) / "audit.json", report)
    return report


def one_run(args, work: Path, clips, audio, base, scoring, seed: int) -> dict:
    """Store, crowd, retrain, gate, score: one point of the learning curve. Poisoned: the crowd votes into
    crowd.db and train.retrain reads its majority-label copy, studio.db."""
    work.mkdir(parents=True)
    wavs, preds = [encode_wav(w) for w in audio], base_predictions(base, audio)
    db = work / ("crowd.db" if args.poisoned else "studio.db")
    votes, truth = fill_store(
        db, clips, wavs, preds, crowd(args.population), seed, base.version, gold_share=args.gold_share
    )
    if args.poisoned:
        undefended_copy(db, work / "studio.db", wavs, preds)
    summary, seconds = run_retrain(retrain_command(args, work, seed), work)
    device = base.device
    challenger = EmotionModel.from_pretrained(work / "run" / "challenger", cache=load_settings().cache, device=device)
    unseen = score(challenger, scoring[1], scoring[0])
    decision = summary["decision"]
    return {
        "corrections": len(clips),
        "seed": seed,
        **setting(args),
        "crowd": votes,
        "training_labels": training_labels(work, truth),
        "train_items": summary["train"]["items"],
        "held_out": summary["held"],
        "calibration_items": summary.get("calib"),
        "unseen_speakers": unseen,
        "dev": dev_changes(decision),
        "gate": gate_figures(decision),
        "calibration": summary.get("calibration"),
        "retrain_wall_s": round(seconds, 1),
        "train_loop_s": summary.get("seconds"),
    }


def spread(values: list[float]) -> dict:
    arr = np.array([v for v in values if v is not None], dtype=float)
    if not arr.size:
        return {"n": 0}
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size)}


def curve(runs: list[dict], base_unseen: dict) -> list[dict]:
    """One row per number of corrections: mean, sd, min, max over seeds."""
    rows = []
    for n in sorted({r["corrections"] for r in runs}):
        at = [r for r in runs if r["corrections"] == n]

        def points(name: str, key: str, runs: list[dict] = at) -> dict:
            """Challenger minus champion on a dev set, in points (100 x)."""
            return spread([100 * r["dev"][name][key] for r in runs if name in r["dev"]])

        rows.append(
            {
                "corrections": n,
                "seeds": len(at),
                "uar_unseen": spread([r["unseen_speakers"]["uar"] for r in at]),
                "uar_gain_points": spread([100 * (r["unseen_speakers"]["uar"] - base_unseen["uar"]) for r in at]),
                "accuracy_unseen": spread([r["unseen_speakers"]["accuracy"] for r in at]),
                "ravdess_dev_delta_accuracy_points": points("ravdess_dev", "delta_accuracy"),
                "ravdess_dev_delta_uar_points": points("ravdess_dev", "delta_uar"),
                "text_dev_delta_accuracy_points": points("goemotions_dev", "delta_accuracy"),
                "face_dev_delta_accuracy_points": points("fer2013_val", "delta_accuracy"),
                "promoted": sum(r["gate"]["promote"] for r in at),
                "held_out_gain_ci": [
                    [r["gate"]["held_out"]["ci_low"], r["gate"]["held_out"]["ci_high"], r["gate"]["held_out"]["n"]]
                    for r in at
                ],
                "retrain_wall_s": spread([r["retrain_wall_s"] for r in at]),
            }
        )
    return rows


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def resumed_runs(args: argparse.Namespace, json_path: Path) -> list[dict]:
    """The runs a stopped bench already measured; refuses a JSON written for another setting, so two settings
    never mix in one file (a JSON from before these flags counts as the default setting)."""
    if not (args.resume and json_path.is_file()):
        return []
    report = json.loads(json_path.read_text())
    legacy = {"pool": POOLS[0], "population": DEFAULT_POPULATION, "poisoned": False}
    theirs = {"gold_share": UNTAGGED_GOLD_SHARE} | report.get("setting", legacy)  # no share written: 10%
    if theirs != setting(args):
        raise SystemExit(f"{json_path} holds runs of {theirs}, not {setting(args)}: give another --json")
    return report["runs"]


def work_folder(args: argparse.Namespace, seed: int, n: int) -> Path:
    """<out>/seed<S>/n<N> for the default setting (as before), <out>/seed<S>-<setting>/n<N> for the others."""
    tag = setting_tag(args)
    return Path(args.out) / (f"seed{seed}-{tag}" if tag else f"seed{seed}") / f"n{n}"


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_base(Path(args.base_model))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops us: clean up the running job
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=args.resume or args.audit_only)
    if args.audit_only:
        return audit_only(args, correction_pool(Path(args.data), args.pool))
    tag = setting_tag(args)
    json_path = Path(args.json) if args.json else out / (f"adapt_ased-{tag}.json" if tag else "adapt_ased.json")
    done = resumed_runs(args, json_path)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    sizes, seeds = [int(s) for s in args.sizes.split(",")], [int(s) for s in args.seeds.split(",")]
    base = EmotionModel.from_pretrained(args.base_model, cache=load_settings().cache, device=device)
    scoring = scoring_set(Path(args.data), args.score_limit)
    base_unseen = score(base, scoring[1], scoring[0])
    clip_pool = correction_pool(Path(args.data), args.pool)
    report = {
        "base_model": args.base_model,
        "base_version": base.version,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "setting": setting(args),
        "adaptation_speakers": list(ASED_TRAIN_SPEAKERS if args.pool == POOLS[0] else SPEECH_TRAIN_ACTORS),
        "scoring_speakers": list(ASED_TEST_SPEAKERS),
        "crowd": {
            "annotators": {a.name: "hostile" if a.hostile else "honest" for a in crowd(args.population)},
            "votes_per_clip": VOTES_PER_CLIP,
            "gold_share": args.gold_share,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
        "base_unseen_speakers": base_unseen,
        "runs": done,
    }
    log.info("v1 on %d clips of unseen ASED speakers: UAR %.3f", base_unseen["n"], base_unseen["uar"])
    for seed in seeds:
        order = np.random.default_rng([seed, 2026]).permutation(len(clip_pool))
        for n in sizes:
            if any(r["seed"] == seed and r["corrections"] == n for r in done):
                continue
            clips, work = [clip_pool[i] for i in order[:n]], work_folder(args, seed, n)
            shutil.rmtree(work, ignore_errors=True)  # a run stopped half-way starts again
            started = time.perf_counter()
            result = one_run(args, work, clips, load_clips(clips), base, scoring, seed)
            report["runs"].append(result)
            report["curve"] = curve(report["runs"], base_unseen)
            write(json_path, report)
            log.info(
                "seed %d, %d corrections (%s): UAR %.3f (v1 %.3f), training labels %.3f right, gate %s (%s), %.0f s",
                seed,
                n,
                tag or "default",
                result["unseen_speakers"]["uar"],
                base_unseen["uar"],
                result["training_labels"]["all_clips"]["accuracy"],
                "promoted" if result["gate"]["promote"] else "rejected",
                result["gate"]["reason"],
                time.perf_counter() - started,
            )
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
