"""A fake RTSP camera: a minimal RTSP/1.0 server (RFC 2326) sending H.264 over RTP interleaved on the RTSP TCP
connection (RFC 2326 section 10.12, RTP payload format RFC 6184).

Methods: OPTIONS, DESCRIBE (SDP with one H.264 track, `sprop-parameter-sets` included), SETUP (only
`RTP/AVP/TCP;interleaved=...`; UDP gets 461 Unsupported Transport), PLAY, GET_PARAMETER and SET_PARAMETER
(keep-alives), TEARDOWN. With `credentials=(user, password)` every request but OPTIONS needs `Authorization: Basic`
(else 401 with `WWW-Authenticate: Basic realm="camera"`); put them in the URL: `rtsp://user:password@host:port/...`.

Each PLAYing client gets its own libx264 encoder (starting with a keyframe, SPS and PPS before every IDR, a keyframe
every `fps` frames); NAL units go out as single NAL unit packets or FU-A fragments, with 90 kHz timestamps and the
marker bit on the last packet of each frame, each RTP packet framed as `$`, channel, 2-byte length.

Read it with `av.open(camera.url, options={"rtsp_transport": "tcp"})`. With a protocol whitelist, the smallest that
works is `"tcp"`: RTP arrives interleaved inside the RTSP connection, so FFmpeg opens no rtp: or udp: URL.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np

from tools.cameras import H264_OPTIONS, MAX_HEADER_BYTES, CameraScene, LiveCamera, read_headers

logger = logging.getLogger(__name__)

RTP_PAYLOAD_TYPE = 96
RTP_CLOCK_HZ = 90_000
MAX_RTP_PAYLOAD = 1400
FU_A_TYPE = 28
SPS_TYPE, PPS_TYPE = 7, 8
SESSION_TIMEOUT_S = 60
METHODS = "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, SET_PARAMETER, TEARDOWN"
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    454: "Session Not Found",
    461: "Unsupported Transport",
    501: "Not Implemented",
}


# -------------------------------------------------------------------------------------------- H.264 and RTP


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B byte stream (start codes 00 00 01 or 00 00 00 01 removed)."""
    nals = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        start = data.find(b"\x00\x00\x01", begin)
        nal = data[begin : start if start >= 0 else len(data)].rstrip(b"\x00")  # zeros belong to the next start code
        if nal:
            nals.append(nal)
    return nals


def packetize_nal(nal: bytes, max_payload: int = MAX_RTP_PAYLOAD) -> list[bytes]:
    """RTP payloads for one NAL unit (RFC 6184): the NAL itself when it fits, else FU-A fragments."""
    if len(nal) <= max_payload:
        return [nal]
    indicator = (nal[0] & 0xE0) | FU_A_TYPE  # F and NRI of the NAL, type 28
    nal_type = nal[0] & 0x1F
    body = nal[1:]
    step = max_payload - 2
    chunks = [body[offset : offset + step] for offset in range(0, len(body), step)]
    payloads = []
    for number, chunk in enumerate(chunks):
        start_bit = 0x80 if number == 0 else 0
        end_bit = 0x40 if number == len(chunks) - 1 else 0
        payloads.append(bytes([indicator, start_bit | end_bit | nal_type]) + chunk)
    return payloads


def rtp_packet(
    payload: bytes, sequence: int, timestamp: int, ssrc: int, marker: bool, payload_type: int = RTP_PAYLOAD_TYPE
) -> bytes:
    """An RTP packet: version 2, no padding, extension or CSRC."""
    header = bytes([0x80, (0x80 if marker else 0) | payload_type])
    header += (sequence & 0xFFFF).to_bytes(2, "big") + (timestamp & 0xFFFFFFFF).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + payload


def interleaved(channel: int, packet: bytes) -> bytes:
    """An RTP packet framed for the RTSP connection: `$`, channel, 2-byte length."""
    return b"$" + bytes([channel]) + len(packet).to_bytes(2, "big") + packet


def h264_encoder(width: int, height: int, fps: float) -> Any:
    """A libx264 encoder (ultrafast, zerolatency, crf 18, yuv420p, a keyframe every `fps` frames) writing Annex-B
    with SPS and PPS before every IDR."""
    import av

    rate = max(round(fps), 1)
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, rate)
    encoder.framerate = Fraction(rate, 1)
    encoder.gop_size = rate
    encoder.options = dict(H264_OPTIONS)
    return encoder


def encode_nals(encoder: Any, picture: np.ndarray, pts: int) -> list[bytes]:
    """NAL units of one RGB picture (zerolatency: the encoder returns each frame at once)."""
    import av

    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    frame.pts = pts
    return [nal for packet in encoder.encode(frame) for nal in split_annexb(bytes(packet))]


def parameter_sets(scene: CameraScene, fps: float) -> tuple[bytes, bytes]:
    """The SPS and PPS every client encoder writes, taken from a throwaway encoder's first frame."""
    nals = encode_nals(h264_encoder(scene.width, scene.height, fps), scene.frame(0), 0)
    sps = next(nal for nal in nals if nal[0] & 0x1F == SPS_TYPE)
    pps = next(nal for nal in nals if nal[0] & 0x1F == PPS_TYPE)
    return sps, pps


# -------------------------------------------------------------------------------------------- the server


@dataclass
class _Client:
    """What one RTSP connection has set up."""

    connection: socket.socket
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    session: str = field(default_factory=lambda: secrets.token_hex(8))
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    first_sequence: int = field(default_factory=lambda: secrets.randbits(16))
    first_timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    channel: int | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    streaming: bool = False


class RtspCamera(LiveCamera):
    """RTSP camera at `rtsp://127.0.0.1:port/stream` (see the module docstring for what it speaks)."""

    scheme = "rtsp"
    path = "/stream"
    track = "trackID=0"

    def __init__(
        self,
        scene: CameraScene | None = None,
        fps: float = 10.0,
        port: int = 0,
        host: str = "127.0.0.1",
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(scene, fps=fps, port=port, host=host)
        self.credentials = credentials
        self._sps, self._pps = parameter_sets(self.scene, fps)

    def serve_client(self, connection: socket.socket) -> None:
        client = _Client(connection)
        reader = connection.makefile("rb")
        try:
            while self._answer_next(reader, client):
                pass
        finally:
            client.stopped.set()
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            with client.send_lock:  # the streaming thread is out of sendall before the base class closes the socket
                pass

    # -- requests

    def _answer_next(self, reader: BinaryIO, client: _Client) -> bool:
        """Read one request (skipping interleaved RTCP from the client) and answer it; False when done."""
        first = reader.read(1)
        while first == b"$":
            header = reader.read(3)
            if len(header) < 3:
                return False
            reader.read(int.from_bytes(header[1:3], "big"))
            first = reader.read(1)
        if not first:
            return False
        request_line = (first + reader.readline(MAX_HEADER_BYTES)).decode("latin-1").split()
        headers = read_headers(reader)
        body_length = int(headers.get("content-length", "0") or 0)
        if body_length:
            reader.read(body_length)
        if len(request_line) < 3:
            self._reply(client, 400, headers)
            return False
        method, uri = request_line[0], request_line[1]
        logger.debug("rtsp %s %s", method, uri)
        if method != "OPTIONS" and not self._authorized(headers):
            self._reply(client, 401, headers, {"WWW-Authenticate": 'Basic realm="camera"'})
            return True
        if method == "OPTIONS":
            self._reply(client, 200, headers, {"Public": METHODS})
        elif method == "DESCRIBE":
            self._describe(client, uri, headers)
        elif method == "SETUP":
            self._setup(client, headers)
        elif method in ("PLAY", "GET_PARAMETER", "SET_PARAMETER", "TEARDOWN"):
            return self._in_session(client, method, headers)
        else:
            self._reply(client, 501, headers)
        return True

    def _describe(self, client: _Client, uri: str, headers: dict[str, str]) -> None:
        if urlsplit(uri).path.rstrip("/") != self.path:
            self._reply(client, 404, headers)
            return
        extra = {"Content-Base": f"{self.url}/", "Content-Type": "application/sdp"}
        self._reply(client, 200, headers, extra, self.sdp().encode())

    def _setup(self, client: _Client, headers: dict[str, str]) -> None:
        transport = headers.get("transport", "")
        match = re.search(r"interleaved=(\d+)", transport)
        if "RTP/AVP/TCP" not in transport.upper() or match is None:
            self._reply(client, 461, headers)
            return
        client.channel = int(match.group(1))
        channels = f"{client.channel}-{client.channel + 1}"
        extra = {
            "Transport": f"RTP/AVP/TCP;unicast;interleaved={channels};ssrc={client.ssrc:08X}",
            "Session": f"{client.session};timeout={SESSION_TIMEOUT_S}",
        }
        self._reply(client, 200, headers, extra)

    def _in_session(self, client: _Client, method: str, headers: dict[str, str]) -> bool:
        """PLAY, the keep-alives and TEARDOWN; False after TEARDOWN."""
        if client.channel is None or headers.get("session", "").split(";")[0] != client.session:
            self._reply(client, 454, headers)
            return True
        extra = {"Session": client.session}
        if method == "PLAY":
            extra["Range"] = "npt=0.000-"
            extra["RTP-Info"] = (
                f"url={self.url}/{self.track};seq={client.first_sequence};rtptime={client.first_timestamp}"
            )
        self._reply(client, 200, headers, extra)
        if method == "PLAY" and not client.streaming:
            client.streaming = True
            self._start_thread(self._stream, client)
        return method != "TEARDOWN"

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.credentials is None:
            return True
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return hmac.compare_digest(encoded.strip(), expected)

    def _reply(
        self,
        client: _Client,
        status: int,
        request_headers: dict[str, str],
        extra: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        lines = [f"RTSP/1.0 {status} {REASONS[status]}", f"CSeq: {request_headers.get('cseq', '0')}"]
        lines += ["Server: masenet-fake-camera", *(f"{name}: {value}" for name, value in (extra or {}).items())]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        with client.send_lock:
            client.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def sdp(self) -> str:
        """The session description: one H.264 track, payload type 96, with its parameter sets."""
        sprop = ",".join(base64.b64encode(nal).decode() for nal in (self._sps, self._pps))
        lines = [
            "v=0",
            f"o=- 0 0 IN IP4 {self.host}",
            "s=MASENet fake camera",
            f"c=IN IP4 {self.host}",
            "t=0 0",
            "a=control:*",
            "a=range:npt=0-",
            f"m=video 0 RTP/AVP {RTP_PAYLOAD_TYPE}",
            f"a=rtpmap:{RTP_PAYLOAD_TYPE} H264/{RTP_CLOCK_HZ}",
            f"a=fmtp:{RTP_PAYLOAD_TYPE} packetization-mode=1;profile-level-id={self._sps[1:4].hex().upper()};"
            f"sprop-parameter-sets={sprop}",
            f"a=framerate:{self.fps:g}",
            f"a=control:{self.track}",
        ]
        return "\r\n".join(lines) + "\r\n"

    # -- media

    def _stream(self, client: _Client) -> None:
        """Encode and send frames at `fps` until the client stops or goes away."""
        assert client.channel is not None
        encoder = h264_encoder(self.scene.width, self.scene.height, self.fps)
        sequence = client.first_sequence
        try:
            for count, index in enumerate(self.frame_indices()):
                if client.stopped.is_set():
                    return
                timestamp = client.first_timestamp + round(count * RTP_CLOCK_HZ / self.fps)
                payloads = [
                    payload
                    for nal in encode_nals(encoder, self.scene.frame(index), count)
                    for payload in packetize_nal(nal)
                ]
                packets = []
                for number, payload in enumerate(payloads):
                    marker = number == len(payloads) - 1
                    packet = rtp_packet(payload, sequence, timestamp, client.ssrc, marker)
                    packets.append(interleaved(client.channel, packet))
                    sequence += 1
                with client.send_lock:
                    client.connection.sendall(b"".join(packets))
                self.count_frame()
        except OSError as error:
            logger.debug("rtsp client went away while streaming: %s", error)
