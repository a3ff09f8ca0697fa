"""Hostile crowds: which reliability estimate catches which annotator population, and does the gate block a
challenger trained on what they poisoned? (issue 14, part 4)

For each population a fresh store (temp SQLite file) gets the same real RAVDESS clips of training-split actors
(16 kHz wav, consented, the base model's prediction), ~10% of them gold-marked; then the pool (six honest
annotators plus one hostile population) labels through the store's own queue (`next_item`: k=3 votes per clip,
gold mixed in at the store's gold_rate) until nothing is left. Populations:

    honest       six honest annotators only (each answers at random 5-15% of the time)
    noisy        + two annotators answering at random 30% of the time
    always_one   + two annotators who answer 'happy' to everything
    flipping     + two annotators who relabel by one fixed permutation of the labels (never the true one)
    coordinated  + a group of five who give the same wrong label per clip (a majority of the 3 on many clips)

Reported per population: accuracy (vs the true labels, non-gold clips) of the training label under plain majority,
the gold-weighted label (gold accuracy + probation), plain Dawid-Skene (majority start, gold clamped, its posterior
label), the vote weighted by the store's Dawid-Skene weights (EM started from the gold-weighted shares) and the
store's label (labeling.aggregate: min of the gold and Dawid-Skene weights); the weights each hostile annotator
ends with under each estimate (and the honest annotators' range).

Gate (unless --no-retrain): a *poisoned* challenger is trained by `python -m train.retrain --no-gate` on a copy of
the store where every vote on a clip is replaced by the clip's majority label (training without the reliability
defence); the gate (train.gate.decide, the same rule train.retrain applies) then judges it against the base model
on the dev sets and on the held-out corrections of the real store (labels as the store aggregates them) and,
for contrast, on the poisoned copy's held-out labels (no defence at all). Caveat: models/default was trained on
RAVDESS actors 1-16 (and ASED train speakers), so it already knows these clips: no challenger, honest or not, can
gain much on them, and the superiority test cannot promote here; what the bench shows is whether poisoned labels
move the challenger and whether the dev-set checks or the held-out slice catch it.
The informative setting (a base model that never saw the clips: v1 + ASED) is bench/adapt_ased.py with
--population NAME [--poisoned], which imports this file's populations (`pool`) and `undefended_copy`.

    # ~25 min on 2 busy CPU cores (5 populations, 100 clips, one 1-epoch retrain each, ~70 s of training)
    python bench/hostile_crowd.py --json runs/bench/hostile_crowd.json
    # the aggregation table only (~2 min)
    python bench/hostile_crowd.py --json /tmp/hostile.json --no-retrain
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.labels import LABELS  # noqa: E402
from backend.media import encode_wav  # noqa: E402
from bench.report import emit  # noqa: E402
from labeling import dawid_skene  # noqa: E402
from labeling.aggregate import (  # noqa: E402
    aggregate_clip,
    aggregate_labels,
    annotator_weights,
    combined_weights,
    consensus_weights,
    load_votes,
    update_reliability,
    vote_weight,
)
from labeling.store import Store  # noqa: E402
from train.corpora import SPEECH_TRAIN_ACTORS, Example, ravdess, shared_data_dir  # noqa: E402
from train.fit_speech import load_clips  # noqa: E402

log = logging.getLogger("hostile_crowd")

VOTES_PER_CLIP = 3
GOLD_SHARE = 0.1
HONEST_NOISE = (0.05, 0.1, 0.15, 0.05, 0.1, 0.15)
FLIP = {i: (i + 3) % len(LABELS) for i in range(len(LABELS))}  # a fixed permutation with no fixed point
POPULATIONS = ("honest", "noisy", "always_one", "flipping", "coordinated")
ESTIMATORS = ("majority", "gold_weighted", "ds_alone", "ds_weighted", "store")

Answer = Callable[[str, int, np.random.Generator], str]  # (clip id, true label id, rng) -> label


@dataclass
class Annotator:
    name: str
    hostile: bool
    answer: Answer


def vote_for(truth: int, noise: float, rng: np.random.Generator) -> str:
    """The true label, or with probability `noise` a uniformly random label (which may be the true one)."""
    return LABELS[int(rng.integers(len(LABELS))) if rng.random() < noise else truth]


def group_wrong(clip_id: str, truth: int) -> str:
    """The coordinated group's shared wrong label for a clip: a function of the clip, never the true label."""
    offset = 1 + int(clip_id[:8], 16) % (len(LABELS) - 1)
    return LABELS[(truth + offset) % len(LABELS)]


def pool(population: str) -> list[Annotator]:
    """Six honest annotators plus the hostile population."""
    honest = [
        Annotator(f"honest:{i}", False, lambda c, t, r, n=noise: vote_for(t, n, r))
        for i, noise in enumerate(HONEST_NOISE, 1)
    ]
    hostile = {
        "honest": [],
        "noisy": [Annotator(f"noisy:{i}", True, lambda c, t, r: vote_for(t, 0.3, r)) for i in (1, 2)],
        "always_one": [Annotator(f"always_one:{i}", True, lambda c, t, r: "happy") for i in (1, 2)],
        "flipping": [Annotator(f"flipper:{i}", True, lambda c, t, r: LABELS[FLIP[t]]) for i in (1, 2)],
        "coordinated": [Annotator(f"group:{i}", True, lambda c, t, r: group_wrong(c, t)) for i in range(1, 6)],
    }[population]
    return honest + hostile


def import_clips(store: Store, wavs: list[bytes], preds: list[dict] | None) -> list[str]:
    """The clips as the app keeps them (consented 16 kHz 16-bit wav), with the base model's prediction if given."""
    ids = []
    for i, data in enumerate(wavs):
        duration = (len(data) - 44) / 32_000
        clip = store.add_clip(data, ext=".wav", modalities=["speech"], duration=duration, source="import", consent=True)
        if preds is not None:
            store.add_prediction(clip, "base", preds[i])
        ids.append(clip)
    return ids


def crowd_votes(store: Store, annotators: list[Annotator], truth: dict[str, int], seed: int) -> int:
    """Every annotator asks the store's queue for clips, in shuffled rounds, until it has none left for anyone."""
    rng = np.random.default_rng(seed)
    active, votes = list(annotators), 0
    while active:
        rng.shuffle(active)
        for a in list(active):
            clip = store.next_item(a.name)
            if clip is None:
                active.remove(a)
                continue
            store.vote(clip["id"], a.name, a.answer(clip["id"], truth[clip["id"]], rng))
            votes += 1
    return votes


def fill(db: Path, clips: list[Example], wavs: list[bytes], preds: list[dict] | None, population: str, seed: int):
    """A store with the clips, ~GOLD_SHARE of them gold, and the population's votes; returns (truth, gold ids)."""
    with Store.open(db, k=VOTES_PER_CLIP, gold_rate=GOLD_SHARE) as store:
        ids = import_clips(store, wavs, preds)
        truth = {c: ex.label for c, ex in zip(ids, clips)}
        order = np.random.default_rng([seed, 7]).permutation(len(ids))
        gold = {ids[i] for i in order[: max(1, round(GOLD_SHARE * len(ids)))]}
        for clip in gold:
            store.add_gold(clip, LABELS[truth[clip]])
        crowd_votes(store, pool(population), truth, seed)
    return truth, gold


def accuracy(labels: dict[str, str | None], truth: dict[str, int], clips: list[str]) -> dict:
    right = sum(labels.get(c) == LABELS[truth[c]] for c in clips)
    return {"accuracy": round(right / len(clips), 4) if clips else None, "n": len(clips)}


def estimator_labels(store: Store) -> tuple[dict[str, dict[str, str | None]], dict[str, dict[str, float]]]:
    """Each estimator's label per voted clip, and each estimator's weight per annotator.

    ds_alone is plain Dawid-Skene (started from the majority, gold clamped; its own posterior label); ds_weighted
    is the weighted vote under the Dawid-Skene weights the store computes (EM started from the gold-weighted
    shares); store is labeling.aggregate's label (weights: min of gold and Dawid-Skene)."""
    votes = load_votes(store)
    gold_w = annotator_weights(store, update_reliability(store))
    ds_w = consensus_weights(store, votes, gold_w)
    gold = {r["id"]: r["gold_label"] for r in store.db.query("SELECT id, gold_label FROM clips")}
    flat = [(c, a, lab, u) for c, vs in votes.items() for a, lab, u in vs]
    alone = dawid_skene.fit(flat, {c: g for c, g in gold.items() if g})
    posterior = alone.labels()
    labels: dict[str, dict[str, str | None]] = {name: {} for name in ESTIMATORS}
    for clip, clip_votes in votes.items():
        labels["majority"][clip] = aggregate_clip(clip, clip_votes, {}).majority
        labels["gold_weighted"][clip] = aggregate_clip(clip, clip_votes, {}, weights=gold_w).weighted
        labels["ds_alone"][clip] = posterior.get(clip)
        labels["ds_weighted"][clip] = aggregate_clip(clip, clip_votes, {}, weights=ds_w).weighted
    labels["store"] = {item.clip_id: item.weighted for item in aggregate_labels(store)}
    weights = {
        "gold": gold_w,
        "ds_alone": {a: vote_weight(acc) for a, acc in alone.accuracy().items()},
        "ds": ds_w,
        "store": combined_weights(gold_w, ds_w),
    }
    return labels, weights


def aggregation_row(store: Store, truth: dict[str, int], gold: set[str], annotators: list[Annotator]) -> dict:
    """Accuracy of each estimator's training labels on the non-gold clips; weights of hostile and honest annotators."""
    labels, weights = estimator_labels(store)
    clips = sorted(c for c in labels["majority"] if c not in gold)
    stats = store.gold_stats()
    n_votes = {
        r["annotator_id"]: r["n"] for r in store.db.query("SELECT annotator_id, COUNT(*) AS n FROM votes GROUP BY 1")
    }

    def weights_of(name: str) -> dict:
        return {k: round(w.get(name, 0.0), 3) for k, w in weights.items()} | {
            "votes": n_votes.get(name, 0),
            "gold_seen": stats.get(name, (0, 0.0))[0],
        }

    honest = [a.name for a in annotators if not a.hostile]
    return {
        "clips": len(truth),
        "gold_clips": len(gold),
        "votes": sum(n_votes.values()),
        "accuracy": {name: accuracy(labels[name], truth, clips) for name in ESTIMATORS},
        "majority_wrong_clips": sum(labels["majority"][c] != LABELS[truth[c]] for c in clips),
        "hostile_weights": {a.name: weights_of(a.name) for a in annotators if a.hostile},
        "honest_weights": {
            k: {
                "min": round(min(w.get(h, 0.0) for h in honest), 3),
                "max": round(max(w.get(h, 0.0) for h in honest), 3),
            }
            for k, w in weights.items()
        },
    }


def undefended_copy(src: Path, dst: Path, wavs: list[bytes], preds: list[dict] | None) -> int:
    """The same clips, predictions and gold marks, every vote replaced by its clip's majority label: training on
    it is training without the reliability defence. Returns the number of voted clips."""
    with Store.open(src) as store:
        votes = load_votes(store)
        gold = {
            r["id"]: r["gold_label"]
            for r in store.db.query("SELECT id, gold_label FROM clips WHERE gold_label IS NOT NULL")
        }
    with Store.open(dst, k=VOTES_PER_CLIP, gold_rate=GOLD_SHARE) as copy:
        import_clips(copy, wavs, preds)
        for clip, label in gold.items():
            copy.add_gold(clip, label)
        for clip, clip_votes in votes.items():
            majority = aggregate_clip(clip, clip_votes, {}).majority
            for annotator, _, _ in clip_votes:
                copy.vote(clip, annotator, majority)
    return len(votes)


class Judge:
    """The gate's figures for the base model, computed once; each challenger is judged on the same examples."""

    def __init__(self, args: argparse.Namespace) -> None:
        from backend.model import EmotionModel
        from backend.settings import load_settings
        from train.gate import GateConfig, evaluate_dev, load_dev_sets

        self.settings = load_settings(asr=False)
        self.cfg = GateConfig(
            data=Path(args.data),
            speech_size=args.speech_dev_size,
            text_size=args.text_dev_size,
            face_size=args.face_dev_size,
            min_n=args.min_holdout,
        )
        self.dev = load_dev_sets(self.cfg)
        self.champion = EmotionModel.from_pretrained(args.base_model, cache=self.settings.cache, device="cpu")
        self.champion_dev = evaluate_dev(self.champion, self.dev)

    def held(self, db: Path) -> tuple[list, dict]:
        """The trusted held-out corrections train.retrain's first run on this store is judged on (rotation 0), and
        the store's gold audit (what train.retrain hands the gate with them)."""
        from labeling.aggregate import aggregate_labels, gold_audit
        from train.corrections import load_corrections, split

        with Store.open(db) as store:
            held = split(load_corrections(store, settings=self.settings), 0.2, 0)[1]
            return held, gold_audit(aggregate_labels(store))

    def decide(self, challenger_dir: Path, helds: dict[str, tuple[list, dict]]) -> dict:
        """The gate's decision on the challenger for each named (held-out slice, gold audit) (dev sets scored once)."""
        from backend.model import EmotionModel
        from bench.adapt_ased import gate_figures  # here, not at the top: adapt_ased imports this module
        from train.gate import CORRECTIONS, decide, evaluate_corrections, evaluate_dev

        challenger = EmotionModel.from_pretrained(challenger_dir, cache=self.settings.cache, device="cpu")
        challenger_dev = evaluate_dev(challenger, self.dev)
        out = {}
        for name, (held, audit) in helds.items():
            old = {**self.champion_dev, CORRECTIONS: evaluate_corrections(self.champion, held, self.settings)}
            new = {**challenger_dev, CORRECTIONS: evaluate_corrections(challenger, held, self.settings)}
            out[name] = gate_figures(decide(old, new, self.cfg, audit)) | {"held_out_n": len(held)}
        return out


def gate_row(args: argparse.Namespace, judge: Judge, work: Path, wavs: list[bytes], preds: list[dict] | None) -> dict:
    """Train a challenger on the poisoned majority labels, then let the gate judge it."""
    from bench.adapt_ased import retrain_command, run_retrain  # here, not at the top: adapt_ased imports us

    undefended_copy(work / "crowd.db", work / "studio.db", wavs, preds)
    summary, seconds = run_retrain(retrain_command(args, work, args.seed), work)
    helds = {"store_labels": judge.held(work / "crowd.db"), "poisoned_labels": judge.held(work / "studio.db")}
    decisions = judge.decide(work / "run" / "challenger", helds)
    return {"train_items": summary["train"]["items"], "retrain_wall_s": round(seconds, 1), **decisions}


def choose_clips(data: Path, n: int, seed: int) -> list[Example]:
    """A fixed random choice of RAVDESS clips of the training-split actors."""
    pool_ = ravdess(data / "ravdess-speech-16k", SPEECH_TRAIN_ACTORS)
    keep = np.sort(np.random.default_rng([seed, 14]).choice(len(pool_), size=n, replace=False))
    return [pool_[i] for i in keep]


def base_predictions(args: argparse.Namespace, audio: list[np.ndarray]) -> list[dict] | None:
    """The base model's probabilities per clip (the hard negative in retraining; the queue's uncertainty)."""
    if not args.retrain:
        return None
    from backend.model import EmotionModel
    from backend.predictor import Predictor
    from backend.settings import load_settings
    from backend.types import Sample

    settings = load_settings(asr=False)
    model = EmotionModel.from_pretrained(args.base_model, cache=settings.cache, device="cpu")
    return [p.probs for p in Predictor(model, settings).predict_chunked([Sample(audio=w) for w in audio])]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="where the report goes (also printed)")
    p.add_argument("--data", default=str(shared_data_dir()))
    p.add_argument("--base-model", default=str(ROOT / "models" / "default"))
    p.add_argument("--populations", default=",".join(POPULATIONS))
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--min-holdout", type=int, default=10, help="the gate's minimum held-out n (production: 30)")
    p.add_argument("--speech-dev-size", type=int, default=56)
    p.add_argument("--text-dev-size", type=int, default=100)
    p.add_argument("--face-dev-size", type=int, default=100)
    p.add_argument("--replay-limit", type=int, default=64)
    p.add_argument("--calib-replay", type=int, default=32)
    p.add_argument("--keep", default=None, help="keep the work folders here (default: a temp folder)")
    args = p.parse_args(argv)
    args.cpu = True
    args.retrain_args = "--no-gate --batch-size 8 --replay-per-batch 8"  # adapt_ased.retrain_command appends it
    return args


def main(argv: list[str] | None = None) -> dict:
    from bench.adapt_ased import write  # here, not at the top: adapt_ased imports this module

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    clips = choose_clips(Path(args.data), args.clips, args.seed)
    audio = load_clips(clips)
    wavs = [encode_wav(w) for w in audio]
    preds = base_predictions(args, audio)
    judge = Judge(args) if args.retrain else None
    top = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hostile_crowd_"))
    report = {"clips": args.clips, "actors": "RAVDESS 1-16", "votes_per_clip": VOTES_PER_CLIP, "gold_share": GOLD_SHARE}
    report |= {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "keep")}, "populations": {}}
    try:
        for population in args.populations.split(","):
            started, work = time.perf_counter(), top / population
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            truth, gold = fill(work / "crowd.db", clips, wavs, preds, population, args.seed)
            with Store.open(work / "crowd.db") as store:
                row = aggregation_row(store, truth, gold, pool(population))
            if judge is not None:
                row["gate"] = gate_row(args, judge, work, wavs, preds)
            report["populations"][population] = row
            log.info("%s: %s (%.0f s)", population, row["accuracy"], time.perf_counter() - started)
            if args.json:
                write(Path(args.json), report)  # a stopped bench keeps what it measured
    finally:
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    return emit(report, args.json)


if __name__ == "__main__":
    main()
