"""The dashboard renderer draws every panel of the dashboard, from a canned Prometheus answer (no stack, no Redis).

The canned query answers every expression with one series carrying all the labels the legends use, except the
GPU queries, which answer nothing, as on a CPU-only worker.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image

from deploy.render_dashboard import (
    DASHBOARD,
    GPU_NOTE,
    Frame,
    format_value,
    legend,
    override_colors,
    render,
    stack_frames,
    substitute,
)
from tests.deploy.deploy_files import dashboard_panels

LABELS = {
    "route": "/detect",
    "status": "200",
    "instance": "127.0.0.1:9101",
    "stage": "inference",
    "queue": "images",
    "reason": "media",
    "outcome": "processed",
    "name": "masenet",
    "scale": "n",
    "device": "cpu",
    "weights_sha256": "ab" * 32,
}


class CannedPrometheus:
    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    def __call__(self, expr: str, start: float | None, end: float) -> list[dict[str, Any]]:
        self.asked.append((expr, start is None))
        if "masenet_gpu_" in expr:
            return []
        if start is None:  # instant: a cumulative histogram when the query keeps `le`, else one value
            les = ["1", "2", "4", "+Inf"] if "by (le)" in expr else [None]
            return [
                {"metric": {**LABELS, **({"le": le} if le else {})}, "value": [end, str(3 * (index + 1))]}
                for index, le in enumerate(les)
            ]
        times = range(int(start), int(end) + 1, 5)
        return [{"metric": LABELS, "values": [[t, "NaN" if t == start else str(t % 7)] for t in times]}]


def test_every_panel_is_drawn_with_its_queries(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    prometheus = CannedPrometheus()
    output = tmp_path / "dashboard.png"
    drawn = render(dashboard, prometheus, 1_700_000_000.0, 1_700_000_150.0, output, "test run")

    panels = dashboard_panels()
    assert [title for title, _ in drawn] == [panel["title"] for panel in panels]  # every panel, in order
    gpu = {panel["title"] for panel in panels if "masenet_gpu_" in json.dumps(panel["targets"])}
    assert gpu == {"GPU utilisation", "GPU memory"}
    assert {title: state for title, state in drawn if state != "data"} == dict.fromkeys(gpu, "gpu")
    # Each target asked once, with no Grafana variable left, as an instant query exactly when the panel says so.
    targets = [target for panel in panels for target in panel["targets"]]
    assert [instant for _, instant in prometheus.asked] == [bool(target.get("instant")) for target in targets]
    assert not [expr for expr, _ in prometheus.asked if "$" in expr]
    assert "[150s]" in next(expr for expr, _ in prometheus.asked if "increase(masenet_video_jobs_total" in expr)
    with Image.open(output) as image:
        assert image.width == 1800 and image.height > image.width


def test_helpers() -> None:
    assert legend("{{route}} {{status}}", LABELS) == "/detect 200"
    assert legend("", {"__name__": "x", "queue": "video"}) == '{queue="video"}'
    assert substitute('rate(x{route=~"$route"}[$__rate_interval])', 60) == 'rate(x{route=~".*"}[30s])'
    assert format_value(0.0123, "s") == "12.3 ms"
    assert format_value(0.25, "percentunit") == "25%"
    assert format_value(3 * 1024**3, "bytes") == "3 GiB"
    assert format_value(2500, "Bps") == "2.5 kB/s"
    assert format_value(math.nan, "short") == "-"
    assert "CUDA" in GPU_NOTE


def test_stacked_series_add_up_over_the_union_of_their_times() -> None:
    running = Frame("A", "running", {}, [0.0, 5.0, 10.0], [2.0, 2.0, 1.0])
    failed = Frame("A", "failed", {}, [5.0, 10.0, 15.0], [1.0, math.nan, 3.0])
    stacked = stack_frames([running, failed])
    assert [frame.legend for frame in stacked] == ["running", "failed"]
    assert stacked[0].times == stacked[1].times == [0.0, 5.0, 10.0, 15.0]
    assert stacked[0].values == [2.0, 2.0, 1.0, 0.0]
    assert stacked[1].values == [2.0, 3.0, 1.0, 3.0]


def test_series_colours_come_from_the_overrides_by_name() -> None:
    (streams,) = [panel for panel in dashboard_panels() if panel["title"] == "Streams by status"]
    colors = override_colors(streams)
    assert set(colors) == {"starting", "running", "reconnecting", "stopped", "failed"}
    assert colors["failed"] == "#F2495C" and colors["running"] == "#73BF69"
    assert override_colors({"fieldConfig": {"defaults": {}, "overrides": []}}) == {}
