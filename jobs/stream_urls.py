"""Which camera URLs a stream may open, and how FFmpeg is told to open them.

A stream URL comes from a client and is opened by a worker inside the service's network, so it is checked
twice (by the API when the stream is created, by the worker before every connection) against:

    scheme     rtsp, rtsps, http or https only; FFmpeg's protocol whitelist is set to the scheme's own
               protocols, so no `file:`, `concat:`, `subfile:`, `data:` or the like is reachable, not even
               through a playlist; HTTP redirects are not followed (they could lead past the address check)
    address    every address the host resolves to must be allowed: link-local (169.254.0.0/16, fe80::/10),
               cloud metadata addresses, unspecified, multicast and broadcast addresses are always refused;
               the rest must match MASENET_STREAM_ALLOW (addresses, CIDRs or host names; `*` allows every
               address not always refused). The default allows the private networks cameras live on (RFC 1918
               and IPv6 unique local addresses), not loopback and not the internet.

Credentials in a URL are used to connect but never logged or returned: `redact` removes them (and query values,
which often carry tokens) from every URL the service shows.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
FFMPEG_PROTOCOLS = {  # FFmpeg's protocol_whitelist per scheme: only what that scheme itself needs
    "rtsp": "rtsp,tcp",  # RTP comes interleaved in the RTSP connection (rtsp_transport=tcp): no rtp:, no udp:
    "rtsps": "rtsps,rtsp,tls,tcp",
    "http": "http,tcp",
    "https": "https,http,tcp,tls",
}
DEFAULT_ALLOW = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network", unspecified
        "169.254.0.0/16",  # link-local, among it 169.254.169.254 (AWS, GCP, Azure, OpenStack metadata)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)
MAX_URL_LENGTH = 2048
# FFmpeg probes 5 s of a live input by default before the first frame (and then hands those frames out late);
# half a second finds the video stream of RTSP (its SDP names the codec), MJPEG and MPEG-TS cameras.
LIVE_PROBE = {"analyzeduration": "500000", "probesize": "1000000", "fflags": "nobuffer"}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class StreamUrlError(ValueError):
    """A URL the service will not open; the message says why without echoing secrets."""


@dataclass(frozen=True)
class AllowList:
    """MASENET_STREAM_ALLOW parsed: networks, host names, or everything (`*`)."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    everything: bool = False

    @classmethod
    def parse(cls, text: str) -> AllowList:
        networks, hosts, everything = [], set(), False
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            if entry == "*":
                everything = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts), everything)

    def allows(self, host: str, address: Address) -> bool:
        if self.everything or host.lower().rstrip(".") in self.hosts:
            return True
        return any(address.version == network.version and address in network for network in self.networks)


@dataclass(frozen=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def ffmpeg_options(self) -> dict[str, str]:
        return ffmpeg_options(self.scheme)


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (blocking; run it off the event loop)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise StreamUrlError(f"the host {host!r} does not resolve: check the camera's address") from exc
    return sorted({str(info[4][0]) for info in infos})


def check_url(url: str, allow: AllowList, resolver: Resolver = resolve) -> CheckedUrl:
    """The URL split and resolved, or StreamUrlError saying what to fix."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise StreamUrlError(f"the url must be a camera URL of at most {MAX_URL_LENGTH} characters")
    if any(ord(character) < 33 or ord(character) == 127 for character in url):
        raise StreamUrlError("the url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise StreamUrlError("the url is malformed (check the host and the port)") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = scheme or "none"
        raise StreamUrlError(f"the url's scheme {shown!r} is not served: use one of {', '.join(SCHEMES)}")
    host = parts.hostname
    if not host:
        raise StreamUrlError("the url has no host: write it as rtsp://host[:port]/path")
    port = port or DEFAULT_PORTS[scheme]
    addresses = resolver(host, port)
    if not addresses:
        raise StreamUrlError(f"the host {host!r} does not resolve: check the camera's address")
    for text in addresses:
        address = _plain(ipaddress.ip_address(text.split("%", 1)[0]))
        refused = next((network for network in ALWAYS_REFUSED if address in network), None)
        if refused is not None:
            raise StreamUrlError(
                f"the host {host!r} is at {address}, a link-local, metadata or special address that streams may "
                "never reach"
            )
        if not allow.allows(host, address):
            raise StreamUrlError(
                f"the host {host!r} ({address}) is not in MASENET_STREAM_ALLOW: ask the operator to allow the "
                "camera's address or network"
            )
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it stands for."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ffmpeg_options(scheme: str) -> dict[str, str]:
    """Options for FFmpeg's open: the scheme's protocols only, RTSP over TCP, HTTP without redirects."""
    options = {"protocol_whitelist": FFMPEG_PROTOCOLS[scheme], **LIVE_PROBE}
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"
    else:
        options["max_redirects"] = "0"  # a redirect could lead anywhere: the URL given is the one opened
    return options


def redact(url: str) -> str:
    """The URL without its credentials and query values: safe to log and to return."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if parts.username is not None or parts.password is not None else "") + host + port
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str, urls: Iterable[str]) -> str:
    """`text` with every occurrence of the given URLs (and their credentials) replaced by their redacted forms."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact(url))
        parts = urlsplit(url)
        for secret in (parts.password, parts.username):
            if secret:
                text = text.replace(secret, "***")
    return text
