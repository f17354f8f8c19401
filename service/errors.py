"""Named exceptions of the service. The app's exception handler turns each into `{"detail": ...}` JSON.

Every exception carries its HTTP status, the `reason` label of `masenet_rejected_requests_total`, and a
message that tells the client what to change.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a request the service answers with an error status."""

    status_code: int = 500
    reason: str = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class UploadTooLarge(ServiceError):
    """The body, or the number of images, is above the configured limit."""

    status_code = 413
    reason = "size"


class PixelLimitExceeded(ServiceError):
    """An image has more pixels than MASENET_MAX_PIXELS (decompression-bomb guard)."""

    status_code = 413
    reason = "pixels"


class UnsupportedMedia(ServiceError):
    """The request or an image is of a type the service does not read."""

    status_code = 415
    reason = "media"


class InvalidMedia(ServiceError):
    """An image is empty, multi-frame or corrupt."""

    status_code = 422
    reason = "media"


class InvalidParameters(ServiceError):
    """A query parameter or a form field is out of range or missing."""

    status_code = 422
    reason = "params"


class Unauthorized(ServiceError):
    """A bearer key is required and was missing or wrong."""

    status_code = 401
    reason = "auth"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class QueueFull(ServiceError):
    """The image queue is above MASENET_MAX_QUEUE."""

    status_code = 503
    reason = "queue_full"


class ServiceUnavailable(ServiceError):
    """Redis cannot be reached."""

    status_code = 503
    reason = "unavailable"


class ResultTimeout(ServiceError):
    """No worker answered within MASENET_TIMEOUT_S."""

    status_code = 504
    reason = "timeout"


class WorkerFailure(ServiceError):
    """A worker failed on a job for a reason that is not the client's data."""

    status_code = 500
    reason = "worker_error"


class JobNotFound(ServiceError):
    """An unknown, expired or malformed job id."""

    status_code = 404
    reason = "params"


class JobNotReady(ServiceError):
    """The job exists but what was asked for is not there (yet): not finished, or not asked for at submission."""

    status_code = 409
    reason = "params"


class ClientGone(ServiceError):
    """The client closed the connection before its answer: it cut off its upload, or left while it waited.

    Answered (to nobody) with 499, the status nginx made the convention for it, so it counts as a client
    outcome in the metrics and logs, never as a server error.
    """

    status_code = 499
    reason = "client_gone"


class StreamNotFound(ServiceError):
    """An unknown, expired or malformed stream id."""

    status_code = 404
    reason = "params"


class TooManyStreams(ServiceError):
    """MASENET_MAX_STREAMS live streams already run."""

    status_code = 429
    reason = "streams"
