"""What a retraining run writes in its --out folder: checkpoints that a resumed run can trust, and the JSON log.

Checkpoints are out/checkpoints/step_N (explicit names: accelerate's automatic naming races across processes),
hold only heads and adapters (not the frozen backbones), and count as whole once every process has written its
part and the main process has added complete.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

from labeling.store import now_iso

DONE_FILE = "complete.json"  # written after every process saved its part: the checkpoint is whole


def trainable_only(models: list, weights: list[dict], output_dir: str) -> None:
    """save_state hook: keep heads and adapters, drop the frozen backbones (hundreds of MB per checkpoint)."""
    for i, state in enumerate(weights):
        weights[i] = {
            k: v for k, v in state.items() if ".lora_" in k or not ("speech_encoder." in k or "text_encoder." in k)
        }


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> Path:
    """out/checkpoints/step_N (explicit names: automatic naming races across processes); keep the last `keep`."""
    folder = out / "checkpoints" / f"step_{step}"
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / DONE_FILE).write_text(json.dumps({"step": step}) + "\n")
        for old in sorted((out / "checkpoints").glob("step_*"), key=checkpoint_step)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("_", 1)[1])


def last_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that every process finished writing (a kill mid-save leaves no marker)."""
    whole = [f for f in (out / "checkpoints").glob("step_*") if (f / DONE_FILE).exists()]
    return max(whole, key=checkpoint_step) if whole else None


class JsonLog:
    """Appends one JSON object per line to out/log.jsonl, on the main process only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"time": now_iso(), **record}, default=str) + "\n")
