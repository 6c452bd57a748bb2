"""Chart geometry for the console's inline SVG: computed here, drawn by the templates.

Server-side SVG needs no JavaScript library and reads the same on any device; each
chart also carries its figures as a table for screen readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Colours chosen for contrast on white (each at least 3:1, the WCAG ratio for graphics).
STATUS_COLOURS = {
    "scheduled": "#6b7280",
    "queued": "#8a5a00",
    "sending": "#b45309",
    "sent": "#1d4ed8",
    "delivered": "#047857",
    "read": "#0f766e",
    "failed": "#b91c1c",
    "undelivered": "#9d174d",
    "canceled": "#4b5563",
    "received": "#6d28d9",
}

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM = 600, 180, 36, 22


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str


@dataclass
class Chart:
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)  # y, label
    xlabels: list[tuple[float, str]] = field(default_factory=list)  # x, label
    line: float | None = None  # y of a reference line (the campaign's rate)
    line_label: str = ""
    line_label_y: float = 0.0
    width: int = WIDTH
    height: int = HEIGHT
    plot_top: int = 8
    plot_left: int = PAD_LEFT
    plot_bottom: int = HEIGHT - PAD_BOTTOM
    legend: list[tuple[str, str]] = field(default_factory=list)
    table: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    empty: bool = True
    empty_text: str = "No messages yet"
    empty_y: float = HEIGHT / 2


def _nice_max(value: float) -> float:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if value <= step:
            return float(step)
    magnitude = 10 ** (len(str(int(value))) - 1)
    return float((int(value / magnitude) + 1) * magnitude)


def _axis(chart: Chart, top_value: float) -> float:
    """Y ticks (0, half, top) and the scale: pixels per unit."""
    plot_height = chart.plot_bottom - chart.plot_top
    scale = plot_height / top_value
    for fraction in (0.0, 0.5, 1.0):
        value = top_value * fraction
        label = f"{value:g}"
        chart.ticks.append((chart.plot_bottom - value * scale, label))
    return scale


def stacked_status_chart(
    starts: list[datetime], counts: list[dict[str, int]], label_format: str
) -> Chart:
    """One stacked bar per time slice, one segment per status."""
    chart = Chart()
    totals = [sum(c.values()) for c in counts]
    chart.empty = not any(totals)
    scale = _axis(chart, _nice_max(max([*totals, 1])))
    slot = (chart.width - chart.plot_left) / max(1, len(counts))
    present = [s for s in STATUS_COLOURS if any(c.get(s) for c in counts)]
    for index, (start, bucket) in enumerate(zip(starts, counts, strict=True)):
        x = chart.plot_left + index * slot + slot * 0.12
        y = float(chart.plot_bottom)
        for status in present:
            n = bucket.get(status, 0)
            if not n:
                continue
            height = n * scale
            y -= height
            chart.bars.append(
                Bar(
                    x,
                    y,
                    slot * 0.76,
                    height,
                    STATUS_COLOURS[status],
                    f"{start.strftime(label_format)}: {n} {status}",
                )
            )
        if index % max(1, len(counts) // 6) == 0:
            chart.xlabels.append((x + slot * 0.38, start.strftime(label_format)))
        chart.table.append((start.strftime(label_format), bucket))
    chart.legend = [(s, STATUS_COLOURS[s]) for s in present]
    return chart


def send_rate_chart(
    start: datetime, per_second: list[int], rate: float, *, sent_before: bool = False
) -> Chart:
    """Sends per second as bars against the campaign's rate as a dashed line. With no
    send in the window, a note says whether any message was ever sent (`sent_before`),
    placed clear of the rate line."""
    chart = Chart()
    chart.empty = not any(per_second)
    if sent_before:
        chart.empty_text = "No sends in this minute"
    scale = _axis(chart, _nice_max(max([*per_second, rate * 1.2, 1])))
    slot = (chart.width - chart.plot_left) / max(1, len(per_second))
    for index, n in enumerate(per_second):
        x = chart.plot_left + index * slot + slot * 0.1
        if n:
            chart.bars.append(
                Bar(
                    x,
                    chart.plot_bottom - n * scale,
                    slot * 0.8,
                    n * scale,
                    "#1d4ed8",
                    f"second {index + 1}: {n} sent",
                )
            )
        if index % 10 == 0:
            chart.xlabels.append((x, f"-{len(per_second) - index}s"))
    chart.line = chart.plot_bottom - rate * scale
    chart.line_label_y = chart.line - 4 if chart.line > chart.plot_top + 14 else chart.line + 14
    chart.line_label = f"rate {rate:g}/s"
    middle = (chart.plot_top + chart.plot_bottom) / 2
    chart.empty_y = middle if abs(middle - chart.line) > 16 else chart.plot_bottom - 10
    chart.legend = [("sent per second", "#1d4ed8"), (f"campaign rate ({rate:g}/s)", "#b91c1c")]
    return chart
