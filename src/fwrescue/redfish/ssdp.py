"""Redfish SSDP announcements (DSP0266 "Discovery"): agents say where their service root is.

An agent's :class:`SsdpAnnouncer` multicasts ``NOTIFY * HTTP/1.1`` with
``NT: urn:dmtf-org:service:redfish-rest:1``, ``NTS: ssdp:alive``, ``USN`` and ``AL`` (and
``LOCATION``) naming its service root, at start and every ``interval_s``. The console's
:class:`SsdpListener` parses them strictly (:func:`parse_notify`) and reports each valid one.

Announcements are unauthenticated hints: :func:`parse_notify` accepts only a service root
whose host is the datagram's own source address, and the console adds only agents inside
its configured networks; it then authenticates to them like any configured agent. Real
deployments use the standard group 239.255.255.250:1900; tests use a group of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["SERVICE_TYPE", "Announcement", "SsdpAnnouncer", "SsdpListener", "notify_message",
           "parse_notify"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "urn:dmtf-org:service:redfish-rest:1"
MAX_DATAGRAM = 2048
_USN = re.compile(r"^uuid:[0-9a-fA-F-]{36}::urn:dmtf-org:service:redfish-rest:1(:\d+)?$")


@dataclass(frozen=True)
class Announcement:
    usn: str
    service_root: str  # e.g. http://10.0.0.7:8443/redfish/v1/

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.service_root)
        return f"{parts.scheme}://{parts.netloc}"


def notify_message(service_root: str, uuid: str, group: str, port: int,
                   max_age: int = 1800) -> bytes:
    return (f"NOTIFY * HTTP/1.1\r\nHOST: {group}:{port}\r\n"
            f"CACHE-CONTROL: max-age={max_age}\r\nAL: {service_root}\r\n"
            f"LOCATION: {service_root}\r\nNT: {SERVICE_TYPE}\r\nNTS: ssdp:alive\r\n"
            f"USN: uuid:{uuid}::{SERVICE_TYPE}:1\r\n\r\n").encode("ascii")


def parse_notify(data: bytes, source_ip: str) -> Announcement:
    """A valid ``ssdp:alive`` for a Redfish service whose host is ``source_ip``; ValueError
    (with the reason) for anything else."""
    if len(data) > MAX_DATAGRAM:
        raise ValueError("datagram too large")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError("not ASCII") from e
    lines = text.split("\r\n")
    if lines[0] != "NOTIFY * HTTP/1.1":
        raise ValueError("not an SSDP NOTIFY")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("malformed header line")
        headers[name.strip().upper()] = value.strip()
    if headers.get("NT") != SERVICE_TYPE or headers.get("NTS") != "ssdp:alive":
        raise ValueError("not a Redfish ssdp:alive")
    usn, root = headers.get("USN", ""), headers.get("AL") or headers.get("LOCATION", "")
    if not _USN.match(usn):
        raise ValueError("bad USN")
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or parts.path != "/redfish/v1/" or (
            parts.query or parts.fragment or parts.username or parts.password):
        raise ValueError("AL must be http(s)://HOST:PORT/redfish/v1/")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError("bad port in AL") from e
    if parts.hostname != source_ip or port is None:
        raise ValueError("AL must name the sender's own address and a port")
    return Announcement(usn=usn, service_root=root)


def _sender(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.bind((interface, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _member(group: str, port: int, interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((group, port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(group) + socket.inet_aton(interface))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SsdpAnnouncer:
    """Multicasts this agent's ``ssdp:alive`` at start and every ``interval_s``."""

    def __init__(self, *, service_root: str, uuid: str, group: str, port: int,
                 interface: str, interval_s: float = 30.0) -> None:
        if not ipaddress.ip_address(group).is_multicast:
            raise ValueError(f"SSDP group must be multicast, got {group}")
        self._message = notify_message(service_root, uuid, group, port)
        self._dest = (group, port)
        self._interface = interface
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        sock = _sender(self._interface)
        try:
            while True:
                with contextlib.suppress(OSError):  # a down link must not stop the agent
                    sock.sendto(self._message, self._dest)
                await asyncio.sleep(self._interval)
        finally:
            sock.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self._on = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._on(data, str(addr[0]))


class SsdpListener:
    """Joins the group and calls ``on_announce`` for every valid announcement."""

    def __init__(self, *, group: str, port: int, interface: str,
                 on_announce: Callable[[Announcement], None]) -> None:
        self._group, self._port, self._interface = group, port, interface
        self._on_announce = on_announce
        self._transport: asyncio.DatagramTransport | None = None
        self.refused = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = _member(self._group, self._port, self._interface)
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self._datagram), sock=sock)

    def _datagram(self, data: bytes, source: str) -> None:
        try:
            announcement = parse_notify(data, source)
        except ValueError as e:
            self.refused += 1
            log.debug("SSDP datagram from %s ignored: %s", source, e)
            return
        self._on_announce(announcement)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
