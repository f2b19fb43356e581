"""A multi-host lab in network namespaces: each BMC its own network stack and address.

:class:`Lab` (root only) creates, with ``ip``:

* a **core** namespace: one Linux bridge per segment (``198.18.<s>.0/24``, the core
  holds ``.1`` on each and routes unicast between them; multicast is not routed, TTL 1,
  so it never crosses a segment) and loopback addresses ``198.18.0.1-3`` for the NATS
  cluster, reachable from every segment;
* one namespace per host, its ``eth0`` on one segment, default route via the core.

A host's link is either a veth pair (the core end enslaved to the segment bridge) or,
with ``impair=Impairment(...)``, two TAP devices joined by :class:`ImpairedRelay`: a
userspace relay that delays every frame by a fixed time and drops each with a fixed
probability, per direction. This kernel has no ``sch_netem`` and no ``act_gact``/``u32``
(so no ``tc`` random drop), and ``tbf``'s ``latency`` only bounds queueing delay; the relay
is real packet-level delay and loss of every Ethernet frame (TCP, UDP, ARP, IGMP)
between the host's stack and the bridge. TAP devices without a virtio header are handed
only complete, segmented, checksummed frames by the kernel, so the relay needs no
offload handling.

Addresses are from 198.18.0.0/15 (RFC 2544 benchmarking) and exist only inside the lab's
own namespaces; everything is deleted again by :meth:`Lab.close`.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import random
import secrets
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Host", "ImpairedRelay", "Impairment", "Lab", "is_root"]

NATS_HOSTS = ("198.18.0.1", "198.18.0.2", "198.18.0.3")
_TUNSETIFF, _IFF_TAP, _IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def is_root() -> bool:
    return os.geteuid() == 0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass(frozen=True)
class Impairment:
    delay_s: float  # one-way, each direction
    loss: float  # drop probability per frame, each direction
    seed: int = 1


@dataclass
class Host:
    name: str
    netns: str
    address: str
    segment: int
    core_port: str  # the core-side interface (veth end or TAP), for cutting the link

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class ImpairedRelay:
    """Copies Ethernet frames between two TAP fds, delayed and randomly dropped."""

    def __init__(self, fd_host: int, fd_core: int, impairment: Impairment) -> None:
        self._fds = (fd_host, fd_core)
        self._impairment = impairment
        self._rng = random.Random(impairment.seed)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.cut = False  # while set, every frame is dropped (a cable pulled)
        self.forwarded = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="impaired-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending: list[tuple[float, int, int, bytes]] = []  # (due, seq, fd, frame)
        seq = 0
        peer = {self._fds[0]: self._fds[1], self._fds[1]: self._fds[0]}
        while not self._stop:
            timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else 0.5
            readable, _, _ = select.select([*self._fds, self._wake_r], [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                if fd == self._wake_r:
                    continue
                try:
                    frame = os.read(fd, 65536)
                except OSError:
                    continue
                if self.cut or self._rng.random() < self._impairment.loss:
                    self.dropped += 1
                    continue
                seq += 1
                heapq.heappush(pending, (now + self._impairment.delay_s, seq, peer[fd], frame))
            while pending and pending[0][0] <= time.monotonic():
                _, _, fd, frame = heapq.heappop(pending)
                with contextlib.suppress(OSError):
                    os.write(fd, frame)
                    self.forwarded += 1

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (*self._fds, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Lab:
    """Namespaces, bridges and links of one test (see the module docstring)."""

    segments: int = 2
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: list[Host] = field(default_factory=list)
    relays: list[ImpairedRelay] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)  # created in this (the test's) netns

    @property
    def core(self) -> str:
        return f"fwr{self.tag}-core"

    @property
    def core_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.core]

    def open(self) -> Lab:
        try:
            self._add_netns(self.core)
            ip("-n", self.core, "link", "set", "lo", "up")
            for address in NATS_HOSTS:
                ip("-n", self.core, "addr", "add", f"{address}/32", "dev", "lo")
            subprocess.run([*self.core_prefix, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                           check=True, capture_output=True, timeout=20)
            for s in range(1, self.segments + 1):
                bridge = f"br{s}"
                ip("-n", self.core, "link", "add", bridge, "type", "bridge",
                   "mcast_snooping", "0")
                ip("-n", self.core, "addr", "add", f"198.18.{s}.1/24", "dev", bridge)
                ip("-n", self.core, "link", "set", bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    def add_host(self, segment: int, *, impair: Impairment | None = None) -> Host:
        index = len(self.hosts) + 1
        netns = f"fwr{self.tag}-h{index}"
        address = f"198.18.{segment}.{10 + index}"
        self._add_netns(netns)
        inner, outer = f"fwr{self.tag}i{index}", f"fwr{self.tag}o{index}"
        self._links += [inner, outer]  # deleted in close() if a step below fails
        if impair is None:
            ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            ip("link", "set", inner, "netns", netns)
            ip("link", "set", outer, "netns", self.core)
        else:
            fd_inner = _open_tap(inner)
            try:
                fd_outer = _open_tap(outer)
            except OSError:
                os.close(fd_inner)
                raise
            self.relays.append(ImpairedRelay(fd_inner, fd_outer, impair))
            ip("link", "set", inner, "netns", netns)
            ip("link", "set", outer, "netns", self.core)
        ip("-n", netns, "link", "set", inner, "name", "eth0")
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "route", "add", "default", "via", f"198.18.{segment}.1")
        ip("-n", self.core, "link", "set", outer, "master", f"br{segment}")
        ip("-n", self.core, "link", "set", outer, "up")
        host = Host(name=f"h{index}", netns=netns, address=address, segment=segment,
                    core_port=outer)
        self.hosts.append(host)
        return host

    def set_link(self, host: Host, up: bool) -> None:
        """Cut (``up=False``) or restore a host's link at the core end, like a cable."""
        ip("-n", self.core, "link", "set", host.core_port, "up" if up else "down")

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        self.relays.clear()
        for name in reversed(self._namespaces):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", name)
        self._namespaces.clear()
        for link in self._links:  # only left here if moving it into its namespace failed
            if os.path.exists(f"/sys/class/net/{link}"):
                with contextlib.suppress(subprocess.CalledProcessError):
                    ip("link", "del", link)
        self._links.clear()

    def __enter__(self) -> Lab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
