"""Which camera URLs a stream may open: schemes, always-refused addresses, the allow list, redaction."""

from __future__ import annotations

import pytest

from jobs.stream_urls import (
    DEFAULT_ALLOW,
    AllowList,
    StreamUrlError,
    check_url,
    ffmpeg_options,
    redact,
    redact_text,
)

PRIVATE = AllowList.parse(DEFAULT_ALLOW)


def resolver(addresses: dict[str, list[str]]):
    """A name service for the tests: host -> addresses (a literal address resolves to itself)."""

    def resolve(host: str, port: int) -> list[str]:
        return addresses.get(host, [host])

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "concat:rtsp://10.0.0.2/a|file:///etc/passwd",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "data:video/mp4;base64,AAAA",
        "ftp://10.0.0.2/video.ts",
        "udp://10.0.0.2:5000",
        "/etc/passwd",
    ],
)
def test_only_camera_schemes_are_accepted(url: str) -> None:
    with pytest.raises(StreamUrlError, match="scheme"):
        check_url(url, AllowList.parse("*"), resolver({}))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("169.254.169.254", "169.254.169.254"),
        ("metadata.google.internal", "169.254.169.254"),
        ("camera.example", "169.254.10.1"),
        ("aliyun", "100.100.100.200"),
        ("v6-metadata", "fd00:ec2::254"),
        ("v6-link-local", "fe80::1"),
        ("mapped", "::ffff:169.254.169.254"),
        ("zero", "0.0.0.0"),
        ("multicast", "239.1.2.3"),
    ],
)
def test_link_local_and_metadata_addresses_are_refused_even_when_everything_is_allowed(host: str, address: str) -> None:
    with pytest.raises(StreamUrlError, match="may never reach"):
        check_url(f"http://{host}/video", AllowList.parse("*"), resolver({host: [address]}))


def test_every_resolved_address_must_pass() -> None:
    lookup = resolver({"dual.example": ["10.0.0.5", "169.254.169.254"]})
    with pytest.raises(StreamUrlError):
        check_url("rtsp://dual.example/stream", AllowList.parse("*"), lookup)


def test_the_default_allows_private_networks_only() -> None:
    assert check_url("rtsp://192.168.1.20:554/stream1", PRIVATE, resolver({})).port == 554
    assert check_url("rtsp://10.2.3.4/stream1", PRIVATE, resolver({})).scheme == "rtsp"
    assert check_url("http://[fd12::5]/video.mjpg", PRIVATE, resolver({})).port == 80
    for url in ("rtsp://127.0.0.1/stream", "http://8.8.8.8/video", "rtsp://[::1]/stream"):
        with pytest.raises(StreamUrlError, match="MASENET_STREAM_ALLOW"):
            check_url(url, PRIVATE, resolver({}))


def test_allow_list_takes_addresses_networks_and_host_names() -> None:
    allow = AllowList.parse("127.0.0.1, 203.0.113.0/24, cam.example.org")
    lookup = resolver({"cam.example.org": ["198.51.100.7"], "other.example.org": ["198.51.100.8"]})
    assert check_url("http://127.0.0.1:8080/video.mjpg", allow, lookup).port == 8080
    assert check_url("rtsps://203.0.113.9/live", allow, lookup).port == 322
    assert check_url("https://CAM.example.org/live.ts", allow, lookup).host == "cam.example.org"
    with pytest.raises(StreamUrlError, match="not in MASENET_STREAM_ALLOW"):
        check_url("https://other.example.org/live.ts", allow, lookup)


@pytest.mark.parametrize(
    "url", ["rtsp://", "rtsp:///path", "http://host:99999/x", "rtsp://10.0.0.1/a b", "rtsp://10.0.0.1/\nx", ""]
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(StreamUrlError):
        check_url(url, AllowList.parse("*"), resolver({}))


def test_a_host_that_does_not_resolve_is_refused_with_its_name() -> None:
    with pytest.raises(StreamUrlError, match="does not resolve"):
        check_url("rtsp://no-such-camera.invalid/stream", AllowList.parse("*"))


def test_ffmpeg_is_held_to_the_schemes_protocols() -> None:
    assert "file" not in ffmpeg_options("rtsp")["protocol_whitelist"].split(",")
    assert ffmpeg_options("rtsp")["rtsp_transport"] == "tcp"
    assert ffmpeg_options("http")["protocol_whitelist"] == "http,tcp"
    assert ffmpeg_options("http")["max_redirects"] == "0"
    for scheme in ("rtsp", "rtsps", "http", "https"):
        protocols = set(ffmpeg_options(scheme)["protocol_whitelist"].split(","))
        assert protocols.isdisjoint({"file", "concat", "subfile", "data", "pipe", "crypto", "hls"})


def test_redaction_removes_credentials_and_query_values() -> None:
    url = "rtsp://admin:s3cret@10.0.0.9:554/Streaming/Channels/101?token=abc&channel=1"
    shown = redact(url)
    assert shown == "rtsp://***@10.0.0.9:554/Streaming/Channels/101?token=***&channel=***"
    assert "s3cret" not in shown and "admin" not in shown and "abc" not in shown
    assert redact("http://[fd12::5]:8080/video.mjpg") == "http://[fd12::5]:8080/video.mjpg"
    message = redact_text(f"could not open {url} as admin / s3cret", [url])
    assert "s3cret" not in message and "admin" not in message
