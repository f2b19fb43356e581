"""A private NATS cluster for the demo, the tests and the bench: real ``nats-server``
processes, never a shared or external server.

:class:`NatsCluster` writes one config file per node into a folder of its own (client
port, cluster port, monitoring port, routes to every other node), starts the servers,
waits until every node has a route to every other one (``/routez`` on its monitoring
port) and kills them again on :meth:`stop` (each by its own pid) or on leaving the
``with`` block. Nodes listen on loopback by default; ``hosts`` puts node *i* on address
``hosts[i]`` and ``exec_prefix`` (e.g. ``["ip", "netns", "exec", "ns"]``) runs them, and
the readiness probe, inside a network namespace. Every node also accepts leafnode
connections; ``NatsCluster(root, size=1, leaf_of=cluster)`` is a leaf node of
``cluster`` (a site's own server, e.g. where its console sits), ready once its leafnode
connection is up (``/leafz``). ``users`` (name, password) and ``nkey_users`` (public user
nkeys, ``U…``) make the servers require credentials.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from fwrescue.errors import ConfigError

__all__ = ["NatsCluster", "NatsNode", "nats_server_binary"]

READY_TIMEOUT_S = 20.0
_PROBE = ("import json,sys,urllib.request;"
          "print(json.load(urllib.request.urlopen(sys.argv[1], timeout=2))[sys.argv[2]])")


def nats_server_binary() -> str:
    """The ``nats-server`` executable (Debian package ``nats-server``); ConfigError if none."""
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server is not installed (make sysdeps installs Debian's "
                          "nats-server package)")
    return found


def _free_ports(host: str, count: int) -> tuple[int, ...]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            socks.append(sock)
        return tuple(int(s.getsockname()[1]) for s in socks)
    finally:
        for sock in socks:
            sock.close()


@dataclass
class NatsNode:
    name: str
    host: str
    client_port: int
    cluster_port: int
    http_port: int
    leaf_port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


class NatsCluster:
    """``size`` routed ``nats-server`` nodes (see the module docstring)."""

    def __init__(self, root: Path, *, size: int = 3, hosts: Sequence[str] | None = None,
                 exec_prefix: Sequence[str] = (), fixed_ports: bool = False,
                 users: Sequence[tuple[str, str]] = (), nkey_users: Sequence[str] = (),
                 max_payload: int = 4096,
                 tls: tuple[Path, Path] | None = None,
                 leaf_of: NatsCluster | None = None) -> None:
        if not 1 <= size <= 9:
            raise ConfigError("a test cluster has 1..9 nodes", size=size)
        self.root = root
        self.hosts = list(hosts) if hosts else ["127.0.0.1"] * size
        if len(self.hosts) != size:
            raise ConfigError("one host address per node", size=size, hosts=len(self.hosts))
        self.exec_prefix = list(exec_prefix)
        self.users = list(users)
        self.nkey_users = list(nkey_users)  # public user nkeys (U…) the servers accept
        self.max_payload = max_payload
        self.tls = tls  # (certificate, key): clients must then speak TLS
        # A leaf node (e.g. one per site, the console's): no cluster of its own, a
        # leafnode connection to every node of ``leaf_of`` instead.
        self.leaf_of = leaf_of
        self.nodes: list[NatsNode] = []
        self._logs: list[IO[bytes]] = []
        for i, host in enumerate(self.hosts):
            # In a namespace of the test's own every port is free; on loopback, ask the OS.
            ports = (4222, 6222, 8222, 7422) if fixed_ports else _free_ports(host, 4)
            name = f"{'leaf' if leaf_of else 'n'}{i + 1}"
            self.nodes.append(NatsNode(name, host, ports[0], ports[1], ports[2], ports[3],
                                       config=root / f"{name}.conf"))

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> NatsCluster:
        """Write the configs, start every node, wait for the full route mesh."""
        binary = nats_server_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        routes = [f"nats-route://{n.host}:{n.cluster_port}" for n in self.nodes]
        try:
            for node in self.nodes:
                node.config.write_text(self._config(node, routes))
                self._logs.append(open(self.root / f"{node.name}.log", "wb"))  # noqa: SIM115
                node.process = subprocess.Popen(
                    [*self.exec_prefix, binary, "-c", str(node.config)],
                    stdout=subprocess.DEVNULL, stderr=self._logs[-1])
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self, node: NatsNode, routes: list[str]) -> str:
        others = [r for r in routes if not r.endswith(f"{node.host}:{node.cluster_port}")]
        auth = ""
        if self.users or self.nkey_users:
            entries = [f"{{user: {json.dumps(u)}, password: {json.dumps(p)}}}"
                       for u, p in self.users]
            entries += [f"{{nkey: {json.dumps(k)}}}" for k in self.nkey_users]
            auth = f"authorization {{ users: [ {', '.join(entries)} ] }}\n"
        if self.tls is not None:
            cert, key = self.tls
            auth += (f"tls {{ cert_file: {json.dumps(str(cert))}, "
                     f"key_file: {json.dumps(str(key))} }}\n")
        head = (f"server_name: {node.name}\n"
                f"listen: {node.host}:{node.client_port}\n"
                f"http: {node.host}:{node.http_port}\n"
                f"max_payload: {self.max_payload}\n"
                f"{auth}")
        if self.leaf_of is not None:
            hubs = ", ".join(json.dumps(f"nats-leaf://{n.host}:{n.leaf_port}")
                             for n in self.leaf_of.nodes)
            return head + f"leafnodes {{ remotes: [ {{ urls: [{hubs}] }} ] }}\n"
        return (head +
                f"leafnodes {{ listen: {node.host}:{node.leaf_port} }}\n"
                f"cluster {{\n  name: fwrescue\n  listen: {node.host}:{node.cluster_port}\n"
                f"  routes: [{', '.join(others)}]\n}}\n")

    def _routes(self, node: NatsNode) -> int:
        """Routes to other nodes (for a leaf node: its leafnode connections)."""
        page, key = ("leafz", "leafnodes") if self.leaf_of else ("routez", "num_routes")
        url = f"http://{node.host}:{node.http_port}/{page}"
        if self.exec_prefix:
            out = subprocess.run([*self.exec_prefix, sys.executable, "-c", _PROBE, url, key],
                                 capture_output=True, text=True, timeout=10)
            return int(out.stdout.strip()) if out.returncode == 0 else -1
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(json.load(response)[key])

    def wait_ready(self, nodes: Sequence[NatsNode] | None = None,
                   timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until each running node routes to every other running node."""
        deadline = time.monotonic() + timeout
        live = [n for n in (nodes or self.nodes) if self.alive(n)]
        want = 1 if self.leaf_of else len([n for n in self.nodes if self.alive(n)]) - 1
        pending = list(live)
        while pending:
            node = pending[0]
            if node.process is not None and node.process.poll() is not None:
                log = (self.root / f"{node.name}.log").read_text(errors="replace")[-2000:]
                raise ConfigError("nats-server exited", node=node.name, log=log)
            with contextlib.suppress(OSError, ValueError, KeyError,
                                     subprocess.TimeoutExpired):
                if self._routes(node) >= want:
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise ConfigError("the NATS cluster did not form its routes in time",
                                  node=node.name, timeout=timeout)
            time.sleep(0.05)

    @staticmethod
    def alive(node: NatsNode) -> bool:
        return node.process is not None and node.process.poll() is None

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (by its pid) and reap it."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            process = node.process
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
