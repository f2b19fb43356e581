"""``fwrescue console``: run the console; ``fwrescue console status --json``: read its state.

``fwrescue console --repo DIR --state DIR --trust KEYS [--listen HOST:PORT]
[--agent URL,USER,PASSWORD …] [--agents-file FILE]`` runs the repository donor, the
inventory, the policy desk, the dashboard and ``/metrics`` in one aiohttp application. On
first start (no console accounts yet) it creates the operator account ``admin`` with a random
password, printed once and kept in ``STATE/admin-password`` (mode 0600).

``fwrescue console status --state DIR --json`` prints the fleet overview and rollouts from
the database (works whether or not the console is running).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from fwrescue.agent.lifecycle import wait_for_termination

__all__ = ["register_console_commands"]

_MAX_AGENTS_FILE = 1 << 20


def register_console_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("console", help="run the fleet console (or: console status)")
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    p.add_argument("--repo", type=Path, help="folder of *.fwpkg packages to donate")
    p.add_argument("--state", type=Path, default=Path("console-state"))
    p.add_argument("--trust", type=Path, action="append", default=[],
                   help="trusted release public key file or folder (repeatable)")
    p.add_argument("--listen", default="127.0.0.1:8600", help="dashboard HOST:PORT")
    p.add_argument("--agent", action="append", default=[], metavar="URL,USER,PASSWORD",
                   help="an agent's Redfish service to watch (repeatable)")
    p.add_argument("--agents-file", type=Path, help="one URL,USER,PASSWORD per line")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between full re-reads")
    p.add_argument("--keep-operations", type=int, default=50,
                   help="retention: finished operations kept per node")
    p.add_argument("--retention-days", type=float, default=30.0,
                   help="retention: finished operations older than this are dropped")
    p.add_argument("--agent-ca", type=Path, default=None,
                   help="PEM bundle of the agents' (self-signed) Redfish certificates")
    p.add_argument("--no-verify-agents", action="store_true",
                   help="do not verify agents' TLS certificates (lab use only)")
    p.add_argument("--discover", metavar="GROUP:PORT", default=None,
                   help="watch agents announcing themselves (Redfish SSDP), e.g. "
                        "239.255.255.250:1900")
    p.add_argument("--discover-network", action="append", default=[], metavar="CIDR",
                   help="believe announcements only from these networks (repeatable)")
    p.add_argument("--discover-credentials", type=Path, metavar="FILE",
                   help="USER,PASSWORD the console uses on discovered agents")
    p.add_argument("--group", default="239.255.77.77")
    p.add_argument("--port", type=int, default=17700)
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--transfer-host", default=None)
    p.add_argument("--transfer-port", type=int, default=0)
    p.add_argument("--fleet-key-file", type=Path, default=None)
    p.add_argument("--id", default="console")
    from fwrescue.trust.fleet_ca_cli import add_transfer_tls_arguments

    add_transfer_tls_arguments(p)  # the repository donor's transfer plane (with --repo)
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.set_defaults(func=_cmd_console)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _endpoints(args: argparse.Namespace) -> list[Any]:
    from fwrescue.console.inventory import AgentEndpoint

    lines = list(args.agent)
    if args.agents_file is not None:
        text = args.agents_file.read_text(encoding="utf-8")[:_MAX_AGENTS_FILE]
        lines += [line for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    return [AgentEndpoint.parse(line) for line in lines]


def _discovery(args: argparse.Namespace) -> Any:
    import ipaddress

    from fwrescue.console.app import DiscoverySettings

    if args.discover is None:
        return None
    group, sep, port = args.discover.rpartition(":")
    if not sep or not port.isdigit() or not ipaddress.ip_address(group).is_multicast:
        raise ValueError(f"--discover must be MULTICAST-GROUP:PORT, got {args.discover!r}")
    if not args.discover_network or args.discover_credentials is None:
        raise ValueError("--discover needs --discover-network and --discover-credentials")
    for net in args.discover_network:
        ipaddress.ip_network(net, strict=False)
    user, sep, password = args.discover_credentials.read_text(
        encoding="utf-8")[:4096].strip().partition(",")
    if not sep or not user or not password:
        raise ValueError("--discover-credentials file must hold USER,PASSWORD")
    return DiscoverySettings(group=group, port=int(port), interface=args.interface,
                             networks=tuple(args.discover_network), user=user,
                             password=password)


def _cmd_console(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(args)
    if args.repo is None or not args.trust:
        return _fail("console needs --repo and at least one --trust")
    if not 1 <= args.keep_operations <= 100_000 or not 0 < args.retention_days <= 3650:
        return _fail("--keep-operations must be 1..100000 and --retention-days 0..3650")
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        return _fail(f"--listen must be HOST:PORT, got {args.listen!r}")
    try:
        endpoints = _endpoints(args)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    try:
        discovery = _discovery(args)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    from fwrescue.config import parse_network
    from fwrescue.console.app import ConsoleSettings, new_password, start_console
    from fwrescue.console.inventory import InventorySettings

    settings_map = {
        "group": args.group, "port": args.port, "interface": args.interface,
        "transfer_host": args.transfer_host or args.interface,
        "transfer_port": args.transfer_port,
        "fleet_key_file": str(args.fleet_key_file) if args.fleet_key_file else None,
    }
    network = parse_network({k: v for k, v in settings_map.items() if v is not None},
                            Path.cwd())
    if args.repo is not None:
        import dataclasses

        from fwrescue.trust.fleet_ca_cli import transfer_tls_from_args

        network = dataclasses.replace(network, tls=transfer_tls_from_args(args, args.id))
    accounts: tuple[tuple[str, str, str], ...] = ()
    password_file = args.state / "admin-password"
    if not password_file.exists():
        args.state.mkdir(parents=True, exist_ok=True)
        password = new_password()
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        accounts = (("admin", password, "operator"),)
        print(f"console account: admin / {password} (kept in {password_file})", flush=True)
    settings = ConsoleSettings(
        repo=args.repo, state_dir=args.state, trust=tuple(args.trust), network=network,
        agents=tuple(endpoints),
        inventory=InventorySettings(poll_s=max(0.02, args.poll), agent_ca=args.agent_ca,
                                    verify_tls=not args.no_verify_agents,
                                    keep_operations=args.keep_operations,
                                    retention_s=args.retention_days * 86400.0),
        accounts=accounts, donor_id=args.id, discovery=discovery)

    async def run() -> None:
        runner, url, console = await start_console(settings, host, int(port_text))
        images = console.donor.image_count if console.donor else 0
        print(f"console {args.id}: dashboard {url}/ · metrics {url}/metrics · donating "
              f"{images} packages · watching {len(endpoints)} agents", flush=True)
        try:
            await wait_for_termination()
        finally:
            await runner.cleanup()

    asyncio.run(run())
    return 0


def _status(args: argparse.Namespace) -> int:
    from fwrescue.console import records
    from fwrescue.console.db import DB_FILE, Database

    path = args.state / DB_FILE
    if not path.exists():
        return _fail(f"no console database at {path}")
    try:
        db = Database.open_sync(path)
    except sqlite3.Error as e:
        return _fail(f"console database unusable: {e}")

    async def read() -> dict[str, Any]:
        try:
            fleet = await db.read(records.fleet)
            rollouts = await db.read(lambda c: [dict(r) for r in c.execute(
                "SELECT id, board, version, state, stage, reason FROM rollouts "
                "ORDER BY id DESC LIMIT 20")])
        finally:
            await db.close()
        seen = [n["last_seen"] for n in fleet["nodes"] if n["last_seen"] is not None]
        return {"as_of": max(seen) if seen else None,  # the newest read of any agent
                "nodes": len(fleet["nodes"]), "counts": fleet["counts"],
                "healing": [n["id"] for n in fleet["nodes"] if n["healing"]],
                "unreachable": [n["id"] for n in fleet["nodes"] if not n["reachable"]],
                "rollouts": rollouts}

    status = asyncio.run(read())
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"{status['nodes']} nodes; by state {status['counts']['state']}; "
              f"healing {status['healing']}; unreachable {status['unreachable']}")
    return 0
