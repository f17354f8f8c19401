"""The worker's scheduling loop: one thread that owns what runs on the device next.

Each step asks every source what waits (image jobs, the held streams' newest frames, the running video
chunk's frames), lets `worker.schedule.next_pass` choose one pass from one bucket, runs it through that source
and records how long it took. Sources announce new work through `wake`, so an idle loop sleeps instead of
polling. The policy is a pure function of the waiting work and the clock, which is injectable here.

    source      work_class, busy, waiting(now) -> [Waiting], run(items)   (ImageSource, StreamHub, VideoSource)
    metrics     per class: the wait from arrival to the start of its pass, and the passes run
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from worker.metrics import WorkerMetrics
from worker.schedule import Pass, Policy, SchedulerState, Waiting, WorkClass, next_pass

logger = logging.getLogger(__name__)


class Source(Protocol):
    work_class: WorkClass

    @property
    def busy(self) -> bool: ...  # holds work it has not finished

    def waiting(self, now: float) -> list[Waiting]: ...

    def run(self, items: Sequence[Waiting]) -> Any: ...


class SchedulingLoop:
    """Runs one pass per `step` from the sources, as `next_pass` decides."""

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

    @property
    def busy(self) -> bool:
        return any(source.busy for source in self.sources.values())

    def step(self, idle_s: float) -> Pass | None:
        """Run the next pass, or wait up to `idle_s` (less when the policy says when) for work; the pass run."""
        self.wake.clear()  # before looking: work announced from now on ends the wait below
        now = self.clock()
        waiting = [item for source in self.sources.values() for item in self._waiting(source, now)]
        decision = next_pass(waiting, now, self.state, self.policy)
        if not isinstance(decision, Pass):
            timeout = idle_s if decision is None else min(idle_s, max(0.0, decision.until - now))
            if timeout > 0:
                self.wake.wait(timeout)
            return None
        self._run(decision, now)
        return decision

    def _waiting(self, source: Source, now: float) -> list[Waiting]:
        try:
            return source.waiting(now)
        except Exception:  # Redis gone longer than its retries, say: the other sources still run
            logger.exception("the %s source failed to say what waits", source.work_class.value)
            return []

    def _run(self, chosen: Pass, now: float) -> None:
        work_class = chosen.work_class
        if self.metrics is not None:
            self.metrics.passes.labels(work_class.value).inc()
            for item in chosen.items:
                self.metrics.class_wait.labels(work_class.value).observe(max(0.0, now - item.since))
        started = time.perf_counter()
        try:
            self.sources[work_class].run(chosen.items)
        except Exception:  # a source answers its own failures; anything left must not end the worker
            logger.exception("a %s pass failed", work_class.value)
        seconds = time.perf_counter() - started
        self.state.observe(work_class, sum(item.cost for item in chosen.items), seconds, self.clock())
        logger.debug("%s pass of %d in %.1f ms", work_class.value, len(chosen.items), seconds * 1e3)
