"""service.video: probing uploads with PyAV and writing them under a byte cap."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from service.video import UploadTooLargeError, UploadWriter, VideoProbeError, probe_video, safe_suffix
from tests.synthetic_video import write_test_video


def test_probe_reads_an_mp4(test_video: Path) -> None:
    info = probe_video(test_video)
    assert info.model_dump() == {
        "fps": 25.0, "width": 160, "height": 128, "frames": 64, "duration_s": pytest.approx(2.56), "codec": "h264"
    }  # fmt: skip


def test_probe_counts_frames_when_the_container_does_not_store_them(tmp_path: Path) -> None:
    info = probe_video(write_test_video(tmp_path / "clip.mkv", frames=30, width=96, height=64))
    assert (info.frames, info.width, info.height) == (30, 96, 64)
    avi = probe_video(write_test_video(tmp_path / "clip.avi", frames=20, codec="mpeg4"))
    assert (avi.frames, avi.codec) == (20, "mpeg4")


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 100).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [b"", b"this is plain text, not a video" * 20, os.urandom(4096), png_bytes()],
    ids=["empty", "text", "noise", "png"],
)
def test_probe_refuses_non_videos(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoProbeError):
        probe_video(path)


def test_probe_refuses_a_truncated_video(tmp_path: Path, test_video: Path) -> None:
    data = test_video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])  # MP4 index (moov) comes last: a cut file has none
    with pytest.raises(VideoProbeError):
        probe_video(path)


def test_safe_suffix_keeps_only_known_video_extensions() -> None:
    assert safe_suffix("clip.MP4") == ".mp4"
    assert safe_suffix("../../evil.sh") == ""
    assert safe_suffix(None) == ""


def test_upload_writer_enforces_the_cap_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    with UploadWriter(path, max_bytes=20) as writer:
        writer.write(b"a" * 10)
        writer.write(b"b" * 10)
    assert writer.size == 20 and path.read_bytes() == b"a" * 10 + b"b" * 10
    second = tmp_path / "big"
    written = 0
    with pytest.raises(UploadTooLargeError), UploadWriter(second, max_bytes=4500) as capped:
        for _ in range(100):
            capped.write(b"c" * 1000)
            written += 1
    assert not second.exists()  # the partial file is gone
    assert written == 4  # the fifth piece crossed the cap and was refused
    with pytest.raises(FileExistsError), UploadWriter(path, max_bytes=10):
        pass
