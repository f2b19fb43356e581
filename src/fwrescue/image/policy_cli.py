"""``fwrescue policy sign`` and ``fwrescue policy show``: release tooling for fleet policies.

Signing happens here, beside ``fwrescue image build``, with the release key; the console
only stores and delivers the signed documents (docs/console.md).

``fwrescue policy sign --key release.key --board board-a --version 3 \\
    --target bios --baseline 1.1.0 --floor 2 -o board-a-v3.policy.json``

``--target`` starts a target's entry; ``--baseline``/``--floor`` after it apply to it.
Exit status: 0 success, 2 bad input (``error: …`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fwrescue.errors import FwRescueError
from fwrescue.trust.keys import SigningKey, TrustStore
from fwrescue.trust.policy import TargetPolicy, parse_policy, sign_policy, verify_policy

__all__ = ["register_policy_commands"]


class _TargetAction(argparse.Action):
    """``--target NAME`` opens an entry; ``--baseline``/``--floor`` fill the latest one."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        entries: list[dict[str, Any]] = getattr(namespace, "entries", None) or []
        if self.dest == "target":
            entries.append({"name": values, "baseline": None, "floor": 0})
        else:
            if not entries:
                parser.error(f"{option_string} must follow a --target")
            entries[-1][self.dest] = values
        namespace.entries = entries


def _floor(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError("floor must be 0..2^32-1")
    return value


def register_policy_commands(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="sign and inspect fleet policies")
    sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    sub.required = True
    sign = sub.add_parser("sign", help="sign a fleet policy for one board")
    sign.add_argument("--key", type=Path, required=True, help="release private key (PEM)")
    sign.add_argument("--board", required=True)
    sign.add_argument("--version", type=int, required=True, help="policy version (>= 1)")
    sign.add_argument("--target", action=_TargetAction, required=True)
    sign.add_argument("--baseline", action=_TargetAction)
    sign.add_argument("--floor", action=_TargetAction, type=_floor)
    sign.add_argument("-o", "--output", type=Path, required=True)
    sign.set_defaults(func=_cmd_sign, entries=None)
    show = sub.add_parser("show", help="print a policy (and verify it with --trust)")
    show.add_argument("policy", type=Path)
    show.add_argument("--trust", type=Path, action="append", default=[])
    show.set_defaults(func=_cmd_show)


def _cmd_sign(args: argparse.Namespace) -> int:
    try:
        targets = {e["name"]: TargetPolicy(baseline=e["baseline"], floor=e["floor"])
                   for e in args.entries}
        raw = sign_policy(SigningKey.load(args.key), board=args.board, version=args.version,
                          issued_at=int(time.time()), targets=targets)
        args.output.write_bytes(raw)
    except (FwRescueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"signed policy v{args.version} for {args.board} -> {args.output}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        raw = args.policy.read_bytes()[:1 << 20]
        policy, _, _ = parse_policy(raw)
        if args.trust:
            verify_policy(raw, TrustStore.from_files(args.trust), board=policy.board,
                          targets=list(policy.targets))
    except (FwRescueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({**policy.to_dict(), "verified": bool(args.trust)}, indent=2))
    return 0
