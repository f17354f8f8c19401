"""Draw the Grafana dashboard "MASENet service" as one PNG with matplotlib, from a real Prometheus.

This is a rendering of the dashboard's queries, not a Grafana screenshot: Grafana does not run. The script reads
`deploy/grafana/dashboards/masenet.json` and runs every target's PromQL through Prometheus' HTTP API:
`/api/v1/query_range` over the traffic window (step 5 s, coarser than Grafana's own) for time series and stat
panels, `/api/v1/query` at the window's end for the targets Grafana runs as instant queries (bar gauges, the table).
Each panel is drawn at its gridPos with its title, unit, legendFormat and fixed colours by series name: time series as
lines (stacked ones filled, each on the series before it), stat as the last non-null value over a sparkline, bar
gauge as bars, table as text. Variables are replaced as in the live test: `$__rate_interval` by 30s, `$route` by `.*`
(All), and `$__range` by the window's length.

By default it starts the stack itself (`deploy/live_stack.py`: `masenet serve`, one CPU `masenet worker`, Prometheus
scraping both every second; Redis DB 11 under a prefix of its own, deleted at the end) and sends `--seconds` of
mixed traffic: single and multi-image /detect requests, Grad-CAM, refused requests (corrupt image, too many pixels,
bad parameter, a full queue during two 10 s overload surges), truncated frames that fail in the worker, one
small video job, and a live stream at 5 fps on a fake 10 fps MJPEG camera that vanishes for 8 s at half time and is
stopped at the end. With `--prometheus URL` it sends nothing and draws the last `--seconds` of that Prometheus.

    python -m deploy.render_dashboard [--seconds 150] [--weights CKPT] [--prometheus URL] [--output PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from deploy.live_stack import STACK_SETTINGS, live_stack, send_traffic
from tools.traffic import random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "masenet.json"
SHIPPED_WEIGHTS = ROOT / "model" / "weights" / "masenet-n-synthetic.safetensors"
REDIS_URL = "redis://127.0.0.1:6379/11"
STEP_S = 5
GPU_NOTE = "no data (CPU-only run: NVML metrics exist only on CUDA workers)"
COLORS = ("#73BF69", "#F2CC0C", "#5794F2", "#FF780A", "#F2495C", "#B877D9", "#8AB8FF", "#FADE2A", "#96D98D", "#FFB357")
COLORS += ("#CA95E5", "#FF7383", "#C0D8FF", "#37872D", "#E0B400", "#1F60C4")  # Grafana's classic palette, in order
PAGE, PANEL, EDGE, TEXT, DIM = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"
THRESHOLD_COLORS = {"green": "#73BF69", "red": "#F2495C"}
GRID_UNIT_IN, WIDTH_IN, TOP_IN, BOTTOM_IN = 0.36, 18.0, 0.7, 0.45
# (expr, start or None for an instant query, end) -> Prometheus' `data.result`
Query = Callable[[str, float | None, float], list[dict[str, Any]]]


@dataclass
class Frame:
    ref_id: str
    legend: str
    labels: dict[str, str]
    times: list[float]
    values: list[float]


def prometheus_query(url: str) -> Query:
    def run(expr: str, start: float | None, end: float) -> list[dict[str, Any]]:
        instant = {"query": expr, "time": end}
        params = instant if start is None else {"query": expr, "start": start, "end": end, "step": STEP_S}
        answer = httpx.get(f"{url}/api/v1/{'query' if start is None else 'query_range'}", params=params, timeout=30)
        if answer.json()["status"] != "success":
            raise RuntimeError(f"{expr}: {answer.json().get('error')}")
        return answer.json()["data"]["result"]

    return run


def substitute(expr: str, range_s: float) -> str:
    """Grafana's variables replaced by concrete values, longest names first (`$__range` vs `$__rate_interval`)."""
    values = {"$__rate_interval": "30s", "$__interval": f"{STEP_S}s", "$__range": f"{round(range_s)}s", "$route": ".*"}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__") + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match[1], ""), template).strip()


def panel_frames(panel: dict[str, Any], query: Query, start: float, end: float) -> list[Frame]:
    frames: list[Frame] = []
    for target in panel["targets"]:
        instant = bool(target.get("instant"))
        found = []
        for item in query(substitute(target["expr"], end - start), None if instant else start, end):
            points = item["values"] if "values" in item else [item["value"]]
            labels = item["metric"]
            times, values = [float(t) for t, _ in points], [float(v) for _, v in points]  # "NaN" parses
            found.append(Frame(target["refId"], legend(target.get("legendFormat", ""), labels), labels, times, values))
        if target.get("format") == "heatmap":  # Grafana turns cumulative `le` buckets into counts per bucket
            found.sort(key=lambda frame: float(frame.labels["le"]))
            for lower, upper in zip(found[::-1][1:], found[::-1], strict=False):
                upper.values = [u - v for u, v in zip(upper.values, lower.values, strict=True)]
        frames.extend(found)
    return frames


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s" and abs(value) < 1:
        return f"{value * 1000:.3g} ms"
    base, prefixes = (1024, ("", "Ki", "Mi", "Gi", "Ti")) if unit == "bytes" else (1000, ("", "k", "M", "G", "T"))
    power = min(int(math.log(abs(value), base)), 4) if abs(value) >= base else 0
    scaled = f"{value / base**power:.3g}"
    if unit in ("Bps", "bytes"):
        return f"{scaled} {prefixes[power]}{'B/s' if unit == 'Bps' else 'B'}"
    return f"{scaled}{prefixes[power]}{ {'s': ' s', 'reqps': ' req/s'}.get(unit, '') }"


def last_not_null(values: list[float]) -> float:
    return next((value for value in reversed(values) if not math.isnan(value)), math.nan)


def threshold_color(panel: dict[str, Any], value: float) -> str:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps")
    steps = steps or [{"color": "green", "value": None}, {"color": "red", "value": 80}]  # Grafana's default
    color = steps[0]["color"]
    for step in steps[1:]:
        color = step["color"] if value >= step["value"] else color
    return THRESHOLD_COLORS.get(color, color)


def time_locator(span_s: float, ticks: int) -> Any:
    """Ticks on round clock times, about `ticks` of them over `span_s` seconds."""
    import matplotlib.dates as mdates

    every = next((s for s in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800) if span_s / s <= ticks), 0)
    if not every:
        return mdates.AutoDateLocator()
    if every < 60:
        return mdates.SecondLocator(bysecond=range(0, 60, every))
    return mdates.MinuteLocator(byminute=range(0, 60, every // 60))


def draw_panel(
    fig: Any, box: tuple[float, ...], panel: dict[str, Any], frames: list[Frame], window: tuple[float, float]
) -> str:
    """Draw one panel into `box` (left, bottom, width, height in inches); return "data", "no data" or "gpu"."""
    from matplotlib.patches import FancyBboxPatch

    left, bottom, width, height = box
    fig_w, fig_h = fig.get_size_inches()
    corner, size = (left / fig_w, bottom / fig_h), (width / fig_w, height / fig_h)
    style = "round,pad=0,rounding_size=0.002"
    fig.add_artist(FancyBboxPatch(corner, *size, boxstyle=style, facecolor=PANEL, edgecolor=EDGE, zorder=-1))
    title_at = ((left + 0.1) / fig_w, (bottom + height - 0.2) / fig_h)
    fig.text(*title_at, panel["title"], color=TEXT, fontsize=10.5, fontweight="bold", va="center")
    unit, kind = panel["fieldConfig"]["defaults"].get("unit", "none"), panel["type"]
    if not any(not math.isnan(value) for frame in frames for value in frame.values):
        gpu = any("masenet_gpu_" in target["expr"] for target in panel["targets"])
        note = textwrap.fill(GPU_NOTE if gpu else "No data", width=int(width * 9))
        centre = ((left + width / 2) / fig_w, (bottom + height / 2 - 0.1) / fig_h)
        fig.text(*centre, note, color=DIM, fontsize=10, ha="center", va="center", multialignment="center")
        return "gpu" if gpu else "no data"
    columns = max(1, int(width / 2.2))  # legend entries side by side under a time series
    pad_bottom = 0.45 + 0.17 * math.ceil(len(frames) / columns) if kind == "timeseries" else 0.15
    pad_left = 0.75 if kind in ("timeseries", "bargauge") else 0.1
    axes_box = (left + pad_left, bottom + pad_bottom, width - pad_left - 0.15, height - pad_bottom - 0.45)
    ax = fig.add_axes((axes_box[0] / fig_w, axes_box[1] / fig_h, axes_box[2] / fig_w, axes_box[3] / fig_h))
    ax.set_facecolor(PANEL)
    ax.tick_params(colors=DIM, labelsize=8, length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if kind == "timeseries":
        stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
        colors = override_colors(panel)
        draw_timeseries(ax, frames, unit, window, ticks=int(width / 1.2), stacked=stacked, colors=colors)
        anchor = (axes_box[0] / fig_w, (axes_box[1] - 0.3) / fig_h)
        ax.legend(
            loc="upper left",
            bbox_to_anchor=anchor,
            bbox_transform=fig.transFigure,
            ncol=columns,
            fontsize=7.5,
            frameon=False,
            labelcolor=TEXT,
            handlelength=1.2,
            borderaxespad=0,
        )
    elif kind == "stat":
        values = frames[0].values
        value = last_not_null(values)
        color = threshold_color(panel, value)
        ax.fill_between(range(len(values)), np.nan_to_num(values), color=color, alpha=0.18)
        ax.set_ylim(0, 2.2 * max(1e-12, np.nanmax(values)))
        ax.set_xticks([]), ax.set_yticks([])
        text = format_value(value, unit)
        ax.text(
            0.5, 0.55, text, color=color, fontsize=26, weight="bold", ha="center", va="center", transform=ax.transAxes
        )
    elif kind == "bargauge":
        labels, values = [frame.legend for frame in frames], [last_not_null(frame.values) for frame in frames]
        vertical = panel["options"].get("orientation") == "vertical"
        bars = (ax.bar if vertical else ax.barh)(labels, values, color=COLORS[0], alpha=0.85)
        ax.bar_label(bars, labels=[format_value(value, unit) for value in values], color=TEXT, fontsize=8, padding=2)
        (ax.yaxis if vertical else ax.xaxis).set_major_formatter(value_formatter(unit))
        ax.grid(color=EDGE, linewidth=0.6, axis="y" if vertical else "x")
        ax.set_axisbelow(True)
    elif kind == "table":
        draw_table(ax, panel, frames, unit, axes_box[2])
    return "data"


def value_formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: format_value(value, unit))


def override_colors(panel: dict[str, Any]) -> dict[str, str]:
    """The fixed colours of the panel's "byName" overrides, by series name (the legend)."""
    colors = {}
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"]["id"] != "byName":
            continue
        for prop in override["properties"]:
            if prop["id"] == "color" and prop["value"].get("mode") == "fixed":
                fixed = prop["value"]["fixedColor"]
                colors[override["matcher"]["options"]] = THRESHOLD_COLORS.get(fixed, fixed)
    return colors


def stack_frames(frames: list[Frame]) -> list[Frame]:
    """Grafana's "normal" stacking: each series on top of the ones before it, over the union of their times (a
    missing or NaN point adds 0); returns the frames with their stacked values."""
    times = sorted({t for frame in frames for t in frame.times})
    below = dict.fromkeys(times, 0.0)
    stacked = []
    for frame in frames:
        own = {t: value for t, value in zip(frame.times, frame.values, strict=True) if not math.isnan(value)}
        below = {t: below[t] + own.get(t, 0.0) for t in times}
        stacked.append(Frame(frame.ref_id, frame.legend, frame.labels, times, [below[t] for t in times]))
    return stacked


def draw_timeseries(
    ax: Any,
    frames: list[Frame],
    unit: str,
    window: tuple[float, float],
    ticks: int,
    stacked: bool = False,
    colors: dict[str, str] | None = None,
) -> None:
    """Lines over the whole time range (as Grafana draws it), y from 0 unless a value is negative; stacked series
    filled down to the one below."""
    import matplotlib.dates as mdates

    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, timezone.utc)

    if stacked:
        frames = stack_frames(frames)
    for index, frame in enumerate(frames):
        color = (colors or {}).get(frame.legend, COLORS[index % len(COLORS)])
        times = [when(t) for t in frame.times]
        ax.plot(times, frame.values, color=color, linewidth=1.4, label=frame.legend)
        if stacked:
            below = frames[index - 1].values if index else [0.0] * len(times)
            ax.fill_between(times, below, frame.values, color=color, alpha=0.4, linewidth=0)
    ax.grid(color=EDGE, linewidth=0.6)
    ax.set_xlim(when(window[0]), when(window[1]))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
    ax.xaxis.set_major_locator(time_locator(window[1] - window[0], ticks))
    ax.yaxis.set_major_formatter(value_formatter(unit))
    highest = max((value for frame in frames for value in frame.values if not math.isnan(value)), default=0.0)
    lowest = min((value for frame in frames for value in frame.values if not math.isnan(value)), default=0.0)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]) if lowest < 0 else 0.0, ax.get_ylim()[1] if highest > 0 else 1.0)


def draw_table(ax: Any, panel: dict[str, Any], frames: list[Frame], unit: str, width_in: float) -> None:
    """Grafana's "merge" (rows joined on the labels all frames share) then "organize" (renamed columns)."""
    shared = set.intersection(*(set(frame.labels) for frame in frames)) - {"__name__"}
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    for frame in frames:
        row = rows.setdefault(tuple(frame.labels[name] for name in sorted(shared)), {})
        row.update({name: value for name, value in frame.labels.items() if name != "__name__"})
        row[f"Value #{frame.ref_id}"] = format_value(last_not_null(frame.values), unit)
    organize = next((t["options"] for t in panel.get("transformations", []) if t["id"] == "organize"), {})
    columns = list(dict.fromkeys(name for row in rows.values() for name in row))
    header = [organize.get("renameByName", {}).get(name, name) for name in columns]
    lines = [header, *([row.get(name, "") for name in columns] for row in rows.values())]
    lines = [[text if len(text) <= 16 else text[:15] + "…" for text in line] for line in lines]  # cut as Grafana would
    widths = [max(len(text) for text in column) + 1 for column in zip(*lines, strict=True)]
    size = min(8.0, width_in * 72 / (0.6 * sum(widths)))  # monospace: a character is about 0.6 em wide
    ax.set_xticks([]), ax.set_yticks([])
    for number, line in enumerate(lines):
        x = 0.0
        for text, chars in zip(line, widths, strict=True):
            style = {"color": DIM, "weight": "bold"} if number == 0 else {"color": TEXT}
            y = 0.95 - 0.11 * number
            ax.text(x, y, text, fontsize=size, family="monospace", va="top", transform=ax.transAxes, **style)
            x += chars / sum(widths)


def render(
    dashboard: dict[str, Any], query: Query, start: float, end: float, output: Path, run: str
) -> list[tuple[str, str]]:
    """Every panel drawn at its gridPos into `output`; returns (title, "data" | "no data" | "gpu") per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    grid_h = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig_h = TOP_IN + grid_h * GRID_UNIT_IN + BOTTOM_IN
    fig = plt.figure(figsize=(WIDTH_IN, fig_h), facecolor=PAGE)
    span = " to ".join(datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for t in (start, end))
    fig.text(0.1 / WIDTH_IN, 1 - 0.35 / fig_h, dashboard["title"], color=TEXT, fontsize=15, fontweight="bold")
    settings = f"{span} UTC   route: All   step {STEP_S} s   rate interval 30 s"
    fig.text(1 - 0.1 / WIDTH_IN, 1 - 0.35 / fig_h, settings, color=DIM, fontsize=9, ha="right")
    drawn: list[tuple[str, str]] = []
    unit_w = WIDTH_IN / 24
    for panel in panels:
        grid = panel["gridPos"]
        top = fig_h - TOP_IN - grid["y"] * GRID_UNIT_IN
        if panel["type"] == "row":
            fig.text(0.1 / WIDTH_IN, (top - 0.2) / fig_h, panel["title"], color=TEXT, fontsize=12, fontweight="bold")
            continue
        box = (
            grid["x"] * unit_w + 0.05,
            top - grid["h"] * GRID_UNIT_IN + 0.05,
            grid["w"] * unit_w - 0.1,
            grid["h"] * GRID_UNIT_IN - 0.1,
        )
        frames = panel_frames(panel, query, start, end)
        drawn.append((panel["title"], draw_panel(fig, box, panel, frames, (start, end))))
    day = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d")
    footer = f"Rendered from the dashboard's PromQL through a real Prometheus ({run}, {day}); not a Grafana screenshot"
    fig.text(0.5, 0.18 / fig_h, footer, color=DIM, fontsize=10, ha="center", style="italic")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100, facecolor=PAGE)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", help="URL of a running Prometheus (default: start the stack here)")
    parser.add_argument("--seconds", type=float, default=150, help="traffic duration / time range drawn")
    parser.add_argument("--weights", type=Path, help="checkpoint for the worker (default: shipped, else random)")
    parser.add_argument("--output", type=Path, default=ROOT / "deploy" / "dashboard.png")
    args = parser.parse_args(argv)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    if args.prometheus:
        end = time.time()
        query = prometheus_query(args.prometheus)
        drawn = render(dashboard, query, end - args.seconds, end, args.output, f"Prometheus at {args.prometheus}")
    else:
        with tempfile.TemporaryDirectory(prefix="masenet-dashboard-") as tmp:
            work = Path(tmp)
            weights = args.weights or (SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None)
            weights = weights or random_checkpoint(work / "random-init-n.safetensors", imgsz=160)
            prefix = f"masenet-dashboard-{uuid.uuid4().hex[:8]}"
            with live_stack(work, REDIS_URL, prefix, weights, STACK_SETTINGS) as stack:
                start = time.time()
                statuses = send_traffic(stack.api_url, args.seconds)
                time.sleep(10)  # scrapes after the last answer
                end, query = time.time(), prometheus_query(stack.prometheus_url)
                drawn = render(dashboard, query, start, end, args.output, "CPU-only run")
        print("traffic:", ", ".join(f"{name}: {count}" for name, count in sorted(statuses.items())))
    print("panels:", ", ".join(f"{title}: {state}" for title, state in drawn))
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
