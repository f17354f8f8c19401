"""What `masenet bench load` reports: the outcome of each request, how failures are labelled, and the tables.

Pure functions of the outcomes (no I/O), unit-tested in tests/tools/test_load_bench.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

IMAGE_KINDS = ("single", "multi", "gradcam")
KINDS = (*IMAGE_KINDS, "video")
STATUS_REASONS = {
    401: "unauthorized",
    404: "not found",
    409: "not ready",
    413: "too large",
    415: "unsupported media",
    422: "invalid input",
    500: "worker failure",
    504: "timeout",
}


@dataclass(frozen=True)
class Outcome:
    kind: str
    seconds: float
    error: str | None = None  # None: ok
    unanswered: bool = False
    detail: str = ""


@dataclass
class Kill:
    at_s: float
    victim: str
    replacement: str
    ready_after_s: float | None = None


def error_label(status_code: int, detail: str) -> str:
    """Status and a short reason, e.g. "503 queue full", "500 worker failure"."""
    if status_code == 503:
        return "503 queue full" if "MASENET_MAX_QUEUE" in detail else "503 unavailable"
    return f"{status_code} {STATUS_REASONS.get(status_code, 'error')}"


def exception_label(exc: BaseException) -> tuple[str, bool]:
    """(label, unanswered) for a request that got no HTTP answer; unanswered once the request was sent."""
    import httpx

    if isinstance(exc, httpx.ReadTimeout):
        return "no answer (client timeout)", True
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "connection dropped", True
    return "connection error", False  # connect, write or pool errors: the request was never accepted


def format_table(outcomes: list[Outcome], seconds: float) -> str:
    """Per kind: requests, ok, errors, unanswered, ok per second and latency percentiles of the ok ones."""
    from tools.bench import percentile

    header = (
        f"{'kind':>8} {'requests':>8} {'ok':>6} {'errors':>6} {'unanswered':>10} {'ok/s':>7} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for kind in (*KINDS, "all"):
        rows = [outcome for outcome in outcomes if kind in ("all", outcome.kind)]
        if not rows and kind != "all":
            continue
        ok_ms = [outcome.seconds * 1000.0 for outcome in rows if outcome.error is None]
        unanswered = sum(outcome.unanswered for outcome in rows)
        errors = len(rows) - len(ok_ms) - unanswered
        rate = len(ok_ms) / seconds if seconds > 0 else 0.0
        cells = " ".join(f"{percentile(ok_ms, q):>8.0f}" if ok_ms else f"{'-':>8}" for q in (0.5, 0.95, 0.99))
        lines.append(f"{kind:>8} {len(rows):>8} {len(ok_ms):>6} {errors:>6} {unanswered:>10} {rate:>7.2f} {cells}")
    return "\n".join(lines)


def format_failures(outcomes: list[Outcome]) -> str:
    """Errors, then accepted-but-unanswered requests, grouped by label with their kinds and one example."""
    lines = []
    for title, unanswered in (("errors by kind", False), ("accepted but unanswered, by kind", True)):
        failed = [outcome for outcome in outcomes if outcome.error is not None and outcome.unanswered == unanswered]
        lines.append(f"{title}:" + ("" if failed else " none"))
        for label, count in Counter(outcome.error for outcome in failed).most_common():
            same = [outcome for outcome in failed if outcome.error == label]
            kinds = ", ".join(f"{kind} {n}" for kind, n in Counter(outcome.kind for outcome in same).most_common())
            example = next((outcome.detail for outcome in same if outcome.detail), "")
            lines.append(f"  {label:<28} {count:>5}  ({kinds})" + (f"  e.g. {example[:140]!r}" if example else ""))
    return "\n".join(lines)


def format_kills(kills: list[Kill]) -> str:
    if not kills:
        return "worker kills: none"
    lines = [f"worker kills: {len(kills)}"]
    for kill in kills:
        ready = f"ready after {kill.ready_after_s:.1f} s" if kill.ready_after_s is not None else "not ready"
        lines.append(f"  {kill.at_s:7.1f} s  SIGKILL {kill.victim}, started {kill.replacement} ({ready})")
    return "\n".join(lines)
