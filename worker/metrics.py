"""Prometheus metrics of one worker process, served on its own port by prometheus-client.

Several workers on one host take consecutive ports from MASENET_WORKER_METRICS_PORT (or run one per
container). GPU gauges come from NVML (nvidia-ml-py) and are left out cleanly without CUDA or NVML.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "gradcam")
FAILURE_REASONS = ("media", "internal", "timeout")
WORK_CLASSES = ("image", "stream", "video")  # worker.schedule.WorkClass
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STREAM_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
PORT_ATTEMPTS = 32


class GpuCollector(Collector):
    """NVML memory and utilisation gauges for the visible GPUs."""

    def __init__(self, nvml: object, device_count: int) -> None:
        self._nvml = nvml
        self._count = device_count

    def collect(self) -> Iterable[GaugeMetricFamily]:
        used = GaugeMetricFamily("masenet_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("masenet_gpu_memory_total_bytes", "GPU memory size", labels=["gpu"])
        busy = GaugeMetricFamily("masenet_gpu_utilization_ratio", "GPU busy fraction (0..1)", labels=["gpu"])
        nvml = self._nvml
        for index in range(self._count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception as exc:  # a metrics failure never fails the worker
                logger.debug("NVML read failed for gpu %d: %s", index, exc)
                continue
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
            busy.add_metric([str(index)], float(rates.gpu) / 100.0)
        return [used, total, busy]


def gpu_collector() -> GpuCollector | None:
    """A collector when NVML is importable and sees GPUs, else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:
        logger.info("GPU metrics off (NVML unavailable: %s)", exc)
        return None
    return GpuCollector(pynvml, count) if count else None


class WorkerMetrics:
    """The metrics of one worker on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.queue_wait = Histogram(
            "masenet_queue_wait_seconds",
            "Time from enqueue to pick-up by a worker",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.class_wait = Histogram(
            "masenet_scheduler_wait_seconds",
            "Time from a frame's arrival (enqueued, captured, decoded) to the start of its pass, per work class",
            ["class"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.passes = Counter(
            "masenet_scheduler_passes", "Forward passes run, per work class", ["class"], registry=self.registry
        )
        self.batch_size = Histogram(
            "masenet_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.stage = Histogram(
            "masenet_stage_duration_seconds",
            "Time per processing stage (decode per image, the others per forward pass)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("masenet_images_processed", "Images run through the model", registry=self.registry)
        self.video_frames = Counter(
            "masenet_video_frames_processed", "Video frames run through the model", registry=self.registry
        )
        self.failures = Counter("masenet_job_failures", "Failed jobs by reason", ["reason"], registry=self.registry)
        self.skipped = Counter(
            "masenet_skipped_jobs", "Image jobs skipped because their client left", registry=self.registry
        )
        self.stream_frames = Counter(
            "masenet_stream_frames",
            "Live stream frames: read from the cameras, processed, dropped (over the fps cap or replaced by newer)",
            ["outcome"],
            registry=self.registry,
        )
        self.stream_latency = Histogram(
            "masenet_stream_latency_seconds",
            "Live streams: from reading a frame off the camera to publishing its event",
            buckets=STREAM_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stream_reconnects = Counter(
            "masenet_stream_reconnects", "Live stream reconnections after a lost camera", registry=self.registry
        )
        self.streams_held = Gauge("masenet_streams_held", "Live streams this worker holds", registry=self.registry)
        self.model_load = Gauge("masenet_model_load_seconds", "Time to load the model", registry=self.registry)
        self.up = Gauge("masenet_worker_up", "1 when the model is loaded and jobs are taken", registry=self.registry)
        self.model_info = Gauge(
            "masenet_model_info",
            "The model this worker serves (value 1)",
            ["name", "scale", "device", "weights_sha256"],
            registry=self.registry,
        )
        for stage in STAGES:
            self.stage.labels(stage=stage)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        for work_class in WORK_CLASSES:
            self.class_wait.labels(work_class)
            self.passes.labels(work_class)
        self.up.set(0)

    def enable_gpu(self) -> None:
        collector = gpu_collector()
        if collector is not None:
            self.registry.register(collector)

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Start the /metrics server on `port` or the next free one (0 picks any); returns the port used."""
        attempts = 1 if port == 0 else PORT_ATTEMPTS
        last_error: OSError | None = None
        for candidate in range(port, port + attempts):
            try:
                server, _thread = start_http_server(candidate, addr=address, registry=self.registry)
            except OSError as exc:
                last_error = exc
                continue
            return int(server.server_port)
        raise OSError(f"no free metrics port in {port}..{port + attempts - 1}: {last_error}")
