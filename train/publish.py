"""Publishing a promoted model: its version vN, model card, the local registry the app follows, and the Hub.

The folder goes to <data_dir>/models/vN and the registry pointer moves to it (the app picks it up on its next
request). With a repo id it is also pushed: create_repo (private by default), upload_folder, tag vN, so the app
can pin `repo@vN`. The token comes from HF_TOKEN (or the user's saved login) and is never logged or written.
"""

from __future__ import annotations

import logging
import os
import re

from backend.model import EmotionModel
from backend.model_card import LICENCES, render_card
from backend.model_config import EmotionConfig
from backend.registry import promote, registry_dir
from backend.settings import Settings
from labeling.store import Store

log = logging.getLogger(__name__)

VERSION = re.compile(r"^v(\d+)$")
CORRECTIONS_LICENCE = (
    "User corrections: clips and labels given through the studio with the contributors' consent to train this "
    "model; they are not redistributed, only the model weights are."
)


def version_number(name: str | None) -> int:
    match = VERSION.match(name or "")
    return int(match.group(1)) if match else 0


def next_version(store: Store, settings: Settings, *also: str) -> str:
    """v(N+1) over every version the store, the registry folders, the Hub tags and `also` have used.

    Rejected candidates keep their number, so a version name never means two different models.
    """
    seen = [r["version"] for r in store.model_versions()]
    seen += [r["candidate_version"] for r in store.training_runs() if r["candidate_version"]]
    root = registry_dir(settings)
    seen += [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return f"v{max(map(version_number, [*seen, *also]), default=0) + 1}"


def hub_tags(repo_id: str | None, endpoint: str | None = None) -> list[str]:
    """Tags already on the Hub repo ([] without a repo id or when the repo does not exist yet)."""
    if not repo_id:
        return []
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT")).list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return []
    except Exception as exc:  # offline or refused: number from local records; the push will report the problem
        log.warning("could not list the tags of %s (%s); numbering from local records", repo_id, type(exc).__name__)
        return []
    return [t.name for t in refs.tags]


def card_metrics(figures: dict[str, dict | None]) -> dict[str, dict]:
    """The gate's figures of this model in render_card's format (model-index eval results)."""
    return {name: f for name, f in figures.items() if f}


def card_body(decision: dict, data: dict, training: dict) -> str:
    parent = training.get("base_version", "none")
    lines = [
        "## How this version was made",
        "",
        f"Retrained from `{parent}` on {data.get('items', 0)} crowd corrections "
        f"(by modality: {data.get('modalities', {})}) with supervised contrastive learning (SupCon with a per-class "
        "memory queue, hard negatives from the labels the model got wrong), cross-entropy on soft labels, corrections "
        "weighted by annotator reliability, and replay of the base corpora in every batch"
        + (
            f"; then {training['merge']:g} of the change was kept (weights averaged with `{parent}`'s: a weight-space "
            "ensemble that keeps most of the gain and less of the forgetting)."
            if training.get("merge", 1.0) < 1
            else "."
        ),
        "",
        "## Promotion gate",
        "",
        f"| set | metric | champion `{parent}` | this model | change |",
        "|---|---|---|---|---|",
    ]
    old, new = decision["champion"], decision["challenger"]
    for name in sorted(new):
        for metric in ("accuracy", "macro_f1"):
            if old.get(name) and new.get(name):
                a, b = old[name][metric], new[name][metric]
                lines.append(f"| {name} (n={new[name]['n']}) | {metric} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    lines += ["", f"Decision: {'promoted' if decision['promote'] else 'rejected'}: {decision['reason']}.", ""]
    lines += ["## Data", "", f"- Corrections: {data}", f"- Held-out corrections judged on: {training.get('held', 0)}"]
    lines += ["- Replay: RAVDESS actors 1-16, GoEmotions-ekman train + MELD train, FER2013 train (retrained branches)"]
    lines += ["", "## Licences", "", LICENCES, "", CORRECTIONS_LICENCE, "", "## Training", ""]
    keys = ("step", "epochs", "merge", "branches", "processes", "precision", "seconds")
    lines += [f"- {k}: {training[k]}" for k in keys if k in training]
    return "\n".join(lines) + "\n"


def model_card(config: EmotionConfig, decision: dict, data: dict, training: dict) -> str:
    return render_card(config, card_metrics(decision["challenger"]), card_body(decision, data, training))


def publish(
    model: EmotionModel,
    *,
    version: str,
    decision: dict,
    store: Store,
    settings: Settings,
    push: str | None = None,
    data: dict | None = None,
    training: dict | None = None,
) -> dict:
    """Save as <registry>/vN with its card, push if asked, record the version, move the registry pointer."""
    model.config.version = version  # the parent was set when the challenger was trained
    card = model_card(model.config, decision, data or {}, training or {})
    folder = model.save_pretrained(registry_dir(settings) / version, card=card)
    result: dict = {"version": version, "folder": str(folder)}
    where = str(folder)
    if push:
        result["push"] = push_model(model, push, version, card)
        if "commit" in result["push"]:
            where = f"{push}@{version}"
    store.record_model_version(version, where, card_metrics(decision["challenger"]), model.config.parent_version)
    promote(folder, version, settings)
    log.info("published %s (parent %s) at %s", version, model.config.parent_version, where)
    return result


def push_model(model: EmotionModel, repo_id: str, version: str, card: str) -> dict:
    """Push and tag; a failure is reported (without the token), the local promotion still stands."""
    token = os.environ.get("HF_TOKEN")
    try:
        commit = model.push_to_hub(
            repo_id, private=True, tag=version, card=card, endpoint=os.environ.get("HF_ENDPOINT")
        )
    except Exception as exc:  # network, auth, quota: report it, keep the local promotion
        message = f"{type(exc).__name__}: {exc}"
        if token:
            message = message.replace(token, "***")
        log.error("push of %s to %s failed: %s", version, repo_id, message)
        return {"repo": repo_id, "tag": version, "error": message}
    return {"repo": repo_id, "tag": version, "commit": commit}
