"""``fwrescue rf …``: operator commands that talk Redfish to an agent (or any BMC).

Hook into the main CLI with ``register_redfish_commands(subparsers)``; each command sets
``args.func(args) -> int`` (the exit code). Credentials come from ``--user/--password`` or
``FWRESCUE_RF_USER`` / ``FWRESCUE_RF_PASSWORD``.

Exit codes: 0 success; 1 the operation failed (update refused or its task ended in
Exception); 2 usage error (missing credentials, bad arguments); 3 the service could not be
reached (connection, TLS); 4 authentication or privilege refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from fwrescue.redfish.client import RedfishClient, RedfishClientError

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONNECT",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "main",
    "register_redfish_commands",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_AUTH = 4
_KIND_EXIT = {
    "connect": EXIT_CONNECT,
    "auth": EXIT_AUTH,
    "refused": EXIT_FAILED,
    "protocol": EXIT_FAILED,
}


def register_redfish_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``rf`` with ``status``, ``inventory``, ``update`` and ``tasks`` subcommands."""
    rf = subparsers.add_parser("rf", help="talk Redfish to an fwrescue agent or a BMC")
    sub = rf.add_subparsers(dest="rf_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("url", help="service base URL, e.g. https://10.0.0.5")
        p.add_argument("--user", default=None, help="account (env FWRESCUE_RF_USER)")
        p.add_argument("--password", default=None, help="password (env FWRESCUE_RF_PASSWORD)")
        p.add_argument(
            "--insecure", action="store_true", help="do not verify the service's TLS certificate"
        )
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("status", help="system, power, BIOS and manager versions")
    common(p)
    p.set_defaults(func=_runner(_status))
    p = sub.add_parser("inventory", help="firmware inventory and donatable images")
    common(p)
    p.set_defaults(func=_runner(_inventory))
    p = sub.add_parser("update", help="update firmware from a package file or an image URI")
    common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="package to push (multipart)")
    src.add_argument("--uri", help="http(s) URL the service downloads (SimpleUpdate)")
    p.add_argument(
        "--target", action="append", default=None, help="firmware target (repeatable), e.g. bios"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="allow reinstalling the same version (never bypasses signature or "
        "anti-rollback checks)",
    )
    p.add_argument("--on-reset", action="store_true", help="apply at the next host reset")
    p.add_argument("--wait", action="store_true", help="follow the task until it finishes")
    p.set_defaults(func=_runner(_update))
    p = sub.add_parser("tasks", help="list update and recovery tasks")
    common(p)
    p.set_defaults(func=_runner(_tasks))
    parser: argparse.ArgumentParser = rf
    return parser


Command = Callable[[RedfishClient, argparse.Namespace, TextIO], Awaitable[int]]


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_run(command, args, sys.stdout, sys.stderr))

    return run


async def _run(command: Command, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    user = args.user or os.environ.get("FWRESCUE_RF_USER")
    password = args.password or os.environ.get("FWRESCUE_RF_PASSWORD")
    if not user or not password:
        print(
            "error: give --user/--password or set FWRESCUE_RF_USER/FWRESCUE_RF_PASSWORD", file=err
        )
        return EXIT_USAGE
    if getattr(args, "file", None) is not None and not args.file.is_file():
        print(f"error: no such package file: {args.file}", file=err)
        return EXIT_USAGE
    try:
        async with RedfishClient(args.url, user, password, verify_tls=not args.insecure) as rf:
            return await command(rf, args, out)
    except RedfishClientError as e:
        print(f"error: {e.message}", file=err)
        if e.message_id and e.message_id != "Base.1.22.InternalError":
            print(f"  MessageId: {e.message_id}", file=err)
        return _KIND_EXIT.get(e.kind, EXIT_FAILED)


def _emit(out: TextIO, args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2), file=out)
    else:
        print("\n".join(lines), file=out)


async def _status(rf: RedfishClient, args: argparse.Namespace, out: TextIO) -> int:
    systems = await rf.members("/redfish/v1/Systems")
    managers = await rf.members("/redfish/v1/Managers")
    lines = []
    for s in systems:
        health = s.get("Status", {}).get("Health", "?")
        lines.append(
            f"system {s.get('Id')}: {s.get('Name', '')} power={s.get('PowerState')} "
            f"bios={s.get('BiosVersion')} health={health}"
        )
    for m in managers:
        lines.append(f"manager {m.get('Id')}: firmware={m.get('FirmwareVersion')}")
    _emit(out, args, {"Systems": systems, "Managers": managers}, lines)
    return 0


async def _inventory(rf: RedfishClient, args: argparse.Namespace, out: TextIO) -> int:
    firmware = await rf.members("/redfish/v1/UpdateService/FirmwareInventory")
    software: list[dict[str, Any]] = []
    service = await rf.get("/redfish/v1/UpdateService")
    if isinstance(service.get("SoftwareInventory"), dict):
        software = await rf.members(service["SoftwareInventory"]["@odata.id"])
    lines = ["installed firmware:"]
    for f in firmware:
        st = f.get("Status", {})
        lines.append(
            f"  {f.get('Id'):<10} {f.get('Version'):<14} floor="
            f"{f.get('LowestSupportedVersion', '-')} updateable={f.get('Updateable')} "
            f"{st.get('State')}/{st.get('Health')}"
        )
    if software:
        lines.append("donatable images:")
        for s in software:
            lines.append(f"  {s.get('SoftwareId'):<10} {s.get('Version'):<14} {s.get('Id')}")
    _emit(out, args, {"Firmware": firmware, "Software": software}, lines)
    return 0


async def _update(rf: RedfishClient, args: argparse.Namespace, out: TextIO) -> int:
    apply_time = "OnReset" if args.on_reset else "Immediate"
    if args.file is not None:
        monitor, _ = await rf.push_update(args.file, args.target, args.force, apply_time)
    else:
        monitor, _ = await rf.simple_update(args.uri, args.target, args.force)
    task_id = monitor.rstrip("/").rsplit("/", 1)[-1]
    print(f"update accepted: task {task_id} ({monitor})", file=out)
    if not args.wait:
        return 0
    final = await rf.wait_task(monitor)
    state, status = final.get("TaskState"), final.get("TaskStatus")
    for m in final.get("Messages", [])[-3:]:
        if isinstance(m, dict):
            print(f"  {m.get('MessageId')}: {m.get('Message')}", file=out)
    print(f"task {final.get('Id', '?')}: {state} / {status}", file=out)
    return 0 if state == "Completed" and status in ("OK", "Warning") else EXIT_FAILED


async def _tasks(rf: RedfishClient, args: argparse.Namespace, out: TextIO) -> int:
    tasks = await rf.members("/redfish/v1/TaskService/Tasks")
    lines = []
    for t in tasks:
        kind = t.get("Oem", {}).get("Fwrescue", {}).get("Kind", "")
        lines.append(
            f"{t.get('Id'):<12} {kind:<9} {t.get('TaskState'):<10} "
            f"{t.get('TaskStatus'):<8} {t.get('PercentComplete', 0):>3}%  "
            f"{t.get('StartTime', '')}"
        )
    _emit(out, args, tasks, lines or ["no tasks"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m fwrescue.redfish.cli rf status URL``) for tests and scripts."""
    parser = argparse.ArgumentParser(prog="fwrescue")
    register_redfish_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
