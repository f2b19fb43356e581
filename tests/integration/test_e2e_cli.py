"""End to end through the ``fwrescue demo`` command, as a user runs it: its exit status,
its JSON report contract, and ``--hold`` serving until SIGTERM."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fwrescue.protocol.policy import version_key
from fwrescue.trust.transfer_tls import client_context

FWRESCUE = Path(sys.executable).with_name("fwrescue")
NODE_KEYS = {"id", "board", "corrupted", "recovered", "booted", "donor", "donor_kind",
             "version_before", "version_after", "seconds", "http_url"}


def test_make_demo_defaults_recover_every_corrupted_node(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [str(FWRESCUE), "demo", "--nodes", "8", "--boards", "2", "--corrupt", "3",
         "--json", str(report_path), "--workdir", str(tmp_path / "fleet")],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    nodes = report["nodes"]
    assert len(nodes) == 8
    assert sum(n["corrupted"] for n in nodes) == 3
    assert {n["board"] for n in nodes if n["corrupted"]} == {"board-a", "board-b"}
    for node in nodes:
        assert set(node) >= NODE_KEYS, NODE_KEYS - set(node)
        assert node["booted"] is True
        assert node["http_url"].startswith("https://127.0.0.1:")  # mutual TLS by default
        assert isinstance(node["seconds"], int | float) and node["seconds"] >= 0
        assert node["version_after"] in ("1.0.0", "1.1.0")
        if node["corrupted"]:
            assert node["recovered"] is True
            assert node["donor_kind"] in ("peer", "console")
            assert node["donor"] and node["donor"] != node["id"]
            assert version_key(node["version_after"]) >= version_key(node["version_before"])
        else:
            assert node["recovered"] is False
            assert node["version_after"] == node["version_before"]


def _wait_for_report(path: Path, proc: subprocess.Popen[Any]) -> dict[str, Any]:
    for _ in range(1200):  # 0.1 s apart: two minutes at most
        assert proc.poll() is None, "demo --hold exited before writing its report"
        with contextlib.suppress(FileNotFoundError, ValueError):
            report: dict[str, Any] = json.loads(path.read_text())
            return report
        time.sleep(0.1)
    raise AssertionError("demo --hold wrote no report")


def test_demo_hold_writes_json_then_keeps_serving_until_sigterm(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    proc = subprocess.Popen(
        [str(FWRESCUE), "demo", "--hold", "--nodes", "3", "--boards", "1", "--corrupt", "1",
         "--json", str(report_path), "--workdir", str(tmp_path / "fleet")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        report = _wait_for_report(report_path, proc)
        assert report["ok"] is True
        url = report["nodes"][0]["http_url"]
        assert url.startswith("https://127.0.0.1:")
        fleet = tmp_path / "fleet"  # a fleet member's certificate opens the TLS session
        tls = client_context(fleet / "fleet-ca" / "ca.pem", fleet / "tls" / "node-02.pem",
                             fleet / "tls" / "node-02.key")
        tls.check_hostname = False  # any fleet member will do here
        status = 0
        try:
            with urllib.request.urlopen(f"{url}/manifests/{'0' * 64}", timeout=10,
                                        context=tls):
                pass
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 401  # it is serving, and it wants a token
        _check_console(report)
        assert proc.poll() is None  # still holding after the report
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _check_console(report: dict[str, Any]) -> None:
    """The report's console object: its dashboard takes the credentials and lists the fleet;
    its metrics parse with prometheus-client's own parser."""
    import http.cookiejar
    import urllib.parse

    from prometheus_client.parser import text_string_to_metric_families

    console = report["console"]
    assert set(console) >= {"url", "user", "password", "metrics_url"}
    with urllib.request.urlopen(console["metrics_url"], timeout=10) as resp:
        names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
    assert {"fwrescue_recoveries", "fwrescue_agents"} <= names
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": console["user"],
                                   "password": console["password"]}).encode()
    opener.open(f"{console['url']}login", form, timeout=10).close()
    ids = {n["id"] for n in report["nodes"]}
    for _ in range(100):  # the console reads every node within a few polls
        with opener.open(f"{console['url']}api/fleet", timeout=10) as resp:
            fleet = json.loads(resp.read())
        if {n["id"] for n in fleet["nodes"] if n["reachable"]} == ids:
            return
        time.sleep(0.1)
    raise AssertionError(f"the console did not list the fleet: {fleet}")
