"""worker.video: chunks pulled pass by pass through the runtime step, finalize, tracking, cancel.

The inference step is a stand-in that finds bright squares (tests.synthetic_video.BrightSpotDetector) behind
the same `FrameInference` interface as the worker's runtime, so positions and tracks can be checked exactly;
one test runs the real runtime on a random-init network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.contracts import TTA_VIEW_COUNTS, Detection, ImageJobResult
from jobs.settings import Settings
from jobs.store import JobStorage, VideoJobStore
from jobs.video import (
    ChunkPayload,
    FinalizePayload,
    VideoParams,
    VideoStatus,
    new_job_id,
    plan_chunks,
    processed_frame_count,
)
from service.video import probe_video
from tests.synthetic_video import DEFAULT_TARGETS, BrightSpotDetector, write_test_video
from worker.frames import iter_frames
from worker.metrics import WorkerMetrics
from worker.runtime import DecodedImage, FrameTask, InferenceRuntime, Outcome
from worker.video import ChunkRun, ChunkStopped, VideoJobs, merge_chunks


class SpotInference:
    """The runtime's `FrameInference` steps over BrightSpotDetector (no network)."""

    def __init__(self, detector: BrightSpotDetector | None = None) -> None:
        self.detector = detector or BrightSpotDetector()
        self.params: list = []

    def upload(self, frame: np.ndarray, started: float | None = None) -> DecodedImage:
        return DecodedImage(frame=frame, tensor=None, width=frame.shape[1], height=frame.shape[0])

    def views(self, task: FrameTask) -> int:
        return TTA_VIEW_COUNTS[task.params.tta or "off"]

    def run(self, tasks: list[FrameTask]) -> list[Outcome]:
        self.params += [task.params for task in tasks]
        first = tasks[0].params
        images = [task.decoded.result() for task in tasks]
        found = self.detector.detect([image.frame for image in images], first.conf, first.iou, first.max_det, None)
        return [
            Outcome(result=ImageJobResult(
                filename=task.name, width=image.width, height=image.height,
                detections=[Detection(**box) for box in boxes], queue_ms=0, inference_ms=0, batch_size=len(tasks),
            ))
            for task, image, boxes in zip(tasks, images, found, strict=True)
        ]  # fmt: skip


def submit(store: VideoJobStore, video: Path, chunk_frames: int = 16, **params) -> tuple:
    """Store the video and write the job state the way the API does; returns (job_id, chunks)."""
    job_id = new_job_id()
    store.storage.create(job_id)
    store.storage.input_path(job_id, ".mp4").write_bytes(video.read_bytes())
    info = probe_video(video)
    params = VideoParams(**({"imgsz": 160} | params))
    chunks = plan_chunks(info.frames, params.frame_stride, chunk_frames)
    frames_total = processed_frame_count(info.frames, params.frame_stride)
    store.create(job_id, info=info, params=params, chunks=chunks, frames_total=frames_total, input_name="input.mp4")
    return job_id, chunks


def make_store(connection, prefix: str, tmp_path: Path) -> VideoJobStore:
    return VideoJobStore(connection, prefix, JobStorage(tmp_path), ttl_s=600)


def handlers(store: VideoJobStore, inference=None, name: str = "worker-a", **extra) -> VideoJobs:
    return VideoJobs(store=store, inference=inference or SpotInference(), worker_name=name, max_images=4, **extra)


def chunk(store: VideoJobStore, job_id: str, index: int, start: int, stop: int) -> ChunkPayload:
    return ChunkPayload(prefix=store.prefix, job_id=job_id, index=index, start=start, stop=stop)


def run_all(store: VideoJobStore, job_id: str, chunks: list, video: VideoJobs) -> list[dict]:
    results = [video.run_chunk(chunk(store, job_id, i, a, b)) for i, (a, b) in enumerate(chunks)]
    video.finalize(FinalizePayload(prefix=store.prefix, job_id=job_id))
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


def test_chunks_and_finalize_give_every_frame_with_true_positions_and_stable_tracks(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    inference = SpotInference()
    job_id, chunks = submit(store, test_video, chunk_frames=16)
    assert len(chunks) == 4
    run_all(store, job_id, chunks, handlers(store, inference))

    state = store.read(job_id)
    assert state.status == VideoStatus.FINISHED and state.error is None and state.ended_at
    assert state.progress.model_dump() == {"frames_done": 64, "frames_total": 64}
    sizes = inference.detector.batch_sizes
    assert sizes[0] == 1 and max(sizes) <= 4 and sum(sizes) == 64  # measured first, never above MASENET_MAX_BATCH

    result = json.loads(store.storage.result_path(job_id).read_text())
    assert set(result) == {"video", "frames"}  # exactly the response model: nothing internal leaks
    assert result["video"] == {"fps": 25.0, "width": 160, "height": 128, "frames": 64}
    assert [frame["index"] for frame in result["frames"]] == list(range(64))
    assert all(frame["time_s"] == pytest.approx(frame["index"] / 25) for frame in result["frames"])
    assert {store.storage.read_chunk(job_id, i).worker for i in range(4)} == {"worker-a"}

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
    keys = [key.decode() for key in redis_connection.scan_iter(f"*{job_id}*")]
    assert keys and all(redis_connection.ttl(key) > 0 for key in keys)  # nothing of a finished job stays forever


def test_frame_stride_and_annotated_video(redis_connection, prefix: str, tmp_path: Path, test_video: Path) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    job_id, chunks = submit(store, test_video, chunk_frames=8, frame_stride=3, annotate=True)
    run_all(store, job_id, chunks, handlers(store))
    result = json.loads(store.storage.result_path(job_id).read_text())
    assert [frame["index"] for frame in result["frames"]] == list(range(0, 64, 3))
    assert store.read(job_id).progress.model_dump() == {"frames_done": 22, "frames_total": 22}
    annotated = probe_video(store.storage.annotated_path(job_id))
    assert (annotated.frames, annotated.width, annotated.height, annotated.codec) == (22, 160, 128, "h264")
    assert annotated.fps == pytest.approx(25 / 3, rel=1e-3)
    # The drawn boxes are coloured: the first annotated frame has strongly coloured pixels, the input has none.
    first = next(iter_frames(store.storage.annotated_path(job_id), 0, 1))
    spread = first.image.max(axis=2).astype(int) - first.image.min(axis=2).astype(int)
    assert (spread > 100).sum() > 20


def test_the_job_s_parameters_and_views_reach_the_inference_step(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    inference = SpotInference()
    job_id, chunks = submit(store, test_video, chunk_frames=64, imgsz=None, pixel_scale=0.75, tta="flips", conf=0.4)
    handlers(store, inference).run_chunk(chunk(store, job_id, 0, *chunks[0]))
    assert len(inference.params) == 64
    assert {(p.imgsz, p.pixel_scale, p.tta, p.conf, p.gradcam) for p in inference.params} == {
        (None, 0.75, "flips", 0.4, False)
    }
    assert set(inference.detector.batch_sizes) == {1}  # four views per frame: one frame fills a batch of 4 images


def test_cancel_between_batches_stops_the_chunk(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    inference = SpotInference()
    job_id, chunks = submit(store, test_video, chunk_frames=64)
    video = handlers(store, inference)
    run = ChunkRun(video, chunk(store, job_id, 0, 0, 64))
    assert run.open()
    try:
        for passes in range(3):
            frames = run.ready(timeout_s=5.0)
            run.take(frames[:2])
            if passes == 2:
                store.set_status(job_id, VideoStatus.CANCELED)
                with pytest.raises(ChunkStopped):  # the pass in flight when the cancel came ends the chunk
                    run.run(frames[:2])
            else:
                run.run(frames[:2])
    finally:
        run.close()
    outcome = run.conclude(ChunkStopped())
    assert outcome["stopped"] and len(inference.detector.batch_sizes) == 3
    assert not store.storage.chunk_path(job_id, 0).exists()
    assert video.finalize(FinalizePayload(prefix=prefix, job_id=job_id))["status"] == "canceled"
    assert store.read(job_id).status == VideoStatus.CANCELED
    again = video.run_chunk(chunk(store, job_id, 0, 0, 64))
    assert again["stopped"] and len(inference.detector.batch_sizes) == 3  # a canceled job takes no more work


def test_failing_chunk_fails_the_job_with_a_clear_error(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    class Exploding(SpotInference):
        def run(self, tasks):
            if any(task.index >= 40 for task in tasks):
                raise RuntimeError("detector exploded")
            return super().run(tasks)

    store = make_store(redis_connection, prefix, tmp_path)
    job_id, chunks = submit(store, test_video, chunk_frames=32)
    video = handlers(store, Exploding())
    video.run_chunk(chunk(store, job_id, 0, 0, 32))
    with pytest.raises(RuntimeError, match="detector exploded"):
        video.run_chunk(chunk(store, job_id, 1, 32, 64))
    video.finalize(FinalizePayload(prefix=prefix, job_id=job_id))
    state = store.read(job_id)
    assert state.status == VideoStatus.FAILED
    assert state.error.startswith("chunk 1 (frames 32..64) failed: RuntimeError: detector exploded")
    assert not store.storage.result_path(job_id).exists()


def test_a_frame_the_runtime_refuses_fails_the_chunk_with_its_reason(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    from jobs.contracts import FailureKind, JobFailure

    class Refusing(SpotInference):
        def run(self, tasks):
            return [Outcome(failure=JobFailure(kind=FailureKind.MEDIA, detail="over MASENET_MAX_INPUT_PIXELS"))] * len(
                tasks
            )

    store = make_store(redis_connection, prefix, tmp_path)
    job_id, chunks = submit(store, test_video, chunk_frames=64)
    with pytest.raises(RuntimeError, match="frame 0: over MASENET_MAX_INPUT_PIXELS"):
        handlers(store, Refusing()).run_chunk(chunk(store, job_id, 0, 0, 64))
    assert "frame 0: over MASENET_MAX_INPUT_PIXELS" in store.read(job_id).error


def test_finalize_fails_a_job_whose_chunk_never_ran(
    redis_connection, prefix: str, tmp_path: Path, test_video: Path
) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    job_id, chunks = submit(store, test_video, chunk_frames=32)
    video = handlers(store)
    video.run_chunk(chunk(store, job_id, 1, 32, 64))
    outcome = video.finalize(FinalizePayload(prefix=prefix, job_id=job_id))
    assert outcome["status"] == "failed"
    assert store.read(job_id).error.startswith("chunks [0] did not finish")


def test_merge_refuses_overlapping_chunks() -> None:
    from jobs.video import ChunkResult, FrameResult

    def one(index: int) -> ChunkResult:
        frame = FrameResult(index=index, time_s=index / 25, detections=[])
        return ChunkResult(index=0, start=0, stop=8, worker="w", elapsed_s=0.1, frames=[frame])

    assert merge_chunks([one(3), one(1)])[0].index == 1
    with pytest.raises(ValueError, match="frame 3"):
        merge_chunks([one(3), one(3)])


def test_chunks_with_the_real_runtime(redis_connection, prefix: str, tmp_path: Path, random_checkpoint: Path) -> None:
    """A random-init network finds nothing meaningful; this checks the model path end to end (shapes, keys)."""
    video_file = write_test_video(tmp_path / "short.mp4", frames=24, width=160, height=128)
    store = make_store(redis_connection, prefix, tmp_path / "jobs")
    job_id, chunks = submit(store, video_file, chunk_frames=4, frame_stride=2, annotate=True, conf=0.001, max_det=5)
    settings = Settings(weights=random_checkpoint, device="cpu", runtime="torch", queue_prefix=prefix)
    runtime = InferenceRuntime(settings, redis_connection, WorkerMetrics(), worker_name="in-process")
    runtime.load()
    run_all(store, job_id, chunks, handlers(store, runtime))

    state = store.read(job_id)
    assert state.status == VideoStatus.FINISHED and state.progress.model_dump() == {
        "frames_done": 12,
        "frames_total": 12,
    }
    result = json.loads(store.storage.result_path(job_id).read_text())
    assert [frame["index"] for frame in result["frames"]] == list(range(0, 24, 2))
    for frame in result["frames"]:
        assert frame["time_s"] == pytest.approx(frame["index"] / 25)
        for found in frame["detections"]:
            assert set(found) == {"box", "score", "class_id", "class_name", "track_id"}
            assert found["class_name"] == "target" and 0.001 <= found["score"] <= 1
    assert sum(len(frame["detections"]) for frame in result["frames"]) > 0  # the checks above saw boxes
    assert all(len(frame["detections"]) <= 5 for frame in result["frames"])  # max_det reached the model
    assert probe_video(store.storage.annotated_path(job_id)).frames == 12
    stages = {sample.labels["stage"] for metric in runtime.metrics.stage.collect() for sample in metric.samples}
    assert {"decode", "preprocess", "inference", "postprocess"} <= stages  # the same stage metrics as images
