"""Small server-side SVG charts (no JavaScript, no CDN): integer geometry, escaped labels."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD, LABEL_W = 640, 220, 24, 150
COLORS = {
    "new": "#2e7d32",
    "reactivation": "#66bb6a",
    "expansion": "#1565c0",
    "contraction": "#ef6c00",
    "churn": "#c62828",
    "bar": "#417690",  # the admin's own blue
}


def _scale(value: int, top: int, span: int) -> int:
    return (abs(value) * span) // top if top else 0


def column_chart(*, title: str, columns: Sequence[tuple[str, int, str]]) -> SafeString:
    """One column per (label, value, text shown on hover); values >= 0."""
    top = max((value for _, value, _ in columns), default=0)
    step = (WIDTH - 2 * PAD) // max(len(columns), 1)
    span = HEIGHT - 2 * PAD
    parts = []
    for index, (label, value, text) in enumerate(columns):
        h = _scale(value, top, span)
        x = PAD + index * step
        parts.append(
            f'<rect x="{x + 2}" y="{HEIGHT - PAD - h}" width="{max(step - 4, 1)}" height="{h}" '
            f'fill="{COLORS["bar"]}"><title>{escape(label)}: {escape(text)}</title></rect>'
            + _axis_label(x + step // 2, HEIGHT - 8, label)
        )
    return _svg(title, HEIGHT, "".join(parts))


def movement_chart(*, title: str, months: Sequence[tuple[str, dict[str, int], dict[str, str]]]) -> SafeString:
    """Per month, the positive movements stacked up and the negative ones down from a middle line."""
    up_names, down_names = ("new", "reactivation", "expansion"), ("contraction", "churn")
    top = max(
        (max(sum(m[n] for n in up_names), sum(m[n] for n in down_names)) for _, m, _ in months), default=0
    )
    middle, half = HEIGHT // 2, HEIGHT // 2 - PAD
    step = (WIDTH - 2 * PAD) // max(len(months), 1)
    parts = [f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{middle}" y2="{middle}" stroke="#999"/>']
    for index, (label, moves, texts) in enumerate(months):
        x = PAD + index * step
        y = middle
        for name in up_names:
            h = _scale(moves[name], top, half)
            y -= h
            parts.append(_bar(x, y, step, h, name, texts[name]))
        y = middle
        for name in down_names:
            h = _scale(moves[name], top, half)
            parts.append(_bar(x, y, step, h, name, texts[name]))
            y += h
        parts.append(_axis_label(x + step // 2, HEIGHT - 4, label))
    return _svg(title, HEIGHT, "".join(parts))


def _axis_label(x: int, y: int, label: str) -> str:
    return f'<text x="{x}" y="{y}" font-size="10" text-anchor="middle">{escape(label)}</text>'


def _bar(x: int, y: int, step: int, h: int, name: str, text: str) -> str:
    return (
        f'<rect x="{x + 2}" y="{y}" width="{max(step - 4, 1)}" height="{h}" fill="{COLORS[name]}">'
        f"<title>{escape(name)}: {escape(text)}</title></rect>"
    )


def hbar_chart(*, title: str, bars: Sequence[tuple[str, int, str]]) -> SafeString:
    """Horizontal bars with their label on the left and their text on the right; values >= 0."""
    top = max((value for _, value, _ in bars), default=0)
    row = 18
    height = max(len(bars), 1) * row + 8
    span = WIDTH - LABEL_W - 140
    parts = []
    for index, (label, value, text) in enumerate(bars):
        y = 4 + index * row
        w = _scale(value, top, span)
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{LABEL_W}" y="{y + 2}" width="{w}" height="{row - 4}" fill="{COLORS["bar"]}">'
            f"<title>{escape(label)}: {escape(text)}</title></rect>"
            f'<text x="{LABEL_W + w + 6}" y="{y + 12}" font-size="11">{escape(text)}</text>'
        )
    return _svg(title, height, "".join(parts))


def _svg(title: str, height: int, body: str) -> SafeString:
    return mark_safe(  # every text above went through escape()
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" class="report-chart">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )
