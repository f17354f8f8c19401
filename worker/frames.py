"""Video frames decoded with PyAV: a range of a stored video, every `frame_stride`-th frame, with true positions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def frame_rate(stream) -> float:  # noqa: ANN001 (an av VideoStream)
    return float(stream.average_rate or stream.guessed_rate or stream.base_rate)


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # position in the source video, 0-based
    time_s: float  # presentation time from the start of the stream
    image: np.ndarray  # (H, W, 3) uint8 RGB


def iter_frames(path: str | Path, start: int, stop: int, frame_stride: int = 1) -> Iterator[DecodedFrame]:
    """Frames start, start + stride, ... below stop, decoded after a seek to the keyframe before `start`.

    Frame indices come from presentation timestamps (index = round(time * fps)), which is exact for
    constant-rate video. If the stream has no timestamps or the seek lands past `start`, decoding
    restarts from the beginning and counts frames instead.
    """
    import av

    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = frame_rate(stream)
        time_base = stream.time_base
        origin = stream.start_time or 0
        use_seek = start > 0 and time_base is not None
        if use_seek:
            container.seek(origin + int((start - 0.5) / fps / time_base), stream=stream, backward=True)
        index = -1
        for position, frame in enumerate(container.decode(stream)):
            if frame.pts is None or time_base is None:
                if use_seek and position == 0:
                    break  # no timestamps to place frames after a seek: fall back to counting from 0
                index += 1
                time_s = index / fps
            else:
                time_s = float((frame.pts - origin) * time_base)
                index = round(time_s * fps)
                if use_seek and position == 0 and index > start:
                    break  # the seek overshot the chunk start
            if index < start:
                continue
            if index >= stop:
                return
            if (index - start) % frame_stride == 0:
                yield DecodedFrame(index=index, time_s=round(time_s, 6), image=frame.to_ndarray(format="rgb24"))
        else:
            return
    logger.info("decoding %s from its first frame (frames %d..%d cannot be reached by seeking)", path, start, stop)
    yield from _iter_frames_counting(path, start, stop, frame_stride)


def _iter_frames_counting(path: str | Path, start: int, stop: int, frame_stride: int) -> Iterator[DecodedFrame]:
    import av

    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = frame_rate(stream)
        for index, frame in enumerate(container.decode(stream)):
            if index >= stop:
                return
            if index >= start and (index - start) % frame_stride == 0:
                yield DecodedFrame(index=index, time_s=round(index / fps, 6), image=frame.to_ndarray(format="rgb24"))
