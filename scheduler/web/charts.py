"""Charts as inline SVG, rendered on the server: readable without JavaScript, no chart
library, nothing fetched by the browser.

Each function returns :class:`markupsafe.Markup` (an ``<svg>`` element) for a template to
insert as is; every text that comes from data (labels, tooltips) is escaped here. Colours are
SVG presentation attributes (so a Content-Security-Policy without ``'unsafe-inline'`` styles
still shows them) with a CSS class per series for the stylesheet to override. Each bar or
point carries a ``<title>`` (the browser's tooltip, and what a screen reader reads), and the
chart a ``<desc>`` summing it up.

    throughput_chart(minutes)  stacked bars per minute: succeeded / failed / cancelled runs
    rate_chart(minutes)        failure rate per minute, in percent, as a line
    lateness_chart(runs)       start lateness of a schedule's runs, one bar per fire time
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 180  # viewBox units; the SVG scales to its container's width
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 8, 10, 24  # margins for the axis labels
COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#9e9e9e",
    "rate": "#c62828",
    "late": "#ef6c00",
    "on-time": "#1565c0",
}


@dataclass(frozen=True)
class Minute:
    """The runs that finished in one minute (``at``: its start, aware)."""

    at: datetime
    succeeded: int
    failed: int
    cancelled: int

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def failure_rate(self) -> float | None:
        """Failed runs / (failed + succeeded) runs, 0-1; None without either."""
        decided = self.succeeded + self.failed
        return self.failed / decided if decided else None


@dataclass(frozen=True)
class Run:
    """One fire time of a schedule: its first attempt's start lateness in seconds (None: it
    has not started), outcome of that attempt, and the text of its tooltip."""

    fire_time: datetime
    lateness_s: float | None
    outcome: str | None
    label: str


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k that is >= ``value`` (1 for ``value <= 0``)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _frame(title: str, desc: str, y_max: float, unit: str, x_labels: list[tuple[float, str]],
           body: list[str]) -> Markup:  # fmt: skip
    plot_h = HEIGHT - _TOP - _BOTTOM
    parts = [
        (
            f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
            f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
        ),
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>",
    ]
    for fraction in (0.0, 0.5, 1.0):  # horizontal grid lines with their value
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#ddd" stroke-width="1"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{escape(_number(y_max * fraction) + unit)}</text>'
        )
    for x, label in x_labels:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11" '
            f'fill="#555">{escape(label)}</text>'
        )
    parts.extend(body)
    parts.append("</svg>")
    return Markup("".join(parts))


def _slots(n: int) -> tuple[float, float]:
    """Width of one of ``n`` slots across the plot, and its bar's width."""
    slot = (WIDTH - _LEFT - _RIGHT) / max(n, 1)
    return slot, max(slot * 0.8, 1.0)


def _minute_labels(minutes: Sequence[Minute], slot: float) -> list[tuple[float, str]]:
    return [
        (_LEFT + slot * (i + 0.5), m.at.strftime("%H:%M"))
        for i, m in enumerate(minutes)
        if m.at.minute % 10 == 0
    ]


def throughput_chart(minutes: Sequence[Minute], zone_label: str = "UTC") -> Markup:
    """Stacked bars, one per minute: runs succeeded (bottom), failed, cancelled."""
    y_max = nice_ceiling(max((m.total for m in minutes), default=0))
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot, bar = _slots(len(minutes))
    body = []
    for i, m in enumerate(minutes):
        x, base = _LEFT + slot * i + (slot - bar) / 2, float(_TOP + plot_h)
        tip = (f"{m.at:%H:%M} {zone_label}: {m.succeeded} succeeded, {m.failed} failed, "
               f"{m.cancelled} cancelled")  # fmt: skip
        body.append(f"<g><title>{escape(tip)}</title>")
        for series, value in (("succeeded", m.succeeded), ("failed", m.failed),
                              ("cancelled", m.cancelled)):  # fmt: skip
            if value <= 0:
                continue
            h = plot_h * value / y_max
            base -= h
            body.append(
                f'<rect class="bar-{series}" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[series]}"/>'
            )
        body.append("</g>")
    total = sum(m.total for m in minutes)
    failed = sum(m.failed for m in minutes)
    desc = f"{total:,} runs finished in {len(minutes)} minutes, {failed:,} of them failed."
    return _frame("Runs finished per minute", desc, y_max, "", _minute_labels(minutes, slot), body)


def rate_chart(minutes: Sequence[Minute], zone_label: str = "UTC") -> Markup:
    """The failure rate per minute (failed / (failed + succeeded) runs) in percent, as a line
    broken where a minute had no run, with a dot per minute."""
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot, _ = _slots(len(minutes))
    body: list[str] = []
    line: list[str] = []
    for i, m in enumerate(minutes):
        rate = m.failure_rate
        if rate is None:
            if len(line) > 1:
                body.append(_polyline(line))
            line = []
            continue
        x, y = _LEFT + slot * (i + 0.5), _TOP + plot_h * (1 - rate)
        line.append(f"{x:.1f},{y:.1f}")
        tip = f"{m.at:%H:%M} {zone_label}: {rate:.0%} of {m.succeeded + m.failed} runs failed"
        body.append(
            f'<circle class="point-rate" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
            f'fill="{COLOURS["rate"]}"><title>{escape(tip)}</title></circle>'
        )
    if len(line) > 1:
        body.append(_polyline(line))
    rates = [m.failure_rate for m in minutes if m.failure_rate is not None]
    desc = (f"Failure rate per minute; highest {max(rates):.0%}." if rates
            else "No run finished in these minutes.")  # fmt: skip
    labels = _minute_labels(minutes, slot)
    return _frame("Failed runs, percent per minute", desc, 100.0, "%", labels, body)


def _polyline(points: list[str]) -> str:
    return (f'<polyline class="line-rate" points="{" ".join(points)}" fill="none" '
            f'stroke="{COLOURS["rate"]}" stroke-width="1.5"/>')  # fmt: skip


def lateness_chart(runs: Sequence[Run], late_s: float = 60.0) -> Markup:
    """One bar per fire time (oldest left): how late its first attempt started, in seconds.
    Bars at or over ``late_s`` are drawn as late; runs not started yet have no bar."""
    started = [r.lateness_s for r in runs if r.lateness_s is not None]
    y_max = nice_ceiling(max((max(v, 0.0) for v in started), default=0.0))
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot, bar = _slots(len(runs))
    body = []
    for i, r in enumerate(runs):
        if r.lateness_s is None:
            continue
        value = max(r.lateness_s, 0.0)
        h = max(plot_h * value / y_max, 1.0)
        x, y = _LEFT + slot * i + (slot - bar) / 2, _TOP + plot_h - h
        series = "late" if value >= late_s else "on-time"
        body.append(
            f'<rect class="bar-{series}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
            f'height="{h:.1f}" fill="{COLOURS[series]}"><title>{escape(r.label)}</title></rect>'
        )
    labels = []
    if runs:
        step = max(len(runs) // 5, 1)
        labels = [(_LEFT + slot * (i + 0.5), runs[i].fire_time.strftime("%m-%d %H:%M"))
                  for i in range(0, len(runs), step)]  # fmt: skip
    worst = max(started, default=None)
    desc = (f"Start lateness of {len(started)} runs; worst {worst:.3f} s." if worst is not None
            else "No run has started yet.")  # fmt: skip
    return _frame("Start lateness per fire time (seconds)", desc, y_max, " s", labels, body)
