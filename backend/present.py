"""Presentation: a Prediction (and store figures) as the plain values the UI widgets display.

Pure functions over the project's value objects: no Gradio here, so every view is unit-tested and
the app only wires them to components. Tables are pandas DataFrames; images are RGB uint8 arrays.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from backend.labels import LABELS
from backend.types import Face, Prediction, WordTag

# One colour per emotion, shared by the highlighted transcript, face boxes and plots (hex RGB).
EMOTION_COLORS: dict[str, str] = {
    "neutral": "#9ca3af",
    "happy": "#f59e0b",
    "sad": "#3b82f6",
    "angry": "#ef4444",
    "fearful": "#8b5cf6",
    "disgust": "#65a30d",
    "surprised": "#ec4899",
}
MODALITY_NAMES = {"speech": "voice (speech audio)", "text": "words (text/transcript)", "face": "face (image/video)"}
BREAKDOWN_COLUMNS = ["modality", "says", "confidence", "weight"]
TIMELINE_COLUMNS = ["time", "emotion", "probability"]
BOX_MIN_THICKNESS = 2  # pixels; boxes scale with the image above ~600 px
FONT = cv2.FONT_HERSHEY_SIMPLEX
CONFUSION_GLOB = "*confusion*.png"


def percent(p: float) -> str:
    return f"{100.0 * float(p):.0f}%"


# ------------------------------------------------------------------------------------------ escaping
# Every string that came from outside (names, notes, clip text, versions, ids, logs) goes into Markdown
# through one of these. Gradio's sanitizer only strips event handlers: an <img> or <a> would still render.

_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]()#!|~])")  # emphasis, code, links, images, headings, tables


def md_text(value: object) -> str:
    """Literal inline text: HTML-escaped (no element can appear) and Markdown punctuation backslash-escaped
    (no emphasis, code, link, image, heading or table); newlines become spaces (no new block)."""
    text = " ".join(str(value).split())
    return html.escape(_MD_PUNCTUATION.sub(r"\\\1", text), quote=True)


def md_code(value: object) -> str:
    """An inline code span of a string (backticks, which would end the span, become quotes)."""
    return "`" + " ".join(str(value).replace("`", "'").split()) + "`"


def md_code_block(text: str) -> str:
    """A fenced code block of any text: the fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def clip_text_markdown(text: str) -> str:
    """A text clip shown to annotators, quoted."""
    return f"> {md_text(text)}"


# ------------------------------------------------------------------------------------------ analysis


def label_confidences(prediction: Prediction) -> dict[str, float]:
    """Fused probabilities, highest first (what gr.Label shows)."""
    return dict(sorted(((k, float(v)) for k, v in prediction.probs.items()), key=lambda kv: -kv[1]))


def breakdown_table(prediction: Prediction) -> pd.DataFrame:
    """One row per modality that spoke (what it said, how sure, its fusion weight; as percentages), then the fused row.

    The weight is the one fusion used: each modality's share in the product of experts (its reliability exponent
    over their sum, see ModalityResult), so 50/25/25 means the first counted twice as much as each other one.
    """
    rows = [
        [MODALITY_NAMES.get(name, name), result.label, percent(result.probs[result.label]), percent(result.weight)]
        for name, result in prediction.modalities.items()
    ]
    total = sum(result.weight for result in prediction.modalities.values())
    rows.append(["fused (all together)", prediction.label, percent(prediction.confidence), percent(total)])
    return pd.DataFrame(rows, columns=BREAKDOWN_COLUMNS)


def highlighted_words(words: list[WordTag], text: str | None) -> list[tuple[str, str | None]]:
    """The text as (piece, emotion or None) spans for gr.HighlightedText, punctuation and spacing kept.

    Words are located in order in the original text, so gaps (spaces, punctuation) come back as
    unlabelled pieces; a word that cannot be found is appended as its own piece.
    """
    if not text:
        return [(w.word + " ", w.emotion) for w in words]
    spans: list[tuple[str, str | None]] = []
    pos = 0
    for tag in words:
        found = text.find(tag.word, pos)
        if found < 0:
            spans.append((tag.word, tag.emotion))
            continue
        if found > pos:
            spans.append((text[pos:found], None))
        spans.append((tag.word, tag.emotion))
        pos = found + len(tag.word)
    if pos < len(text):
        spans.append((text[pos:], None))
    return _merge_plain(spans)


def _merge_plain(spans: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Join neighbouring unlabelled pieces so the widget shows sentences, not one box per word."""
    out: list[tuple[str, str | None]] = []
    for piece, emotion in spans:
        if emotion is None and out and out[-1][1] is None:
            out[-1] = (out[-1][0] + piece, None)
        else:
            out.append((piece, emotion))
    return out


def _bgr(hex_color: str) -> tuple[int, int, int]:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def draw_faces(frame: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of the RGB frame (H, W, 3) with each face's box and reading ("happy 62%") drawn on it."""
    assert frame.ndim == 3 and frame.shape[2] == 3, f"expected an RGB frame (H, W, 3), got {frame.shape}"
    canvas = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    height, width = canvas.shape[:2]
    thickness = max(BOX_MIN_THICKNESS, round(max(height, width) / 300))
    scale = max(0.5, max(height, width) / 900)
    for face in faces:
        x, y, w, h = (int(v) for v in face.box)
        label = max(face.probs, key=face.probs.get)
        color = _bgr(EMOTION_COLORS.get(label, "#ffffff"))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thickness)
        text = f"{label} {percent(face.probs[label])}"
        (tw, th), base = cv2.getTextSize(text, FONT, scale, max(1, thickness // 2))
        top = y - th - base - 4 if y - th - base - 4 >= 0 else y + h
        cv2.rectangle(canvas, (x, top), (x + tw + 6, top + th + base + 4), color, -1)
        cv2.putText(canvas, text, (x + 3, top + th + 2), FONT, scale, (0, 0, 0), max(1, thickness // 2), cv2.LINE_AA)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def face_image(frames: list[np.ndarray] | None, faces: list[Face]) -> np.ndarray | None:
    """The frame showing the most faces, annotated; the first frame as is when no face was found."""
    if not frames:
        return None
    if not faces:
        return np.asarray(frames[0])
    counts: dict[int, int] = {}
    for face in faces:
        counts[face.frame_index] = counts.get(face.frame_index, 0) + 1
    best = max(counts, key=lambda index: (counts[index], -index))
    return draw_faces(frames[best], [f for f in faces if f.frame_index == best])


def timeline_frame(prediction: Prediction) -> pd.DataFrame:
    """Long-format (time = window centre in s, emotion, probability) rows for a line plot; empty if none."""
    rows = [
        [round((seg.start + seg.end) / 2.0, 3), label, float(seg.probs.get(label, 0.0))]
        for seg in prediction.timeline
        for label in LABELS
    ]
    return pd.DataFrame(rows, columns=TIMELINE_COLUMNS)


def summary_markdown(prediction: Prediction, device: str | None = None) -> str:
    """One paragraph: the reading, which inputs were used, duration and speed, model version, notes."""
    used = ", ".join(prediction.modalities) or "nothing"
    parts = [f"**{prediction.label}** ({percent(prediction.confidence)} sure) from {used}"]
    if prediction.uncertain and prediction.alternatives:
        guess = " or ".join(md_text(a) for a in prediction.alternatives)
        parts[0] = (
            f"**Not sure: {guess}?** (likeliest {md_text(prediction.label)}, {percent(prediction.confidence)}) from {used}"
        )
    if prediction.duration:
        parts.append(f"{prediction.duration:.1f} s of audio")
    parts.append(f"took {prediction.latency_ms / 1000.0:.1f} s" + (f" on {device}" if device else ""))
    parts.append(f"model {md_code(prediction.model_version)}")
    text = " · ".join(parts)
    if prediction.notes:
        text += "\n\n" + "\n".join(f"- {md_text(note)}" for note in prediction.notes)
    return text


# ------------------------------------------------------------------------------------------ labelling


def receipt_markdown(receipt: dict[str, Any]) -> str:
    """What was just stored, in words a contributor can check (no server paths)."""
    if receipt.get("vote_id") is None:
        said = "your answer 'unsure' (no emotion recorded)"
    else:
        said = "your label " + " + ".join(f"**{md_text(name)}**" for name in receipt["labels"])
        if receipt.get("unsure"):
            said += " (marked unsure)"
    kept = (
        "the media itself (you allowed it for training)"
        if receipt.get("kept_media")
        else "no media: only a fingerprint (hash) of it"
    )
    lines = [
        f"Saved: {said}, the model's prediction (model {md_code(receipt['model_version'])}) and {kept}.",
        f"Clip {md_code(receipt['clip_id'][:12])}, contributor {md_code(receipt['annotator_id'])}"
        + (", with your note." if receipt.get("note") else "."),
        "Changed your mind? **Delete what I gave** removes it.",
    ]
    return "\n\n".join(lines)


def deletion_markdown(counts: dict[str, int]) -> str:
    """A deletion's counts as one sentence ('Deleted 1 clip, 1 vote and 1 media file.')."""
    names = {
        "clips": "clip",
        "votes": "vote",
        "predictions": "prediction",
        "files": "media file",
        "vote_history": "earlier vote",
        "annotators": "contributor record",
    }
    parts = [f"{n} {names[key]}{'' if n == 1 else 's'}" for key, n in counts.items() if key in names and n]
    if not parts:
        return "Nothing was stored for you, so nothing was deleted."
    return "Deleted " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def display_name(annotator_id: str) -> str:
    """'name:alice' or 'hf:alice' -> 'alice' (ids carry a prefix that says where the name came from)."""
    return annotator_id.split(":", 1)[1] if ":" in annotator_id else annotator_id


def progress_markdown(progress: dict[str, Any]) -> str:
    """An annotator's own progress: votes given, gold accuracy so far, clips still waiting."""
    line = f"**{md_text(display_name(progress['annotator_id']))}**: {progress['votes']} vote(s) given"
    if progress.get("gold_seen"):
        line += f", {percent(progress['gold_accuracy'] or 0.0)} right on {progress['gold_seen']} check item(s)"
    return line + f", {progress['remaining']} clip(s) waiting."


def clip_context_markdown(prediction: dict[str, Any] | None, votes: list[dict[str, Any]]) -> str:
    """What the model and other annotators said about a clip (shown only when labelling is not blind)."""
    lines = []
    if prediction:
        lines.append(f"Model {md_code(prediction['model_version'])} says **{md_text(prediction['top_label'])}**.")
    if votes:
        tally: dict[str, int] = {}
        for vote in votes:
            for label in vote["labels"]:
                tally[label] = tally.get(label, 0) + 1
        ranked = sorted(tally.items(), key=lambda kv: -kv[1])
        lines.append("Others voted: " + ", ".join(f"{md_text(k)} x{v}" for k, v in ranked))
    return "\n\n".join(lines) or "No prediction or votes yet."


# ------------------------------------------------------------------------------------------ model tab


def label_distribution(stats: dict[str, Any]) -> pd.DataFrame:
    """(emotion, votes) rows in taxonomy order from Store.stats()."""
    counts = stats.get("vote_labels", {})
    return pd.DataFrame([[name, int(counts.get(name, 0))] for name in LABELS], columns=["emotion", "votes"])


def counts_table(stats: dict[str, Any]) -> pd.DataFrame:
    """The store's scalar counts as (what, count) rows."""
    rows = [[key.replace("_", " "), value] for key, value in stats.items() if isinstance(value, (int, float))]
    return pd.DataFrame(rows, columns=["what", "count"])


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def agreement_markdown(report: dict[str, Any]) -> str:
    """Krippendorff's alpha and Fleiss' kappa overall and per class, from agreement_report()."""
    lines = [
        "### Agreement between annotators",
        "Krippendorff's alpha and Fleiss' kappa: 1 = full agreement, 0 = chance level, below 0 = worse than chance.",
        "",
        f"Clips rated by 2+ people: **{report.get('clips_rated_twice', 0)}** · votes: {report.get('votes', 0)} · "
        f"Krippendorff's alpha: **{_fmt(report.get('alpha'))}** · Fleiss' kappa: **{_fmt(report.get('fleiss_kappa'))}**",
    ]
    per_class = report.get("per_class") or {}
    if per_class:
        lines += ["", "| emotion | alpha | kappa | votes |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {_fmt(v.get('alpha'))} | {_fmt(v.get('fleiss_kappa'))} | {v.get('votes_with_label', 0)} |"
            for name, v in per_class.items()
        ]
    return "\n".join(lines)


def _gain_cell(sup: dict[str, Any]) -> str:
    """'+0.120 [+0.040, +0.200] (90%)' from the gate's superiority test, '' for older runs."""
    if not sup.get("n"):
        return ""
    level = f" ({sup['ci_level']:.0%})" if "ci_level" in sup else ""
    return f"{sup['delta']:+.3f} [{sup['ci_low']:+.3f}, {sup['ci_high']:+.3f}]{level}"


def _checks_cell(checks: list[dict[str, Any]]) -> str:
    """'6/6 ok; worst ravdess_dev accuracy -0.010 (margin 0.032)'."""
    if not checks:
        return ""
    worst = min(checks, key=lambda c: c.get("ci_low", c.get("delta", 0.0)) + c.get("margin", 0.0))
    ok = sum(bool(c.get("ok")) for c in checks)
    margin = f" (margin {worst['margin']:.3f})" if "margin" in worst else ""
    return f"{ok}/{len(checks)} ok; worst {worst['set']} {worst['metric']} {worst['delta']:+.3f}{margin}"


def _audit_cell(audit: dict[str, Any]) -> str:
    """'38/40 (95%, 90% CI 86-98%)': the crowd's labels against gold on voted gold clips (train.gate's audit), the
    interval where the run recorded one; '' for older runs."""
    if not audit.get("n"):
        return ""
    cell = f"{audit['agree']}/{audit['n']} ({audit['accuracy']:.0%}"
    if audit.get("ci_low") is not None:
        cell += f", 90% CI {100 * audit['ci_low']:.0f}-{100 * audit['ci_high']:.0f}%"
    return cell + ")"


def _ece_cell(calibration: dict[str, Any]) -> str:
    """'speech 0.210->0.050' per recalibrated branch (ECE on the calibration split)."""
    parts = []
    for branch, b in (calibration.get("branches") or {}).items():
        before, after = b.get("calibration_before", {}).get("ece"), b.get("calibration_after", {}).get("ece")
        if before is not None and after is not None:
            parts.append(f"{branch} {before:.3f}->{after:.3f}" + ("" if b.get("refit") else " (kept)"))
    return ", ".join(parts)


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Retraining history with its promotion decisions (Store.training_runs()): the held-out gain with its
    confidence interval, McNemar p, the dev-set non-inferiority checks, the crowd's labels against gold, ECE
    before/after recalibration."""
    columns = [
        "started",
        "base",
        "candidate",
        "corrections",
        "decision",
        "held-out n",
        "gain [CI]",
        "McNemar p",
        "dev checks",
        "crowd vs gold",
        "ECE before->after",
        "test",
        "reason",
    ]
    rows = []
    for r in runs:
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        sup = metrics.get("superiority") or {}
        mcnemar = sup.get("mcnemar") or {}
        rows.append(
            [
                str(r.get("started", ""))[:19],
                r.get("base_version"),
                r.get("candidate_version"),
                r.get("n_corrections"),
                r.get("decision"),
                sup.get("n"),
                _gain_cell(sup),
                round(mcnemar["p_one_sided"], 4) if "p_one_sided" in mcnemar else None,
                _checks_cell(metrics.get("checks") or []),
                _audit_cell(metrics.get("audit") or {}),
                _ece_cell((metrics.get("training") or {}).get("calibration") or {}),
                metrics.get("test", ""),
                r.get("reason"),
            ]
        )
    return pd.DataFrame(rows, columns=columns)


@dataclass
class ModelInfo:
    """What the Model tab shows about the loaded model folder."""

    version: str
    card: str = ""  # the model card's prose (front matter removed)
    metrics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["branch", "metric", "value"]))
    confusion: Path | None = None  # a confusion-matrix image, if the folder has one


_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


def model_info(folder: Path | None, version: str) -> ModelInfo:
    """Read README.md (card prose), training_summary.json (dev metrics) and a confusion image if present."""
    info = ModelInfo(version=version)
    if folder is None or not Path(folder).is_dir():
        return info
    folder = Path(folder)
    card = folder / "README.md"
    if card.is_file():
        info.card = _FRONT_MATTER.sub("", card.read_text(encoding="utf-8", errors="replace"), count=1).strip()
    summary = folder / "training_summary.json"
    if summary.is_file():
        info.metrics = summary_metrics(json.loads(summary.read_text(encoding="utf-8")))
    images = sorted(folder.glob(CONFUSION_GLOB))
    info.confusion = images[0] if images else None
    return info


def summary_metrics(summary: dict[str, Any]) -> pd.DataFrame:
    """training_summary.json ({branch: {"dev": {metric: value}}}) as (branch, metric, value) rows."""
    rows = []
    for branch, figures in summary.items():
        dev = figures.get("dev", {}) if isinstance(figures, dict) else {}
        for metric in ("accuracy", "uar", "macro_f1", "weighted_f1", "ece_after"):
            if isinstance(dev.get(metric), (int, float)):
                rows.append([branch, metric, round(float(dev[metric]), 4)])
    return pd.DataFrame(rows, columns=["branch", "metric", "value"])
