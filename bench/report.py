"""How every bench ends: its report printed as JSON, and written to a file when asked."""

from __future__ import annotations

import json
from pathlib import Path


def emit(report: dict, out: str | Path | None = None) -> dict:
    """Print the report as indented JSON; also write it to `out` (parent folders made) when given."""
    text = json.dumps(report, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
    return report
