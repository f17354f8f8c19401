"""A frame's answer is its own: the same alone as beside frames of other sizes and views, on every runtime.

A real `masenet worker` on the shipped weights (at their pixel scale) answers 320x256 frames sent one at a time,
then the same frames queued together with 640x512 frames and flip-averaged frames, so its loop forms passes
from what waits together. Every answer must match: same detections, scores within 1e-4, boxes within 0.05 px.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from jobs.contracts import DetectParams, ReplyMessage
from model.checkpoint import default_weights_path, load_checkpoint
from service.queueing import ImageUpload, JobBroker
from tests.service.helpers import REDIS_URL, WorkerProcess, make_settings, new_prefix
from tools.redis_keys import forget_prefix
from tools.traffic import encode_png, synthetic_frames

pytestmark = pytest.mark.slow

SMALL, BIG = (320, 256), (640, 512)


def uploads(size: tuple[int, int], count: int, seed: int, tag: str) -> list[ImageUpload]:
    width, height = size
    frames = synthetic_frames(width, height, count=count, seed=seed)
    return [ImageUpload(f"{tag}{index}.png", encode_png(frame), width, height) for index, frame in enumerate(frames)]


def answers(broker: JobBroker, connection: redis.Redis, images: list[ImageUpload], params: DetectParams) -> list:
    submission = broker.enqueue(images, params)
    replies: dict[int, ReplyMessage] = {}
    while len(replies) < len(images):
        popped = connection.blpop([submission.reply_key], timeout=120)
        assert popped is not None, "no reply within 120 s"
        reply = ReplyMessage.model_validate_json(popped[1])
        assert reply.failure is None, reply.failure
        replies[reply.index] = reply
    return [replies[index].result for index in range(len(images))]


def assert_same(alone, together) -> None:
    assert len(alone.detections) == len(together.detections), (alone.detections, together.detections)
    for one, other in zip(alone.detections, together.detections, strict=True):
        assert one.class_id == other.class_id
        assert abs(one.score - other.score) <= 1e-4
        assert max(abs(a - b) for a, b in zip(one.box, other.box, strict=True)) <= 0.05


@pytest.mark.parametrize("runtime", ["torch", "openvino", "onnxruntime"])
def test_a_frame_answers_the_same_alone_and_beside_other_sizes_and_views(runtime: str, tmp_path: Path) -> None:
    weights = default_weights_path()
    pixel_scale = load_checkpoint(weights)[1].pixel_scale
    prefix = new_prefix()
    connection = redis.Redis.from_url(REDIS_URL)
    options = {"MASENET_RUNTIME": runtime, "MASENET_MAX_DELAY_MS": "200", "MASENET_PASS_TARGET_MS": "10000"}
    worker = WorkerProcess(prefix, weights, tmp_path / "worker.log", **options)
    worker.start()
    try:
        worker.wait_for(connection, "ready")
        broker = JobBroker(make_settings(prefix, imgsz=None))
        plain = DetectParams(conf=0.05, pixel_scale=pixel_scale)
        flips = DetectParams(conf=0.05, pixel_scale=pixel_scale, tta="flips")
        small = uploads(SMALL, 4, seed=1, tag="small")
        alone = [answers(broker, connection, [image], plain)[0] for image in small]
        alone_flipped = answers(broker, connection, small[:1], flips)[0]
        assert sum(len(result.detections) for result in alone) >= 2, "the frames should hold detections"

        big = uploads(BIG, 2, seed=2, tag="big")
        together = answers(broker, connection, big[:1] + small + big[1:], plain)
        flipped = answers(broker, connection, small[:1] + big[:1] + small[1:2], flips)
        assert {result.batch_size for result in together} != {1}, "frames queued together should share passes"
        for expected, got in zip(alone, together[1:-1], strict=True):
            assert_same(expected, got)
        assert_same(alone_flipped, flipped[0])
        assert_same(alone[1], answers(broker, connection, small[1:2], plain)[0])
    finally:
        worker.stop()
        connection.close()
        forget_prefix(REDIS_URL, prefix)
