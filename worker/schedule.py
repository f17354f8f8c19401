"""What a worker runs next: a pure function of the waiting work, the clock and what ran before.

Work waits in three classes: interactive image jobs, the newest frames of the live streams a worker holds, and
the frames of the video chunk it runs. Every piece of work names its *bucket*: the padded network-input shape,
the resize rule, the test-time views and Grad-CAM. A pass is formed from ONE bucket, so no frame is ever
padded to another frame's shape and an answer never depends on what else was waiting.

    class     video first while it has had less than `video_share` of the recent device time (it is never
              starved); then a stream frame older than `stream_patience_s`; then images; then streams; then
              video, unless an image pass ended less than `linger_s` ago (a client sending frame after frame
              is answered before video takes the device back)
    bucket    images: the highest response ratio, (wait + pass time) / pass time, so a bucket of cheap frames
              goes before an expensive one and an expensive one still ages to the front; streams and video:
              the oldest first
    pass      the bucket's items oldest first, while the pass holds at most `max_images` images (views
              counted), at most `max_pass_cost` input pixels and, once the time per pixel is known, takes at
              most `pass_target_s` (its first item always goes); an image pass that is not full waits up to
              `max_delay_s` after its oldest item for more

    express   while a pass estimated to take longer than `express_after_s` runs, `express_pass` picks cheap
              image frames (a single frame estimated at most `pass_target_s`, no Grad-CAM) to run beside it,
              so a small frame never waits for a big one to finish

Device time per class decays with a time constant of SHARE_WINDOW_S, so the share follows the last seconds of
work. `SchedulerState.observe` records each pass; the time per pixel is learnt from passes that ran alone.
Nothing here touches Redis, threads or torch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SHARE_WINDOW_S = 5.0


class WorkClass(str, Enum):
    IMAGE = "image"
    STREAM = "stream"
    VIDEO = "video"


@dataclass(frozen=True)
class Waiting:
    """One frame ready for a pass."""

    work_class: WorkClass
    bucket: Hashable  # what may share a pass: padded input shape, resize rule, views, Grad-CAM
    since: float  # when it began to wait (enqueued, captured, decoded), on the scheduler's clock
    images: int = 1  # images it adds to a pass: its test-time views
    cost: int = 1  # network-input pixels, views and Grad-CAM counted (jobs.contracts.frame_cost)
    ref: Any = field(default=None, compare=False)  # the source's own handle
    beside: bool = True  # may run in the express lane, beside another pass (not Grad-CAM: it needs autograd)


@dataclass(frozen=True)
class Policy:
    max_images: int = 8
    max_pass_cost: int = 48_000_000
    pass_target_s: float = 0.25
    max_delay_s: float = 0.005
    video_share: float = 0.5  # the recent device time a waiting video is guaranteed
    stream_patience_s: float = 0.25  # a live frame that waited this long goes before images
    linger_s: float = 0.1
    express_after_s: float | None = 0.5  # a pass estimated longer lets cheap images run beside it (None: never)


@dataclass(frozen=True)
class Pass:
    work_class: WorkClass
    items: tuple[Waiting, ...]


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass
class SchedulerState:
    """What the policy remembers: recent device seconds per class, seconds per input pixel, the last image pass."""

    busy: dict[WorkClass, float] = field(default_factory=lambda: dict.fromkeys(WorkClass, 0.0))
    updated: float = 0.0
    seconds_per_cost: float | None = None
    last_image_end: float = -math.inf

    def observe(self, work_class: WorkClass, cost: int, seconds: float, now: float, alone: bool = True) -> None:
        """Record a pass of `cost` input pixels that took `seconds` and ended at `now` (`alone`: no other pass ran
        beside it, so its time measures the device)."""
        self._decay(now)
        self.busy[work_class] += seconds
        if alone and cost > 0 and seconds > 0:
            rate = seconds / cost
            previous = self.seconds_per_cost
            self.seconds_per_cost = rate if previous is None else 0.7 * previous + 0.3 * rate
        if work_class is WorkClass.IMAGE:
            self.last_image_end = now

    def share(self, work_class: WorkClass, now: float) -> float:
        self._decay(now)
        total = sum(self.busy.values())
        return self.busy[work_class] / total if total > 0 else 0.0

    def estimate_s(self, cost: int) -> float | None:
        return None if self.seconds_per_cost is None else cost * self.seconds_per_cost

    def _decay(self, now: float) -> None:
        if now > self.updated:
            factor = math.exp(-(now - self.updated) / SHARE_WINDOW_S)
            self.busy = {work_class: seconds * factor for work_class, seconds in self.busy.items()}
            self.updated = now


def next_pass(waiting: Sequence[Waiting], now: float, state: SchedulerState, policy: Policy) -> Pass | Wait | None:
    """The next pass to run, a time to wait until, or None when nothing waits."""
    by_class: dict[WorkClass, list[Waiting]] = {work_class: [] for work_class in WorkClass}
    for item in waiting:
        by_class[item.work_class].append(item)
    images, streams, videos = by_class[WorkClass.IMAGE], by_class[WorkClass.STREAM], by_class[WorkClass.VIDEO]
    if videos and state.share(WorkClass.VIDEO, now) < policy.video_share:
        return _fill(WorkClass.VIDEO, _oldest_bucket(videos), state, policy)
    if streams and now - min(item.since for item in streams) >= policy.stream_patience_s:
        return _fill(WorkClass.STREAM, _oldest_bucket(streams), state, policy)
    if images:
        chosen = _fill(WorkClass.IMAGE, _image_bucket(images, now, state), state, policy)
        oldest = chosen.items[0].since
        full = sum(item.images for item in chosen.items) >= policy.max_images
        if not full and now < oldest + policy.max_delay_s:
            return Wait(oldest + policy.max_delay_s)
        return chosen
    if streams:
        return _fill(WorkClass.STREAM, _oldest_bucket(streams), state, policy)
    if videos:
        lingering_until = state.last_image_end + policy.linger_s
        if now < lingering_until:
            return Wait(lingering_until)
        return _fill(WorkClass.VIDEO, _oldest_bucket(videos), state, policy)
    return None


def express_pass(
    waiting: Sequence[Waiting], now: float, state: SchedulerState, policy: Policy, running: Pass
) -> Pass | None:
    """A pass of cheap image frames to run beside `running`, an expensive pass, or None.

    Only when `running` is estimated to take longer than `express_after_s`, and only image frames that may run
    beside another pass, in buckets whose single frame is estimated at most `pass_target_s`: a cheap request then
    does not wait for an expensive one to finish.
    """
    if policy.express_after_s is None or state.seconds_per_cost is None:
        return None
    if state.estimate_s(sum(item.cost for item in running.items)) <= policy.express_after_s:
        return None
    cheap = [
        item
        for item in waiting
        if item.work_class is WorkClass.IMAGE and item.beside and state.estimate_s(item.cost) <= policy.pass_target_s
    ]
    if not cheap:
        return None
    return _fill(WorkClass.IMAGE, _image_bucket(cheap, now, state), state, policy)


def _buckets(items: Sequence[Waiting]) -> dict[Hashable, list[Waiting]]:
    groups: dict[Hashable, list[Waiting]] = {}
    for item in sorted(items, key=lambda item: item.since):
        groups.setdefault(item.bucket, []).append(item)
    return groups


def _oldest_bucket(items: Sequence[Waiting]) -> list[Waiting]:
    return min(_buckets(items).values(), key=lambda group: group[0].since)


def _image_bucket(items: Sequence[Waiting], now: float, state: SchedulerState) -> list[Waiting]:
    """The bucket with the highest response ratio; by age alone until the time per pixel is known."""

    def ratio(group: list[Waiting]) -> float:
        service = state.estimate_s(group[0].cost)
        if not service:
            return now - group[0].since
        return (now - group[0].since + service) / service

    return max(_buckets(items).values(), key=lambda group: (ratio(group), -group[0].since))


def _fill(work_class: WorkClass, bucket: list[Waiting], state: SchedulerState, policy: Policy) -> Pass:
    """The bucket's items, oldest first, up to the pass limits (the first item always)."""
    chosen = [bucket[0]]
    images, cost = bucket[0].images, bucket[0].cost
    known = state.seconds_per_cost is not None  # until the first pass is measured, a pass holds one frame
    for item in bucket[1:]:
        images, cost = images + item.images, cost + item.cost
        estimate = state.estimate_s(cost)
        if not known or images > policy.max_images or cost > policy.max_pass_cost or estimate > policy.pass_target_s:
            break
        chosen.append(item)
    return Pass(work_class, tuple(chosen))
