"""worker.video: seeking decode, chunk jobs, finalize (merge, tracks, annotated video), cancel and failures.

The chunk jobs run in-process against the real Redis. A thresholding detector stands in for the network
so that positions can be checked exactly; the trained model is exercised by the service integration tests.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.job import JobStatus as RqJobStatus
from rq.serializers import JSONSerializer

from jobs.contracts import ModelInfo
from service.video import (
    JobStatus,
    JobStorage,
    create_job_state,
    enqueue_video_job,
    finalize_rq_id,
    new_job_id,
    plan_chunks,
    probe_video,
    processed_frame_count,
    read_job_state,
    set_status,
    video_queue_name,
)
from tests.video.synthetic import DEFAULT_TARGETS, BrightSpotDetector, write_test_video
from worker import video as video_jobs
from worker.video import AdaptiveBatcher, VideoContext, finalize, iter_frames, merge_chunks, prefetch, run_chunk


def submit(connection, prefix: str, storage: JobStorage, video: Path, chunk_frames: int = 16, **params) -> tuple:
    """Store the video and write the job state the way the API does; returns (job_id, chunks)."""
    job_id = new_job_id()
    storage.create(job_id)
    storage.input_path(job_id, ".mp4").write_bytes(video.read_bytes())
    info = probe_video(video)
    params = {"conf": 0.25, "iou": 0.45, "imgsz": 160, "frame_stride": 1, "track": True, "annotate": False} | params
    chunks = plan_chunks(info.frames, params["frame_stride"], chunk_frames)
    create_job_state(
        connection,
        prefix,
        job_id,
        info=info,
        params=params,
        chunks=chunks,
        frames_total=processed_frame_count(info.frames, params["frame_stride"]),
        input_name="input.mp4",
        ttl_s=600,
    )
    return job_id, chunks


def context_for(connection, storage: JobStorage, detector=None, name: str = "worker-a", **extra) -> VideoContext:
    return VideoContext(
        connection=connection,
        storage=storage,
        detector=detector or BrightSpotDetector(),
        worker_name=name,
        max_batch=4,
        ttl_s=600,
        **extra,
    )


def run_all(prefix: str, job_id: str, chunks: list, context: VideoContext) -> list[dict]:
    results = [
        run_chunk({"prefix": prefix, "job_id": job_id, "index": i, "start": a, "stop": b}, context)
        for i, (a, b) in enumerate(chunks)
    ]
    finalize({"prefix": prefix, "job_id": job_id}, context)
    return results


def test_seeking_decode_matches_sequential_decode(test_video: Path) -> None:
    sequential = list(iter_frames(test_video, 0, 64))
    assert [frame.index for frame in sequential] == list(range(64))
    assert sequential[10].time_s == pytest.approx(10 / 25)
    for start, stop, stride in [(20, 40, 1), (13, 50, 3), (60, 64, 2), (24, 30, 1)]:
        chunk = list(iter_frames(test_video, start, stop, stride))
        assert [frame.index for frame in chunk] == list(range(start, stop, stride))
        for frame in chunk:
            assert (frame.image == sequential[frame.index].image).all()


def test_prefetch_hands_over_items_and_errors() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(prefetch(broken(), depth=2))
    stream = prefetch(iter(range(10_000)), depth=2)
    assert next(stream) == 0
    stream.close()  # stops the producer thread without reading on
    assert not any(thread.name == "video-decode" for thread in threading.enumerate())


def test_adaptive_batches_stay_near_the_time_target() -> None:
    batcher = AdaptiveBatcher(max_batch=8, target_s=0.25)
    assert batcher.size == 1
    batcher.observe(frames=1, seconds=0.001)  # a fast device: full batches
    assert batcher.size == 8
    slow = AdaptiveBatcher(max_batch=8, target_s=0.25)
    slow.observe(frames=1, seconds=0.1)  # 0.1 s per frame: two frames fit the target
    assert slow.size == 2
    slow.observe(frames=2, seconds=1.0)  # it got slower: single frames
    assert slow.size == 1
    assert [len(batch) for batch in AdaptiveBatcher(8, 1.0).batches(range(5))] == [1, 1, 1, 1, 1]
    grown = AdaptiveBatcher(3, 1.0)
    grown.size = 3
    assert [len(batch) for batch in grown.batches(range(7))] == [3, 3, 1]


def test_chunks_and_finalize_give_every_frame_with_true_positions_and_stable_tracks(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    storage = JobStorage(tmp_path)
    detector = BrightSpotDetector()
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, chunk_frames=16)
    assert len(chunks) == 4
    context = context_for(redis_connection, storage, detector)
    run_all(prefix, job_id, chunks, context)

    state = read_job_state(redis_connection, prefix, job_id)
    assert state["status"] == "finished" and state["error"] is None and state["ended_at"]
    assert state["progress"] == {"frames_done": 64, "frames_total": 64}
    assert detector.batch_sizes[0] == 1 and max(detector.batch_sizes) == 4  # measured, then up to max_batch

    result = json.loads(storage.result_path(job_id).read_text())
    assert result["video"] == {"fps": 25.0, "width": 160, "height": 128, "frames": 64}
    assert [frame["index"] for frame in result["frames"]] == list(range(64))
    assert all(frame["time_s"] == pytest.approx(frame["index"] / 25) for frame in result["frames"])
    assert [chunk["worker"] for chunk in result["chunks"]] == ["worker-a"] * 4

    track_ids = {target: set() for target in range(len(DEFAULT_TARGETS))}
    for frame in result["frames"]:
        assert len(frame["detections"]) == len(DEFAULT_TARGETS)
        for detection in frame["detections"]:
            x1, y1, x2, y2 = detection["box"]
            centre = ((x1 + x2) / 2, (y1 + y2) / 2)
            distances = [
                abs(centre[0] - t.centre(frame["index"])[0]) + abs(centre[1] - t.centre(frame["index"])[1])
                for t in DEFAULT_TARGETS
            ]
            nearest = min(range(len(distances)), key=distances.__getitem__)
            assert distances[nearest] <= 1.5
            track_ids[nearest].add(detection["track_id"])
    # One id per target over all four chunks (three chunk borders crossed), and different ids per target.
    assert all(len(ids) == 1 and None not in ids for ids in track_ids.values())
    assert track_ids[0] != track_ids[1]


def test_frame_stride_and_annotated_video(redis_connection, prefix: str, tmp_path: Path, test_video: Path) -> None:
    storage = JobStorage(tmp_path)
    job_id, chunks = submit(
        redis_connection, prefix, storage, test_video, chunk_frames=8, frame_stride=3, annotate=True
    )
    run_all(prefix, job_id, chunks, context_for(redis_connection, storage))
    result = json.loads(storage.result_path(job_id).read_text())
    assert [frame["index"] for frame in result["frames"]] == list(range(0, 64, 3))
    state = read_job_state(redis_connection, prefix, job_id)
    assert state["progress"] == {"frames_done": 22, "frames_total": 22}
    annotated = probe_video(storage.annotated_path(job_id))
    assert (annotated.frames, annotated.width, annotated.height, annotated.codec) == (22, 160, 128, "h264")
    assert annotated.fps == pytest.approx(25 / 3, rel=1e-3)
    # The drawn boxes are coloured: the first annotated frame has strongly coloured pixels, the input has none.
    first = next(iter_frames(storage.annotated_path(job_id), 0, 1))
    spread = first.image.max(axis=2).astype(int) - first.image.min(axis=2).astype(int)
    assert (spread > 100).sum() > 20


def test_the_job_s_pixel_scale_and_views_reach_the_detector(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    calls: list[dict] = []

    class Recording(BrightSpotDetector):
        def detect(self, frames, conf, iou, max_det, imgsz, pixel_scale=None, tta=None):
            calls.append({"imgsz": imgsz, "pixel_scale": pixel_scale, "tta": tta})
            return super().detect(frames, conf, iou, max_det, imgsz)

    storage = JobStorage(tmp_path)
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, imgsz=None, pixel_scale=0.75, tta="flips")
    run_all(prefix, job_id, chunks, context_for(redis_connection, storage, detector=Recording()))
    assert calls and all(call == {"imgsz": None, "pixel_scale": 0.75, "tta": "flips"} for call in calls)


def test_a_job_over_the_input_budget_fails_before_any_frame_runs(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    """Accepted while no worker was alive (so the API could not check it), it fails in the worker with the reason."""
    storage = JobStorage(tmp_path)
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, imgsz=None, pixel_scale=2.0, tta="flips")
    detector = BrightSpotDetector()
    model = ModelInfo(imgsz=160, pixel_scale=1.5, tta="off")
    context = context_for(redis_connection, storage, detector, model=model, max_input_pixels=4 * 320 * 256 - 1)
    (start, stop) = chunks[0]
    with pytest.raises(ValueError, match="the video's frames \\(160x128\\).*MASENET_MAX_INPUT_PIXELS"):
        run_chunk({"prefix": prefix, "job_id": job_id, "index": 0, "start": start, "stop": stop}, context)
    assert detector.batch_sizes == []  # nothing was computed
    within = context_for(redis_connection, storage, detector, model=model, max_input_pixels=4 * 320 * 256)
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, imgsz=None, pixel_scale=2.0, tta="flips")
    run_chunk({"prefix": prefix, "job_id": job_id, "index": 0, "start": chunks[0][0], "stop": chunks[0][1]}, within)
    assert detector.batch_sizes


def test_cancel_between_batches_stops_the_chunk(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    storage = JobStorage(tmp_path)
    detector = BrightSpotDetector()
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, chunk_frames=64)

    def cancel_now() -> None:
        set_status(redis_connection, prefix, job_id, JobStatus.CANCELED)

    context = context_for(redis_connection, storage, detector, between_batches=cancel_now)
    outcome = run_chunk({"prefix": prefix, "job_id": job_id, "index": 0, "start": 0, "stop": 64}, context)
    assert outcome["stopped"] and detector.batch_sizes == [1, 4]  # one batch after the cancel was seen
    assert not storage.chunk_path(job_id, 0).exists()
    assert finalize({"prefix": prefix, "job_id": job_id}, context)["status"] == "canceled"
    assert read_job_state(redis_connection, prefix, job_id)["status"] == "canceled"
    again = run_chunk({"prefix": prefix, "job_id": job_id, "index": 0, "start": 0, "stop": 64}, context)
    assert again["stopped"] and len(detector.batch_sizes) == 2  # a canceled job takes no more work


def test_failing_chunk_fails_the_job_with_a_clear_error(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    storage = JobStorage(tmp_path)
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, chunk_frames=32)
    context = context_for(redis_connection, storage, BrightSpotDetector(fail_after_calls=9))
    run_chunk({"prefix": prefix, "job_id": job_id, "index": 0, "start": 0, "stop": 32}, context)
    with pytest.raises(RuntimeError, match="detector exploded"):
        run_chunk({"prefix": prefix, "job_id": job_id, "index": 1, "start": 32, "stop": 64}, context)
    finalize({"prefix": prefix, "job_id": job_id}, context)
    state = read_job_state(redis_connection, prefix, job_id)
    assert state["status"] == "failed"
    assert state["error"].startswith("chunk 1 (frames 32..64) failed: RuntimeError: detector exploded")
    assert not storage.result_path(job_id).exists()


def test_finalize_fails_a_job_whose_chunk_never_ran(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    storage = JobStorage(tmp_path)
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, chunk_frames=32)
    context = context_for(redis_connection, storage)
    run_chunk({"prefix": prefix, "job_id": job_id, "index": 1, "start": 32, "stop": 64}, context)
    outcome = finalize({"prefix": prefix, "job_id": job_id}, context)
    assert outcome["status"] == "failed"
    assert read_job_state(redis_connection, prefix, job_id)["error"].startswith("chunks [0] did not finish")


def test_merge_refuses_overlapping_chunks() -> None:
    frame = {"index": 3, "time_s": 0.12, "detections": []}
    assert merge_chunks([{"frames": [frame]}, {"frames": [{**frame, "index": 1}]}])[0]["index"] == 1
    with pytest.raises(ValueError, match="frame 3"):
        merge_chunks([{"frames": [frame]}, {"frames": [frame]}])


@pytest.mark.parametrize("failing", [False, True], ids=["ok", "chunk-fails"])
def test_rq_runs_chunks_then_finalize(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path, failing: bool
) -> None:
    """The rq dependency starts finalize after every chunk ended, also when one failed (no hanging job)."""
    storage = JobStorage(tmp_path)
    job_id, chunks = submit(redis_connection, prefix, storage, test_video, chunk_frames=16)
    enqueue_video_job(redis_connection, prefix, job_id, chunks, job_timeout_s=120, ttl_s=600)
    detector = BrightSpotDetector(fail_after_calls=5 if failing else None)
    video_jobs.configure(context_for(redis_connection, storage, detector, name="rq-worker"))
    try:
        queue = Queue(video_queue_name(prefix), connection=redis_connection, serializer=JSONSerializer)
        SimpleWorker([queue], connection=redis_connection, serializer=JSONSerializer).work(burst=True)
    finally:
        video_jobs.configure(None)
    finalize_job = Job.fetch(finalize_rq_id(job_id), connection=redis_connection, serializer=JSONSerializer)
    assert finalize_job.get_status() == RqJobStatus.FINISHED  # it ran, whatever happened to the chunks
    state = read_job_state(redis_connection, prefix, job_id)
    if failing:
        assert state["status"] == "failed" and "chunk 1" in state["error"]
    else:
        assert state["status"] == "finished"
        result = json.loads(storage.result_path(job_id).read_text())
        assert len(result["frames"]) == 64 and {c["worker"] for c in result["chunks"]} == {"rq-worker"}


def test_chunks_with_the_real_detector(redis_connection, prefix: str, tmp_path: Path, random_checkpoint: Path) -> None:
    """A random-init network finds nothing meaningful; this checks the model path end to end (shapes, keys)."""
    from model.detector import Detector

    video = write_test_video(tmp_path / "short.mp4", frames=24, width=160, height=128)
    storage = JobStorage(tmp_path / "jobs")
    job_id, chunks = submit(
        redis_connection, prefix, storage, video, chunk_frames=4, frame_stride=2, annotate=True, conf=0.001, max_det=5
    )
    detector = Detector(random_checkpoint, device="cpu")
    context = context_for(redis_connection, storage, detector)
    run_all(prefix, job_id, chunks, context)

    state = read_job_state(redis_connection, prefix, job_id)
    assert state["status"] == "finished" and state["progress"] == {"frames_done": 12, "frames_total": 12}
    result = json.loads(storage.result_path(job_id).read_text())
    assert [frame["index"] for frame in result["frames"]] == list(range(0, 24, 2))
    for frame in result["frames"]:
        assert frame["time_s"] == pytest.approx(frame["index"] / 25)
        for found in frame["detections"]:
            assert set(found) == {"box", "score", "class_id", "class_name", "track_id"}
            assert found["class_name"] == "target" and 0.001 <= found["score"] <= 1
    assert sum(len(frame["detections"]) for frame in result["frames"]) > 0  # the checks above saw boxes
    assert all(len(frame["detections"]) <= 5 for frame in result["frames"])  # max_det reached the model
    assert probe_video(storage.annotated_path(job_id)).frames == 12
