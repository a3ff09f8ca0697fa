"""Paired speed ratios over several bench/inference.py runs: per (batch, seconds), each impl's clips/s against the
plain encoder of the same run, and the fraction of the bf16 peak, with their spread over runs (issue 16).

    python bench/gpu_ratios.py runs/infer_final_*.json [--anchor plain]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402


def spread(values: list[float]) -> dict:
    """n, geometric mean, min and max of positive ratios (a ratio's centre is its geometric mean)."""
    v = np.asarray(values, dtype=float)
    return {
        "n": len(v),
        "geomean": float(np.exp(np.log(v).mean())) if len(v) else None,
        "min": float(v.min()) if len(v) else None,
        "max": float(v.max()) if len(v) else None,
        "runs": [round(float(x), 4) for x in v],
    }


def paired_ratios(reports: list[dict], anchor: str = "plain") -> list[dict]:
    """One row per (impl, batch, seconds): clips/s over the anchor's in the same run, and the fraction of peak."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for report in reports:
        by = {(r["impl"], r["batch"], r["seconds"]): r for r in report["rows"]}
        peak = {
            (r["impl"], r["batch"], r["seconds"]): r["fraction_of_peak"]
            for r in report.get("roofline", {}).get("rows", [])
        }
        for (impl, batch, seconds), row in by.items():
            base = by.get((anchor, batch, seconds))
            if impl == anchor or base is None:
                continue
            cell = cells.setdefault((impl, batch, seconds), {"ratio": [], "clips_per_s": [], "peak": [], "p50_ms": []})
            cell["ratio"].append(row["clips_per_s"] / base["clips_per_s"])
            cell["clips_per_s"].append(row["clips_per_s"])
            cell["p50_ms"].append(row["p50_ms"])
            if (impl, batch, seconds) in peak:
                cell["peak"].append(peak[(impl, batch, seconds)])
    out = []
    for (impl, batch, seconds), cell in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        out.append(
            {
                "impl": impl,
                "batch": batch,
                "seconds": seconds,
                f"over_{anchor}": spread(cell["ratio"]),
                "clips_per_s": spread(cell["clips_per_s"]),
                "p50_ms": spread(cell["p50_ms"]),
                "fraction_of_peak": spread(cell["peak"]) if cell["peak"] else None,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--anchor", default="plain")
    parser.add_argument("--out")
    args = parser.parse_args()
    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    emit(
        {
            "device": reports[0].get("device"),
            "torch": reports[0].get("torch"),
            "runs": len(reports),
            "anchor": args.anchor,
            "rows": paired_ratios(reports, args.anchor),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
