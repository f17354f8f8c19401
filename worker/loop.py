"""The worker's scheduling loop: one thread that owns what runs on the device next, and two lanes that run it.

Each step asks every source what waits (image jobs, the held streams' newest frames, the running video
chunk's frames) and, when the main lane is free, lets `worker.schedule.next_pass` choose one pass from one
bucket. While the main lane runs an expensive pass, `worker.schedule.express_pass` may give the express lane
cheap image frames to run beside it. The loop takes the chosen items from their source at once (so no later step
offers them again) and a lane thread runs them; finished passes are recorded by the loop thread. Sources and
lanes announce new work and free lanes through `wake`, so an idle loop sleeps instead of polling. The policy is
a pure function of the waiting work and the clock, which is injectable here.

    source      work_class, busy, waiting(now) -> [Waiting], take(items) -> taken (loop thread), run(taken)
                (a lane thread)   (ImageSource, StreamHub, VideoSource)
    metrics     per class: the wait from arrival to the start of its pass, and the passes run
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from worker.metrics import WorkerMetrics
from worker.schedule import Pass, Policy, SchedulerState, Waiting, WorkClass, express_pass, next_pass

logger = logging.getLogger(__name__)

LANES = ("main", "express")


class Source(Protocol):
    work_class: WorkClass

    @property
    def busy(self) -> bool: ...  # holds work it has not finished

    def waiting(self, now: float) -> list[Waiting]: ...

    def take(self, items: Sequence[Waiting]) -> Any: ...

    def run(self, taken: Any) -> Any: ...


@dataclass
class _Running:
    chosen: Pass
    started: float  # perf_counter
    seconds: float | None = None  # set by the lane when the pass ended
    ended_at: float = 0.0  # on the loop's clock
    beside: bool = False  # another pass ran beside it at some point


class SchedulingLoop:
    """Dispatches one pass per free lane and `step`, as the policy decides."""

    def __init__(
        self,
        sources: Sequence[Source],
        policy: Policy,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        wake: threading.Event | None = None,
    ) -> None:
        self.sources = {source.work_class: source for source in sources}
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self.wake = wake or threading.Event()
        self.state = SchedulerState()
        self._lanes = {lane: ThreadPoolExecutor(1, thread_name_prefix=f"{lane}-lane") for lane in LANES}
        self._running: dict[str, _Running | None] = dict.fromkeys(LANES)

    @property
    def busy(self) -> bool:
        return any(self._running.values()) or any(source.busy for source in self.sources.values())

    def on_lanes(self, function: Callable[[], Any]) -> None:
        """Run `function` once in each lane's thread (a warm-up of what a lane keeps per thread) and wait."""
        for future in [lane.submit(function) for lane in self._lanes.values()]:
            future.result()

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.shutdown(wait=True)
        self._record_ended()

    def step(self, idle_s: float) -> Pass | None:
        """Dispatch the next pass to a free lane, or wait up to `idle_s` (less when the policy says when) for work
        or a lane to come free; the pass dispatched."""
        self.wake.clear()  # before looking: work announced from now on ends the wait below
        self._record_ended()
        now = self.clock()
        main, express = self._running["main"], self._running["express"]
        if main is not None and express is not None:
            self.wake.wait(idle_s)
            return None
        waiting = [item for source in self.sources.values() for item in self._waiting(source, now)]
        if main is None:
            decision = next_pass(waiting, now, self.state, self.policy)
            lane = "main"
        else:
            decision = express_pass(waiting, now, self.state, self.policy, main.chosen) if waiting else None
            lane = "express"
        if not isinstance(decision, Pass):
            timeout = idle_s if decision is None else min(idle_s, max(0.0, decision.until - now))
            if timeout > 0:
                self.wake.wait(timeout)
            return None
        self._dispatch(lane, decision, now)
        return decision

    def _waiting(self, source: Source, now: float) -> list[Waiting]:
        try:
            return source.waiting(now)
        except Exception:  # Redis gone longer than its retries, say: the other sources still run
            logger.exception("the %s source failed to say what waits", source.work_class.value)
            return []

    def _dispatch(self, lane: str, chosen: Pass, now: float) -> None:
        work_class = chosen.work_class
        if self.metrics is not None:
            self.metrics.passes.labels(work_class.value).inc()
            for item in chosen.items:
                self.metrics.class_wait.labels(work_class.value).observe(max(0.0, now - item.since))
        source = self.sources[work_class]
        taken = source.take(chosen.items)
        running = _Running(chosen, time.perf_counter())
        others = [other for other in self._running.values() if other is not None]
        running.beside = bool(others)
        for other in others:
            other.beside = True
        self._running[lane] = running
        self._lanes[lane].submit(self._run, source, taken, running)

    def _run(self, source: Source, taken: Any, running: _Running) -> None:
        """A lane's thread: run the pass, note its time, wake the loop."""
        try:
            source.run(taken)
        except Exception:  # a source answers its own failures; anything left must not end the worker
            logger.exception("a %s pass failed", running.chosen.work_class.value)
        running.ended_at = self.clock()
        running.seconds = time.perf_counter() - running.started
        self.wake.set()

    def _record_ended(self) -> None:
        for lane, running in self._running.items():
            if running is None or running.seconds is None:
                continue
            self._running[lane] = None
            chosen = running.chosen
            cost = sum(item.cost for item in chosen.items)
            self.state.observe(chosen.work_class, cost, running.seconds, running.ended_at, alone=not running.beside)
            logger.debug(
                "%s lane: %s pass of %d in %.1f ms",
                lane,
                chosen.work_class.value,
                len(chosen.items),
                running.seconds * 1e3,
            )
