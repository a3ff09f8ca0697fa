"""Fused vs each single modality, per kind of combination, with n and 95% bootstrap CIs; prints JSON.

Report rows only (RAVDESS actors 19-20 and half of the ASED dev speakers as anchors, the reporting half of
texts and faces; the gate was fitted on the other rows, see train.fit_gate), all anchors and by corpus, plus
RAVDESS actors 17-20 with their real Whisper transcripts (speech + words, nothing sampled) and 19-20 alone
(never seen by the fit). CIs resample anchor clips (every combination
built on one clip goes in or out together), 2,000 draws.

    python -m bench.fusion --model models/default [--draws 4] [--out runs/fusion_table.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from backend.heads import FusionGate
from backend.labels import MODALITIES
from train.fit_gate import load_gate
from train.fusion_combos import Combos, build_combos, ravdess_real
from train.fusion_data import ASED_GROUP, load_cache

log = logging.getLogger(__name__)

BOOTSTRAP = 2000


def cluster_ci(hits: dict[str, np.ndarray], clusters: np.ndarray, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile CIs of each hit-rate (and of fused minus each other column) resampling whole clusters."""
    ids, inverse = np.unique(clusters, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids))
    sums = {k: np.bincount(inverse, weights=v.astype(float), minlength=len(ids)) for k, v in hits.items()}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
    weight = np.stack([np.bincount(d, minlength=len(ids)) for d in draws])  # (B, clusters)
    rates = {k: weight @ s / (weight @ counts) for k, s in sums.items()}
    out = {k: np.percentile(r, [2.5, 97.5]).round(3).tolist() for k, r in rates.items()}
    for k in hits:
        if k != "fused":
            out[f"fused-{k}"] = np.percentile(rates["fused"] - rates[k], [2.5, 97.5]).round(3).tolist()
    return out


def table_rows(gate: FusionGate, combos: Combos) -> list[dict]:
    """One row per kind: n, fused and single-modality accuracy (present modalities only), CIs, mean weights."""
    with torch.no_grad():
        fused, weights = gate.fuse(torch.from_numpy(combos.probs).float(), torch.from_numpy(combos.present))
    fused_hit = fused.numpy().argmax(-1) == combos.y
    single = combos.probs.argmax(-1) == combos.y[:, None]  # (N, 3)
    rows = []
    for kind in sorted(set(combos.kind)):
        sel = combos.kind == kind
        present = [m for j, m in enumerate(MODALITIES) if combos.present[sel, j].all()]
        hits = {"fused": fused_hit[sel]} | {m: single[sel, MODALITIES.index(m)] for m in present}
        acc = {k: round(float(v.mean()), 3) for k, v in hits.items()}
        best = max((m for m in present), key=lambda m: acc[m])
        rows.append(
            {
                "kind": kind,
                "n": int(sel.sum()),
                "clips": len(set(combos.anchor[sel])),
                "accuracy": acc,
                "best_single": best,
                "ci95": cluster_ci(hits, combos.anchor[sel]),
                "mean_weight": {m: round(float(weights[sel, MODALITIES.index(m)].mean()), 3) for m in present},
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table: accuracy [95% CI] fused and per modality, fused minus the best single one."""
    lines = [
        "| kind | n (clips) | fused | speech | text | face | fused - best single | mean weights s/t/f |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        acc, ci, best, w = row["accuracy"], row["ci95"], row["best_single"], row["mean_weight"]

        def cell(m: str, acc=acc, ci=ci) -> str:
            return f"{acc[m]:.3f} [{ci[m][0]:.2f}, {ci[m][1]:.2f}]" if m in acc else "-"

        diff = (
            f"{acc['fused'] - acc[best]:+.3f} [{ci['fused-' + best][0]:+.2f}, {ci['fused-' + best][1]:+.2f}] vs {best}"
        )
        weights = "/".join(f"{w[m]:.2f}" if m in w else "-" for m in MODALITIES)
        cells = [row["kind"], f"{row['n']} ({row['clips']})", *map(cell, ("fused", *MODALITIES)), diff, weights]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(
        prog="python -m bench.fusion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--markdown", default=None, help="also write the tables as Markdown here")
    args = p.parse_args(argv)
    cache = load_cache(args.model)
    gate = load_gate(Path(args.model))
    real = ravdess_real(cache)
    held_out = real.select(np.isin(cache.speech_group[real.anchor], (19, 20)))
    held_out.kind = np.full(len(held_out), "ravdess-real (actors 19-20)")
    report = build_combos(cache, "report", args.draws, seed=1)
    from_ased = cache.speech_group[report.anchor] >= ASED_GROUP
    result = {
        "model": args.model,
        "report": table_rows(gate, report),
        "report_ravdess_anchors": table_rows(gate, report.select(~from_ased)),
        "report_ased_anchors": table_rows(gate, report.select(from_ased)) if from_ased.any() else [],
        "ravdess_real": table_rows(gate, real) + table_rows(gate, held_out),
    }
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(
            "\n\n".join(f"### {name}\n\n{markdown(rows)}" for name, rows in result.items() if name != "model") + "\n"
        )
    print(text)
    return result


if __name__ == "__main__":
    main()
