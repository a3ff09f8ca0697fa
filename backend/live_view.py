"""What the Analyze tab shows while someone speaks: the current reading and a timeline of speech segments.

Plain functions from backend.streaming's LiveUpdate to widget values (HTML strings, a label dict).
"""

from __future__ import annotations

import html

from backend.present import EMOTION_COLORS, percent
from backend.streaming import NOT_SURE, LiveUpdate

UNSURE_COLOR = "#64748b"  # slate for "not sure" (neutral is light grey)
TIMELINE_MIN_SECONDS = 10.0  # the strip spans at least this much time, so early segments do not fill it


def live_label(update: LiveUpdate) -> dict[str, float] | None:
    """gr.Label value: the latest reading's probabilities (None before the first reading)."""
    return dict(update.latest.probs) if update.latest else None


def now_html(update: LiveUpdate) -> str:
    """The current reading in big type, with its confidence and whether the person is speaking."""
    latest = update.latest
    state = "speaking" if update.speaking else ("stopped" if update.finished else "listening")
    if latest is None:
        shown, detail, color = "…", "waiting for speech", UNSURE_COLOR
    else:
        shown = latest.shown
        color = EMOTION_COLORS.get(shown, UNSURE_COLOR)
        detail = f"{percent(latest.confidence)} sure"
        if shown == NOT_SURE:
            detail = f"maybe {latest.label} ({percent(latest.confidence)}, under {percent(update.threshold)})"
    took = f" · last reading took {latest.latency_ms:.0f} ms" if latest is not None else ""
    return (
        f'<div class="live-now" data-label="{html.escape(shown)}" data-state="{state}" data-seconds="{update.seconds:.2f}">'
        f'<span style="font-size:2em;font-weight:700;color:{color}">{html.escape(shown)}</span> '
        f"<span>{html.escape(detail)}</span><br>"
        f"<small>{state} · {update.seconds:.1f} s heard{took}</small></div>"
    )


def timeline_html(update: LiveUpdate) -> str:
    """A strip with one coloured block per speech segment (its mean reading); gaps are silence."""
    span = max(TIMELINE_MIN_SECONDS, update.seconds)
    blocks = []
    for segment in update.segments:
        info = segment.to_dict(update.threshold)
        if info["top"] is None:
            continue
        end = segment.end if segment.end is not None else update.seconds
        left, width = 100 * segment.start / span, max(0.5, 100 * (end - segment.start) / span)
        color = EMOTION_COLORS.get(info["label"], UNSURE_COLOR)
        title = f"{segment.start:.1f}-{end:.1f} s: {info['label']} ({percent(info['confidence'])})"
        blocks.append(
            f'<div class="live-seg" data-label="{html.escape(info["label"])}" data-top="{html.escape(info["top"])}" '
            f'title="{html.escape(title)}" '
            f'style="position:absolute;left:{left:.2f}%;width:{width:.2f}%;top:0;bottom:0;background:{color};'
            f'color:white;font-size:0.8em;overflow:hidden;white-space:nowrap;padding:2px">'
            f"{html.escape(info['label'])}</div>"
        )
    return (
        '<div class="live-timeline" style="position:relative;height:2.2em;background:#f3f4f6;'
        f'border-radius:4px">{"".join(blocks)}</div>'
        f"<small>0 s … {span:.0f} s · coloured = speech (its emotion), grey track = silence</small>"
    )
