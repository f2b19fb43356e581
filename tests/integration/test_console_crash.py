"""The console process SIGKILLed while it writes restarts with a consistent database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.console.db import DB_FILE, SCHEMA_VERSION
from tests.integration.console_kit import AGENT_PASSWORD, plan_fleet

FWRESCUE = Path(sys.executable).with_name("fwrescue")


def _check(db: Path) -> dict[str, int]:
    """Open the file as a fresh reader would; return row counts (asserting consistency)."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.execute("PRAGMA foreign_keys=ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        orphans = conn.execute(
            "SELECT COUNT(*) FROM transcript t LEFT JOIN operations o USING (node_id, op_id) "
            "WHERE o.op_id IS NULL").fetchone()[0]
        assert orphans == 0
        # table names from the constant tuple below, never from input
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("nodes", "targets", "operations", "transcript")}
    finally:
        conn.close()


def _version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def _operations_written(db: Path, at_least: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        assert proc.poll() is None, "the console exited by itself"
        with contextlib.suppress(sqlite3.Error, FileNotFoundError):
            if db.exists() and _version(db) == SCHEMA_VERSION and _check(db)[
                    "operations"] >= at_least:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the console wrote no operations")


async def test_console_killed_mid_write_restarts_consistent(tmp_path: Path) -> None:
    plan = plan_fleet(tmp_path / "fleet", nodes=2)
    agents = [Agent(spec.config) for spec in plan.nodes]
    state = tmp_path / "console-state"
    db = state / DB_FILE
    churn: asyncio.Task[None] | None = None
    try:
        for agent in agents:
            await agent.start(run_startup_checks=False)

        async def recoveries() -> None:  # every recovery is a Task with a transcript to store
            while True:
                for agent in agents:
                    await agent.recover("bios", "test: churn")

        churn = asyncio.create_task(recoveries())
        command = [str(FWRESCUE), "console", "--repo", str(plan.console_repo), "--state",
                   str(state), "--trust", str(plan.root / "trust"), "--listen",
                   "127.0.0.1:0", "--poll", "0.02", "--group", plan.network.group,
                   "--port", str(plan.network.port)]
        tls = plan.tls_for("console")
        command += (["--tls-ca", str(tls.ca), "--tls-cert", str(tls.cert), "--tls-key",
                     str(tls.key)] if tls is not None else ["--plain-http"])
        for agent in agents:
            command += ["--agent", f"{agent.redfish_url},admin,{AGENT_PASSWORD}"]
        seen = 0
        for _ in range(3):
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                await _operations_written(db, seen + 1, proc)
                await asyncio.sleep(random.uniform(0.05, 0.4))  # mid-write: it polls 50/s
                assert db.with_name(DB_FILE + "-wal").stat().st_size > 0  # writes in flight
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            counts = _check(db)
            assert counts["nodes"] == 2 and counts["targets"] == 2
            assert counts["operations"] >= seen  # nothing committed is lost
            seen = counts["operations"]
        status = subprocess.run([str(FWRESCUE), "console", "status", "--json", "--state",
                                 str(state)], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["nodes"] == 2 and report["unreachable"] == []
    finally:
        if churn is not None:
            churn.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await churn
        for agent in agents:
            await agent.stop()
