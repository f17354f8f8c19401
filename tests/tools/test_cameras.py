"""The fake cameras: the scene, the RTP packetizer, and each camera read by PyAV (FFmpeg) like a real one, through
drop and resume. A live reader decodes frames with a lag (FFmpeg probes a few seconds of RTSP or MPEG-TS first), so a
decoded frame is checked against the target centres of every frame shown between opening and decoding.
"""

from __future__ import annotations

import math
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import av
import numpy as np
import pytest

from tools.cameras import CameraScene, LiveCamera, MjpegCamera, TargetPath, TsCamera
from tools.rtsp_camera import RtspCamera, interleaved, packetize_nal, rtp_packet, split_annexb

FPS = 10.0
OPEN_TIMEOUT_S = 5.0
TOLERANCE_PX = 4.0
RTSP_TCP = {"options": {"rtsp_transport": "tcp"}}
CAMERAS = {
    "mjpeg": (MjpegCamera, {}),
    "mjpeg-format": (MjpegCamera, {"format": "mpjpeg"}),
    "ts": (TsCamera, {}),
    "rtsp": (RtspCamera, RTSP_TCP),
    "rtsp-whitelist": (RtspCamera, {"options": {"rtsp_transport": "tcp", "protocol_whitelist": "rtsp,rtp,tcp,udp"}}),
    "rtsp-smallest-whitelist": (RtspCamera, {"options": {"rtsp_transport": "tcp", "protocol_whitelist": "tcp"}}),
}


def brightest_peaks(picture: np.ndarray, count: int = 2, separation: int = 12) -> list[tuple[int, int]]:
    """(x, y) of the `count` brightest pixels at least `separation` pixels apart (a peak's window is blanked)."""
    grey = picture.astype(np.float64).mean(axis=2)
    peaks = []
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(grey)), grey.shape)
        peaks.append((int(x), int(y)))
        grey[max(y - separation, 0) : y + separation + 1, max(x - separation, 0) : x + separation + 1] = -1.0
    return peaks


def near_a_target(point: tuple[int, int], scene: CameraScene, first_index: int, last_index: int) -> bool:
    centres = [centre for index in range(first_index, last_index + 1) for centre in scene.centres(index)]
    return min(math.dist(point, centre) for centre in centres) <= TOLERANCE_PX


def read_and_check(camera: LiveCamera, url: str, frames: int = 10, **open_arguments: Any) -> None:
    """Decode `frames` frames; each is 320x256 and its two brightest peaks lie on a target of a frame shown then."""
    first_index = camera.current_index() - 2
    with av.open(url, timeout=OPEN_TIMEOUT_S, **open_arguments) as container:
        for number, frame in enumerate(container.decode(video=0)):
            last_index = camera.current_index() + 1
            picture = frame.to_ndarray(format="rgb24")
            assert picture.shape == (256, 320, 3)
            for peak in brightest_peaks(picture):
                assert near_a_target(peak, camera.scene, first_index, last_index), (peak, first_index, last_index)
            if number + 1 == frames:
                return
    pytest.fail("the stream ended early")


# -------------------------------------------------------------------------------------------- pure parts


def test_scene_is_deterministic_grey_with_blobs_at_the_centres() -> None:
    scene = CameraScene(seed=3)
    picture = scene.frame(7)
    assert picture.shape == (256, 320, 3) and picture.dtype == np.uint8
    assert np.array_equal(picture, scene.frame(7)) and not np.array_equal(picture, scene.frame(8))
    assert np.array_equal(picture[:, :, 0], picture[:, :, 2])
    for peak in brightest_peaks(picture):
        assert min(math.dist(peak, centre) for centre in scene.centres(7)) <= 1.0


def test_targets_wrap_around_the_frame() -> None:
    path = TargetPath(x0=310, y0=5, vx=5, vy=-2)
    assert path.centre(4, width=320, height=256) == (10, 253)
    assert CameraScene().centres(0) == [(30, 60), (280, 200)]


def test_fu_a_fragments_reassemble_to_the_nal() -> None:
    nal = bytes([0x65]) + bytes(range(256)) * 12  # NRI 3, type 5 (IDR slice), 3073 bytes
    payloads = packetize_nal(nal, max_payload=1400)
    assert len(payloads) == 3 and all(len(payload) <= 1400 for payload in payloads)
    assert {payload[0] for payload in payloads} == {0x60 | 28}  # F and NRI kept, type FU-A
    assert [payload[1] for payload in payloads] == [0x80 | 5, 5, 0x40 | 5]  # start, middle, end; type 5
    assert bytes([(payloads[0][0] & 0xE0) | (payloads[0][1] & 0x1F)]) + b"".join(p[2:] for p in payloads) == nal
    assert packetize_nal(nal[:1400], max_payload=1400) == [nal[:1400]]  # fits: a single NAL unit packet


def test_annexb_split_rtp_header_and_interleaved_framing() -> None:
    stream = b"\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\xce\x00\x00\x00\x01\x65\x88\x00"
    assert split_annexb(stream) == [b"\x67\x42", b"\x68\xce", b"\x65\x88"]
    packet = rtp_packet(b"\x65", sequence=0x1_0001, timestamp=90_000, ssrc=0xDEADBEEF, marker=True)
    assert packet == bytes([0x80, 0x80 | 96, 0x00, 0x01]) + (90_000).to_bytes(4, "big") + bytes.fromhex("deadbeef65")
    assert interleaved(2, packet) == b"$\x02\x00\x0d" + packet


# -------------------------------------------------------------------------------------------- read live


@pytest.mark.parametrize("name", CAMERAS)
def test_pyav_reads_the_targets_from_each_camera(name: str) -> None:
    camera_class, open_arguments = CAMERAS[name]
    with camera_class(fps=FPS) as camera:
        time.sleep(0.3)  # a late client sees the current frame, not frame 0
        read_and_check(camera, camera.url, **open_arguments)
        assert camera.frames_sent >= 10


@pytest.mark.parametrize("name", ["mjpeg", "ts", "rtsp"])
def test_drop_makes_the_camera_vanish_and_resume_brings_it_back(name: str) -> None:
    camera_class, open_arguments = CAMERAS[name]
    with camera_class(fps=FPS) as camera:
        port = camera.port
        container = av.open(camera.url, timeout=OPEN_TIMEOUT_S, **open_arguments)
        frames = container.decode(video=0)
        next(frames)
        camera.drop()
        dropped_at = time.monotonic()
        with pytest.raises((av.FFmpegError, OSError, StopIteration)):
            while time.monotonic() - dropped_at < 5.0:
                next(frames)
        assert time.monotonic() - dropped_at < 5.0
        container.close()
        with pytest.raises((av.FFmpegError, OSError)):
            av.open(camera.url, timeout=OPEN_TIMEOUT_S, **open_arguments)
        camera.resume()
        assert camera.port == port
        read_and_check(camera, camera.url, frames=3, **open_arguments)


def test_close_stops_a_camera_with_a_client_quickly() -> None:
    camera = MjpegCamera(fps=FPS).start()
    with av.open(camera.url, timeout=OPEN_TIMEOUT_S) as container:
        next(container.decode(video=0))
        closing_at = time.monotonic()
        camera.close()
        assert time.monotonic() - closing_at < 1.0


def test_mjpeg_answers_404_elsewhere() -> None:
    with MjpegCamera(fps=FPS) as camera, pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{camera.port}/other", timeout=5)
    assert raised.value.code == 404


def test_rtsp_credentials() -> None:
    with RtspCamera(fps=FPS, credentials=("user", "secret")) as camera:
        with pytest.raises(av.FFmpegError):
            av.open(camera.url, timeout=OPEN_TIMEOUT_S, **RTSP_TCP)
        with pytest.raises(av.FFmpegError):
            av.open(camera.url.replace("rtsp://", "rtsp://user:wrong@"), timeout=OPEN_TIMEOUT_S, **RTSP_TCP)
        read_and_check(camera, camera.url.replace("rtsp://", "rtsp://user:secret@"), frames=3, **RTSP_TCP)


def rtsp_exchange(port: int, request: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request.encode())
        return connection.recv(65536).decode()


def test_rtsp_echoes_cseq_and_refuses_udp() -> None:
    with RtspCamera(fps=FPS, credentials=("user", "secret")) as camera:
        answer = rtsp_exchange(camera.port, f"OPTIONS {camera.url} RTSP/1.0\r\nCSeq: 7\r\n\r\n")
        assert answer.startswith("RTSP/1.0 200 OK\r\n") and "CSeq: 7\r\n" in answer and "DESCRIBE" in answer
        answer = rtsp_exchange(camera.port, f"DESCRIBE {camera.url} RTSP/1.0\r\nCSeq: 2\r\n\r\n")
        assert answer.startswith("RTSP/1.0 401") and 'WWW-Authenticate: Basic realm="camera"' in answer
        udp = "RTP/AVP;unicast;client_port=5000-5001"
        request = f"SETUP {camera.url}/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: {udp}\r\n"
        answer = rtsp_exchange(camera.port, request + "Authorization: Basic dXNlcjpzZWNyZXQ=\r\n\r\n")
        assert answer.startswith("RTSP/1.0 461 Unsupported Transport\r\n") and "CSeq: 3\r\n" in answer


def test_rtsp_sdp_describes_one_h264_track() -> None:
    with RtspCamera(fps=FPS) as camera:
        sdp = camera.sdp()
    assert "m=video 0 RTP/AVP 96" in sdp and "a=rtpmap:96 H264/90000" in sdp
    assert "packetization-mode=1" in sdp and "sprop-parameter-sets=" in sdp and "a=control:trackID=0" in sdp
