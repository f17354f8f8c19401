"""jobs.video: job ids, chunk plans and the typed video payloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.store import JobStorage
from jobs.video import (
    ChunkPayload,
    FinalizePayload,
    InvalidJobIdError,
    VideoParams,
    new_job_id,
    parse_video_payload,
    plan_chunks,
    processed_frame_count,
    validate_job_id,
)


def test_job_ids_are_strict() -> None:
    job_id = new_job_id()
    assert validate_job_id(job_id) == job_id and len(job_id) == 32
    for hostile in ["../x", "..", "", job_id.upper(), job_id + "0", job_id[:-1] + "/", "a" * 10_000, f"{job_id}\n"]:
        with pytest.raises(InvalidJobIdError):
            validate_job_id(hostile)
    with pytest.raises(InvalidJobIdError):
        JobStorage("/tmp").job_dir("../../etc")


def test_chunk_plan_examples() -> None:
    assert plan_chunks(100, 1, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert plan_chunks(100, 3, 10) == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert plan_chunks(0, 1, 8) == []
    with pytest.raises(ValueError):
        plan_chunks(10, 0, 8)


@given(st.integers(0, 5000), st.integers(1, 7), st.integers(1, 200))
def test_chunk_plan_covers_every_processed_frame_once(frames_total: int, stride: int, chunk_frames: int) -> None:
    chunks = plan_chunks(frames_total, stride, chunk_frames)
    processed = [index for start, stop in chunks for index in range(start, stop, stride)]
    assert processed == list(range(0, frames_total, stride))
    assert len(processed) == processed_frame_count(frames_total, stride)
    assert all(len(range(start, stop, stride)) <= chunk_frames for start, stop in chunks)
    assert all(start % stride == 0 for start, _ in chunks)


def test_video_payloads_parse_by_kind_and_refuse_anything_else() -> None:
    job_id = new_job_id()
    chunk = ChunkPayload(prefix="p", job_id=job_id, index=2, start=64, stop=96)
    assert parse_video_payload(chunk.model_dump(mode="json")) == chunk
    finalize = FinalizePayload(prefix="p", job_id=job_id)
    assert parse_video_payload(finalize.model_dump(mode="json")) == finalize
    for other in [None, {}, {"kind": "image"}, {"kind": "video_chunk", "prefix": "p"}]:
        assert parse_video_payload(other) is None


def test_video_params_share_the_detection_bounds() -> None:
    assert VideoParams().model_dump() == {
        "conf": 0.25,
        "iou": 0.45,
        "max_det": 300,
        "imgsz": None,
        "pixel_scale": None,
        "tta": None,
        "frame_stride": 1,
        "track": True,
        "annotate": False,
    }
    for bad in [{"conf": 1.5}, {"imgsz": 33}, {"frame_stride": 0}, {"tta": "spin"}, {"pixel_scale": 0}]:
        with pytest.raises(ValueError):
            VideoParams(**bad)
