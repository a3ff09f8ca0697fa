"""Command line for the label store; every subcommand prints one JSON object.

    python -m labeling [--db PATH] [--media-dir DIR] stats [--agreement]
    python -m labeling import FOLDER_OR_SAVED_DATASET [--labels gold|vote|ignore] [--no-consent]
    python -m labeling export OUT_DIR [--min-votes N] [--push REPO_ID] [--public]
    python -m labeling delete (--clip SHA256 | --annotator ID)
    python -m labeling sweep [--min-age SECONDS]

The database defaults to backend.settings (EMO_DATA_DIR / EMO_DB_PATH). Pushing reads HF_TOKEN.
Errors print {"error": ...} to stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import StoreError
from .store import Store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labeling", description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, help="SQLite file (default: from EMO_* settings)")
    parser.add_argument("--media-dir", type=Path, help="media folder (default: beside the database)")
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="counts of clips, votes, annotators, labels")
    stats.add_argument("--agreement", action="store_true", help="add alpha, kappa and per-annotator figures")
    imp = sub.add_parser("import", help="import an HF-style folder or a saved `datasets` dataset")
    imp.add_argument("source", type=Path)
    imp.add_argument("--labels", choices=["gold", "vote", "ignore"], default="gold", help="what labels become")
    imp.add_argument("--no-consent", action="store_true", help="keep hashes only, not media or text")
    imp.add_argument("--split", default="train")
    exp = sub.add_parser("export", help="write aggregated labels as a parquet dataset (and push it)")
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--min-votes", type=int, default=1)
    exp.add_argument("--push", metavar="REPO_ID", help="also upload to this Hub dataset repo (HF_TOKEN)")
    exp.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    dele = sub.add_parser("delete", help="delete a clip or an annotator and everything hanging off it")
    who = dele.add_mutually_exclusive_group(required=True)
    who.add_argument("--clip")
    who.add_argument("--annotator")
    sweep = sub.add_parser("sweep", help="remove media files no clip refers to (crash leftovers)")
    sweep.add_argument("--min-age", type=float, default=3600.0, help="only files older than this many seconds")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Carry out one parsed command and return its JSON report."""
    from . import io

    store = Store.open(args.db, args.media_dir)
    try:
        if args.command == "stats":
            report = store.stats()
            if args.agreement:
                from .agreement import agreement_report

                report["agreement"] = agreement_report(store)
            return report
        if args.command == "import":
            consent = not args.no_consent
            if (args.source / "metadata.csv").is_file():
                return io.import_folder(store, args.source, label_mode=args.labels, consent=consent)
            import datasets

            try:
                dataset = datasets.load_from_disk(str(args.source))
            except FileNotFoundError as err:
                raise StoreError(f"{args.source} is neither a folder with metadata.csv nor a saved dataset.") from err
            return io.import_dataset(store, dataset, split=args.split, label_mode=args.labels, consent=consent)
        if args.command == "export":
            if args.push and not os.environ.get("HF_TOKEN"):
                raise StoreError("Set HF_TOKEN (a Hugging Face write token) to push the dataset.")
            dataset = io.export_dataset(store, args.out_dir, min_votes=args.min_votes)
            report: dict[str, Any] = {"rows": len(dataset), "out_dir": str(args.out_dir)}
            if args.push:
                report["commit"] = io.push_dataset(args.out_dir, args.push, private=not args.public)
            return report
        if args.command == "sweep":
            return {"removed": store.sweep_orphans(args.min_age)}
        if args.clip:
            return store.delete_clip(args.clip)
        return store.delete_annotator(args.annotator)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except StoreError as err:
        print(json.dumps({"error": str(err)}), file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
