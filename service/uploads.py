"""Streaming multipart parsing with a byte cap, and a cheap header check of each image.

The body is fed chunk by chunk into python-multipart's push parser; the byte count is checked after every
chunk, so an oversized upload is answered 413 as soon as it crosses MASENET_MAX_UPLOAD_BYTES, not after it
has been buffered. A declared Content-Length above the cap is refused before reading anything.

The image check opens only the header with Pillow (format, size, frame count); the full decode happens in
the worker.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from PIL import Image
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import (
    InvalidMedia,
    InvalidParameters,
    PixelLimitExceeded,
    ServiceError,
    UnsupportedMedia,
    UploadTooLarge,
)

IMAGE_FIELD = "image"
# A flat 6000x6000 JPEG is about 210 KB, 170 pixels per byte; eight times that is still no real frame.
MAX_JPEG_PIXELS_PER_BYTE = 1400
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "TIFF": "TIFF", "BMP": "BMP"}


@dataclass
class UploadedFile:
    """One multipart part, fully read."""

    field_name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class _PartBuilder:
    headers: dict[str, bytes] = field(default_factory=dict)  # raw values: decoded once their syntax is parsed
    chunks: list[bytes] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)


@dataclass
class ParsedUpload:
    """The parts of a request and the number of body bytes read."""

    files: list[UploadedFile]
    body_bytes: int


def multipart_boundary(content_type: str | None, field: str = IMAGE_FIELD, what: str = "the images") -> bytes:
    """The boundary of a multipart/form-data Content-Type, or UnsupportedMedia (415)."""
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMedia(
            f"send {what} as multipart/form-data with parts named '{field}' "
            f"(got Content-Type {content_type or 'none'!r})"
        )
    return options[b"boundary"]


def check_declared_length(
    content_length: str | None, max_bytes: int, too_large: Callable[[int, int], str] | None = None
) -> None:
    """Refuse a body whose declared length is already above the cap, before reading it."""
    if content_length is None:
        return
    try:
        declared = int(content_length)  # not str.isdigit(): it accepts '²', which int() refuses
    except ValueError as exc:
        raise InvalidParameters(f"invalid Content-Length header {content_length!r}") from exc
    if declared > max_bytes:
        raise UploadTooLarge((too_large or upload_limit_message)(declared, max_bytes))


def upload_limit_message(size: int, max_bytes: int) -> str:
    return (
        f"request body is {'at least ' if size <= max_bytes else ''}{size} bytes, above the limit of {max_bytes} "
        "bytes (MASENET_MAX_UPLOAD_BYTES): send fewer or smaller images per request"
    )


class MultipartReader:
    """Collects multipart parts from a stream of body chunks, refusing more than `max_bytes` or `max_parts`."""

    def __init__(self, boundary: bytes, max_bytes: int, max_parts: int) -> None:
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.body_bytes = 0
        self.files: list[UploadedFile] = []
        self._part: _PartBuilder | None = None
        self._finished = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_end": self._on_end,
            },
        )

    async def read(self, chunks: AsyncIterator[bytes]) -> ParsedUpload:
        async for chunk in chunks:
            self.feed(chunk)
        return self.finish()

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk; raises UploadTooLarge as soon as the body crosses the cap."""
        if not chunk:
            return
        self.body_bytes += len(chunk)
        if self.body_bytes > self.max_bytes:
            raise UploadTooLarge(upload_limit_message(self.body_bytes, self.max_bytes))
        try:
            self._parser.write(chunk)
        except ServiceError:
            raise
        except Exception as exc:
            raise InvalidParameters(f"malformed multipart body: {exc}") from exc

    def finish(self) -> ParsedUpload:
        try:
            self._parser.finalize()
        except ServiceError:
            raise
        except Exception as exc:
            raise InvalidParameters(f"malformed multipart body: {exc}") from exc
        if not self._finished and self.body_bytes:
            raise InvalidParameters("the multipart body ended early: the upload was cut off")
        return ParsedUpload(files=self.files, body_bytes=self.body_bytes)

    # python-multipart callbacks
    def _on_part_begin(self) -> None:
        if len(self.files) >= self.max_parts:
            raise UploadTooLarge(
                f"more than {self.max_parts} images in one request (MASENET_MAX_IMAGES_PER_REQUEST): "
                "split them over several requests"
            )
        self._part = _PartBuilder()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.header_value += data[start:end]

    def _on_header_end(self) -> None:
        assert self._part is not None
        name = self._part.header_field.decode("latin-1").strip().lower()
        self._part.headers[name] = bytes(self._part.header_value).strip()
        self._part.header_field.clear()
        self._part.header_value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.chunks.append(bytes(data[start:end]))

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        assert part is not None
        # Parsed as bytes: browsers and curl send a non-ASCII file name as raw UTF-8, which a str would not survive.
        disposition, options = parse_options_header(part.headers.get("content-disposition"))
        content_type = part.headers.get("content-type")
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidParameters("every multipart part needs Content-Disposition: form-data with a name")
        filename = options.get(b"filename")
        self.files.append(
            UploadedFile(
                field_name=options[b"name"].decode("utf-8", errors="replace"),
                filename=filename.decode("utf-8", errors="replace") if filename is not None else None,
                content_type=content_type.decode("utf-8", errors="replace") if content_type is not None else None,
                data=b"".join(part.chunks),
            )
        )

    def _on_end(self) -> None:
        self._finished = True


def select_images(files: list[UploadedFile]) -> list[UploadedFile]:
    """The parts named `image`, in order; anything else is a client error that names the fix."""
    others = sorted({upload.field_name for upload in files if upload.field_name != IMAGE_FIELD})
    if others:
        raise InvalidParameters(
            f"unexpected form field(s) {', '.join(repr(name) for name in others)}: send each image in a part named "
            f"'{IMAGE_FIELD}' and the options as query parameters"
        )
    if not files:
        raise InvalidParameters(f"no image in the request: send one or more multipart parts named '{IMAGE_FIELD}'")
    return files


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def inspect_image(data: bytes, name: str, max_pixels: int) -> ImageHeader:
    """Check format, pixel count and frame count from the header only (no pixel decoding)."""
    if not data:
        raise InvalidMedia(f"image {name!r} is empty (0 bytes): send the file's contents")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PixelLimitExceeded(f"image {name!r} is too large to decode safely: {exc}") from exc
    except Exception as exc:
        raise UnsupportedMedia(
            f"image {name!r} is not a readable image ({type(exc).__name__}); send PNG, JPEG, TIFF or BMP"
        ) from exc
    with image:
        kind = ACCEPTED_FORMATS.get(image.format or "")
        if kind is None:
            raise UnsupportedMedia(f"image {name!r} is {image.format}; send PNG, JPEG, TIFF or BMP")
        width, height = image.size
        if width * height > max_pixels:
            raise PixelLimitExceeded(
                f"image {name!r} is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
                "(MASENET_MAX_PIXELS): send a smaller frame"
            )
        if width < 1 or height < 1:
            raise InvalidMedia(f"image {name!r} has no pixels ({width}x{height})")
        try:
            frames = int(getattr(image, "n_frames", 1))
        except Exception as exc:
            raise InvalidMedia(f"image {name!r} is corrupt: {exc}") from exc
        if frames > 1:
            raise InvalidMedia(f"image {name!r} has {frames} frames; send single still frames")
        if kind == "JPEG":
            check_jpeg_body(data, name, width, height)
        return ImageHeader(format=kind, width=width, height=height)


def check_jpeg_body(data: bytes, name: str, width: int, height: int) -> None:
    """Refuse a JPEG cut short (no end-of-image marker after its last scan) or one whose declared size its bytes
    cannot hold; Pillow would decode either into a made-up full-size frame.

    Inside entropy-coded data every 0xFF byte is stuffed, so FF D9 after the last start-of-scan (FF DA) can only
    be the end of the main image (a thumbnail's markers all come before it).
    """
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise InvalidMedia(
            f"image {name!r} could not be read: the JPEG is truncated (its image data ends without an end marker); "
            "send the whole file"
        )
    if width * height > len(data) * MAX_JPEG_PIXELS_PER_BYTE:
        raise InvalidMedia(
            f"image {name!r} could not be read: the JPEG declares {width}x{height} pixels but holds only "
            f"{len(data)} bytes, fewer than any real frame of that size; send the whole file"
        )
