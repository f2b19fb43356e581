"""Redfish against REAL agents (virtual host, file flash) on 127.0.0.1: DMTF's service
validator, sushy, DMTF's rf_update.py and our ``fwrescue rf`` CLI, plus the refusals an
operator must get, and an automatic peer recovery seen as a Task and on the SSE stream.

One simulated fleet (keys, signed releases, provisioned BMCs on their own multicast group)
is built per module; every test starts the agents it needs on its own nodes, so the tests
do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fwrescue.agent import Agent
from fwrescue.config import RedfishSettings, TimerSettings
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.image.package import build_package, open_package, write_package
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node, isolated_network
from fwrescue.trust.keys import SigningKey, generate_keypair
from fwrescue.trust.manifest import SignedManifest
from tests.fakes.tools import csdl_dir, tool

pytestmark = pytest.mark.slow

ADMIN, ADMIN_PW = "admin", "admin-password-1"
VIEWER, VIEWER_PW = "viewer", "viewer-password-1"
IMAGE_SIZE = 128 * 1024
US = "/redfish/v1/UpdateService"
TASKS = "/redfish/v1/TaskService/Tasks"
# Bounds for every wait below: a recovery or update of a 128 KiB image on loopback takes
# well under a second; these only stop a broken service from hanging the suite.
WAIT_S = 60.0
SSE_MAX_EVENTS = 500

# Node roles (0-based indices into plan.nodes); one board, releases alternate 1.0.0 / 1.1.0.
VALIDATED, SUSHY, RF_UPDATE, REFUSALS, SSE, CLI, PEER, ON_RESET = range(8)
CORRUPTED = (VALIDATED, SSE, CLI)


# --- tools --------------------------------------------------------------------------------------



async def run(*argv: str, cwd: Path | None = None, timeout: float = 240) -> tuple[int, str]:
    """Run a command; return its exit code and its stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=cwd)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


# --- the fleet and its agents ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> FleetPlan:
    root = tmp_path_factory.mktemp("rfagent") / "fleet"
    plan = build_fleet(
        root, nodes=8, boards=1, image_size=IMAGE_SIZE, network=isolated_network(),
        timers=TimerSettings(startup_jitter=0.05, offer_window=0.2, accept_timeout=1.0),
        redfish=RedfishSettings(enabled=True, tls=False, users=(
            (ADMIN, ADMIN_PW, "Administrator"), (VIEWER, VIEWER_PW, "ReadOnly"))),
        seed=random.randrange(1, 1 << 30))
    for index in CORRUPTED:
        corrupt_node(plan.nodes[index])
    return plan


@pytest.fixture
async def console(plan: FleetPlan, tmp_path: Path) -> AsyncIterator[ConsoleDonor]:
    """The site console donating the newest release (the peer-recovery test runs without it)."""
    assert plan.console_repo is not None
    donor = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                         state_dir=tmp_path / "console-state", network=plan.network)
    await donor.start()
    try:
        yield donor
    finally:
        await donor.stop()


@contextlib.asynccontextmanager
async def running(node: NodeSpec, *, startup_checks: bool = True,
                  tls: bool = False) -> AsyncIterator[Agent]:
    """A real agent for ``node`` with its Redfish service on 127.0.0.1 (HTTPS with ``tls``)."""
    config = node.config
    if tls:
        config = dataclasses.replace(config, redfish=dataclasses.replace(config.redfish, tls=True))
    agent = Agent(config)
    await agent.start(run_startup_checks=startup_checks)
    try:
        assert agent.redfish_url is not None
        yield agent
    finally:
        await agent.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def http(user: str | None = ADMIN,
               password: str = ADMIN_PW) -> AsyncIterator[aiohttp.ClientSession]:
    headers = basic(user, password) if user else {}
    async with aiohttp.ClientSession(headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        body: dict[str, Any] = await resp.json(content_type=None)
        return body


async def task_ids(agent: Agent) -> list[str]:
    async with http() as s:
        tasks = await get_json(s, f"{agent.redfish_url}{TASKS}")
    return [m["@odata.id"].rsplit("/", 1)[-1] for m in tasks["Members"]]


async def follow_monitor(agent: Agent, monitor: str) -> dict[str, Any]:
    """Poll a task monitor (202 while running) until it answers 200 with the final Task."""
    deadline = time.monotonic() + WAIT_S
    async with http() as s:
        while time.monotonic() < deadline:
            async with s.get(f"{agent.redfish_url}{monitor}") as resp:
                body: dict[str, Any] = await resp.json(content_type=None)
                if resp.status == 200:
                    return body
                assert resp.status == 202, (resp.status, body)
            await asyncio.sleep(0.05)
    raise AssertionError(f"task monitor {monitor} still running after {WAIT_S} s")


def flash_image(node: NodeSpec, size: int = IMAGE_SIZE) -> bytes:
    return node.flash_path.read_bytes()[:size]


def bios_version(agent: Agent) -> str | None:
    return agent.engine("bios").installed_version


# --- packages -----------------------------------------------------------------------------------


def newer_package(plan: FleetPlan, node: NodeSpec, out: Path, *, version: str,
                  security_version: int) -> tuple[Path, bytes]:
    """A genuinely signed release for ``node``'s board with fresh image bytes."""
    data = random.Random(version).randbytes(IMAGE_SIZE)
    image = out.with_suffix(".bin")
    image.write_bytes(data)
    build_package(image, out, key=plan.signing_key, target="bios", machine_names=[node.board],
                  version=version, security_version=security_version)
    return out, data


def unsigned_package(source: Path, out: Path) -> Path:
    """``source``'s manifest with an all-zero signature (no key signed it)."""
    reader = open_package(source)
    manifest = reader.signed.manifest
    image = out.with_suffix(".bin")
    with open(source, "rb") as f:
        f.seek(reader.image_offset)
        image.write_bytes(f.read(manifest.size))
    write_package(out, SignedManifest.envelope(manifest, bytes(64)), image)
    return out


def tampered_package(source: Path, out: Path) -> Path:
    """``source`` with one image byte flipped: the signature holds, the image hash does not."""
    reader = open_package(source)
    data = bytearray(source.read_bytes())
    data[reader.image_offset + 1000] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def foreign_key_package(node: NodeSpec, out: Path) -> Path:
    """A newer release for the right board, signed by a key the fleet does not trust."""
    private, _ = generate_keypair(out.parent / "rogue-keys", "rogue")
    image = out.with_suffix(".bin")
    image.write_bytes(random.Random(7).randbytes(IMAGE_SIZE))
    build_package(image, out, key=SigningKey.load(private), target="bios",
                  machine_names=[node.board], version="9.0.0", security_version=9)
    return out


async def push(agent: Agent, package: Path, *, force: bool = False, on_reset: bool = False,
               user: str | None = ADMIN, password: str = ADMIN_PW) -> tuple[int, dict[str, Any],
                                                                           str | None]:
    """A multipart push, as rf_update.py and our CLI send it: (status, body, Location)."""
    parameters: dict[str, Any] = {"ForceUpdate": force}
    if on_reset:
        parameters["@Redfish.OperationApplyTime"] = "OnReset"
    form = aiohttp.FormData()
    form.add_field("UpdateParameters", json.dumps(parameters), content_type="application/json")
    form.add_field("UpdateFile", package.read_bytes(), filename=package.name,
                   content_type="application/octet-stream")
    async with http(user, password) as s, s.post(
            f"{agent.redfish_url}{US}/MultipartUpload", data=form) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp.headers.get("Location")


def extended_ids(body: dict[str, Any]) -> list[str]:
    info = body.get("error", {}).get("@Message.ExtendedInfo", [])
    return [m.get("MessageId", "") for m in info]


# --- 1. DMTF Redfish-Service-Validator ----------------------------------------------------------


async def test_service_validator_passes_an_agent_holding_a_finished_recovery_task(
        plan: FleetPlan, console: ConsoleDonor, tmp_path: Path) -> None:
    node = plan.nodes[VALIDATED]
    async with running(node) as agent:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        result = agent.results["bios"]
        assert result.ok and result.donor_id == "console", result
        assert await task_ids(agent) == [result.op_id]
        code, out = await run(
            tool("rf_service_validator"), "--ip", str(agent.redfish_url), "-u", ADMIN,
            "-p", ADMIN_PW, "--authtype", "Basic", "--schema_directory", str(csdl_dir()),
            "--skipschema", "--logdir", str(tmp_path / "svlog"))
    summary = out[out.rfind("PASS"):]
    assert "|" in summary, out[-3000:]
    # The summary table: | PASS | WARN | FAIL | NOT TESTED | then the counts.
    counts = [c.strip() for c in summary.splitlines()[2].split("|") if c.strip()]
    assert counts[2] == "0", out[-5000:]
    assert int(counts[0]) > 300, counts
    assert code == 0, out[-3000:]
    for resource in (f"/redfish/v1/Systems/{node.node_id}",
                     f"{US}/FirmwareInventory/bios",
                     f"{TASKS}/{result.op_id}"):
        assert f"Validating {resource}" in out, resource


# --- 2. sushy: BiosVersion and SimpleUpdate from an HTTP ImageURI -------------------------------


@contextlib.asynccontextmanager
async def image_server(folder: Path) -> AsyncIterator[TestServer]:
    app = web.Application()

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        return web.FileResponse(folder / name)

    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_sushy_simple_update_from_image_uri_flashes_the_newer_signed_release(
        plan: FleetPlan, tmp_path: Path) -> None:
    import sushy

    node = plan.nodes[SUSHY]
    www = tmp_path / "www"
    www.mkdir()
    package, new_image = newer_package(plan, node, www / "bios-2.0.0.fwpkg", version="2.0.0",
                                       security_version=node.release.security_version + 1)
    old_image = flash_image(node)

    async with running(node) as agent, image_server(www) as server:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        image_uri = str(server.make_url(f"/{package.name}"))
        url = str(agent.redfish_url)

        def drive() -> tuple[str, str, str, str, str]:
            root = sushy.Sushy(f"{url}/redfish/v1", username=ADMIN, password=ADMIN_PW,
                               verify=False)
            try:
                system = root.get_system(f"/redfish/v1/Systems/{node.node_id}")
                before = system.bios_version
                monitor = root.get_update_service().simple_update(
                    image_uri=image_uri, transfer_protocol="HTTP")
                deadline = time.monotonic() + WAIT_S
                while monitor.is_processing and time.monotonic() < deadline:
                    time.sleep(0.05)
                    monitor.refresh()
                task = monitor.get_task()
                system.refresh()
                return (before, monitor.task_monitor_uri, str(task.task_state),
                        str(task.task_status), system.bios_version)
            finally:
                # Log out from this thread: sushy's finaliser would otherwise make a blocking
                # request from the event loop thread, which serves that very request.
                root.__del__()

        before, monitor_uri, state, status, after = await asyncio.to_thread(drive)
        assert bios_version(agent) == "2.0.0"

    assert before == node.release.version
    assert monitor_uri.startswith("/redfish/v1/TaskService/TaskMonitors/upd-")
    assert state.lower().endswith("completed") and status.lower().endswith("ok"), (state, status)
    assert after == "2.0.0"
    assert flash_image(node) == new_image != old_image


# --- 3. DMTF rf_update.py: a multipart push ----------------------------------------------------


async def test_dmtf_rf_update_pushes_a_release_multipart_and_the_flash_holds_it(
        plan: FleetPlan, tmp_path: Path) -> None:
    node = plan.nodes[RF_UPDATE]
    newest = plan.newest(node.board)
    assert node.release.version != newest.version, "this node must start on the older release"
    async with running(node) as agent:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        code, out = await run(tool("rf_update.py"), "-r", str(agent.redfish_url), "-u", ADMIN,
                              "-p", ADMIN_PW, "-i", str(newest.package), cwd=tmp_path)
        assert code == 0, out
        assert "Task is Done" in out, out
        assert bios_version(agent) == newest.version
        [task_id] = await task_ids(agent)
        async with http() as s:
            task = await get_json(s, f"{agent.redfish_url}{TASKS}/{task_id}")
            bios = await get_json(s, f"{agent.redfish_url}{US}/FirmwareInventory/bios")
    assert (task["TaskState"], task["TaskStatus"]) == ("Completed", "OK")
    assert task["Oem"]["Fwrescue"]["Kind"] == "update"
    assert bios["Version"] == newest.version
    assert flash_image(node) == newest.image.read_bytes()


# --- 4. refusals -------------------------------------------------------------------------------


async def test_agent_refuses_unauthorized_untrusted_rolled_back_and_unforced_same_updates(
        plan: FleetPlan, tmp_path: Path) -> None:
    node = plan.nodes[REFUSALS]
    installed = node.release
    board_releases = plan.releases[node.board]
    older = next(r for r in board_releases if r.security_version < installed.security_version)
    newer, _ = newer_package(plan, node, tmp_path / "newer.fwpkg", version="3.0.0",
                             security_version=installed.security_version + 1)
    before = flash_image(node)
    assert before == installed.image.read_bytes()

    async with running(node) as agent:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        url = str(agent.redfish_url)
        simple = f"{url}{US}/Actions/UpdateService.SimpleUpdate"

        # Nobody logged in: 401 with a challenge, before anything is downloaded.
        async with http(None) as s, s.post(simple, json={
                "ImageURI": "http://127.0.0.1:9/never-fetched.fwpkg",
                "TransferProtocol": "HTTP"}) as resp:
            assert resp.status == 401
            assert "WWW-Authenticate" in resp.headers
        # A ReadOnly account may look but not update.
        status, body, _ = await push(agent, newer, user=VIEWER, password=VIEWER_PW)
        assert status == 403, body
        assert extended_ids(body) == ["Base.1.22.InsufficientPrivilege"]

        # Packages that fail a trust check: 400 with an Update MessageId, and no Task.
        bad = {
            "unsigned": unsigned_package(newer, tmp_path / "unsigned.fwpkg"),
            "tampered": tampered_package(newer, tmp_path / "tampered.fwpkg"),
            "foreign key": foreign_key_package(node, tmp_path / "foreign.fwpkg"),
        }
        for what, package in bad.items():
            status, body, location = await push(agent, package)
            assert status == 400, (what, body)
            assert extended_ids(body) == ["Update.1.3.VerificationFailed"], (what, body)
            assert location is None, what

        # Rolling back below the anti-rollback floor is never allowed, not even forced.
        for force in (False, True):
            status, body, _ = await push(agent, older.package, force=force)
            assert status == 400, body
            assert extended_ids(body) == ["Update.1.3.UpdateSkippedVersionTooLow"], body

        # Reinstalling the installed image needs ForceUpdate.
        status, body, _ = await push(agent, installed.package)
        assert status == 400, body
        assert extended_ids(body) == ["Update.1.3.UpdateSkippedSameVersion"], body

        assert await task_ids(agent) == []
        assert flash_image(node) == before
        assert bios_version(agent) == installed.version
        # Neither the uploads nor the images staged while verifying them are left behind.
        assert not list((node.config.state_dir / "redfish" / "uploads").iterdir())
        assert not list((node.config.state_dir / "targets" / "bios" / "work").glob("*.bin"))

        status, body, monitor = await push(agent, installed.package, force=True)
        assert status == 202, body
        assert monitor is not None
        task = await follow_monitor(agent, monitor)
        assert (task["TaskState"], task["TaskStatus"]) == ("Completed", "OK"), task
        assert bios_version(agent) == installed.version

    assert flash_image(node) == before


# --- 4b. an update applied at the next reset -------------------------------------------------


async def test_on_reset_update_is_staged_survives_a_restart_and_the_reset_applies_it(
        plan: FleetPlan, tmp_path: Path) -> None:
    node = plan.nodes[ON_RESET]
    newer, new_image = newer_package(plan, node, tmp_path / "later.fwpkg", version="2.2.0",
                                     security_version=node.release.security_version + 1)
    before = flash_image(node)
    async with running(node) as agent:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        status, body, monitor = await push(agent, newer, on_reset=True)
        assert status == 202, body
        assert monitor is not None
        staged = await follow_monitor(agent, monitor)
        assert (staged["TaskState"], staged["TaskStatus"]) == ("Completed", "OK"), staged
        assert "Update.1.3.OperationTransitionedToJob" in {
            m["MessageId"] for m in staged["Messages"]}
        assert flash_image(node) == before
        assert bios_version(agent) == node.release.version

    # The BMC restarts before the reset: the staged update must survive it.
    async with running(node) as agent:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        assert flash_image(node) == before
        async with http() as s, s.post(
                f"{agent.redfish_url}/redfish/v1/Systems/{node.node_id}/Actions/"
                "ComputerSystem.Reset", json={"ResetType": "ForceRestart"}) as resp:
            assert resp.status in (200, 204), await resp.text()
        assert bios_version(agent) == "2.2.0"
        assert flash_image(node) == new_image
        assert agent.booted["bios"] is True
        ids = await task_ids(agent)
        assert len(ids) == 1 and staged["Id"] not in ids, ids
        async with http() as s:
            applied = await get_json(s, f"{agent.redfish_url}{TASKS}/{ids[0]}")
        assert (applied["TaskState"], applied["TaskStatus"]) == ("Completed", "OK"), applied


# --- 5. an automatic peer recovery as a Task and on the SSE stream ----------------------------


async def read_sse_until_done(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Event records from an SSE stream, until a task finishes (bounded by count)."""
    records: list[dict[str, Any]] = []
    for _ in range(SSE_MAX_EVENTS):
        line = await resp.content.readline()
        if not line:
            raise AssertionError(f"SSE stream ended early after {records}")
        if not line.startswith(b"data:"):
            continue
        event = json.loads(line[len(b"data:"):])
        assert event["@odata.type"].startswith("#Event.")
        records.extend(event["Events"])
        finished = {r["MessageId"] for r in event["Events"]} & {
            "TaskEvent.1.0.TaskCompletedOK", "TaskEvent.1.0.TaskCompletedWarning",
            "TaskEvent.1.0.TaskAborted"}
        if finished:
            return records
    raise AssertionError(f"no completion event among {SSE_MAX_EVENTS} SSE lines")


async def test_peer_recovery_streams_sse_events_and_leaves_a_task_with_its_donor_transcript(
        plan: FleetPlan) -> None:
    node, peer = plan.nodes[SSE], plan.nodes[PEER]
    assert node.board == peer.board
    # No console here: the only donor on the group is a healthy peer BMC.
    async with running(peer) as donor, running(node, startup_checks=False) as agent, http() as s:
        await asyncio.wait_for(donor.wait_idle(), WAIT_S)
        url = str(agent.redfish_url)
        async with s.get(f"{url}/redfish/v1/EventService/SSE") as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            recovery = asyncio.create_task(agent.recover("bios", "test"))
            records = await asyncio.wait_for(read_sse_until_done(stream), WAIT_S)
            result = await asyncio.wait_for(recovery, WAIT_S)
        assert result.ok, result
        assert (result.donor_id, result.donor_kind) == (peer.node_id, "peer"), result
        task_uri = f"{TASKS}/{result.op_id}"
        assert records[-1]["MessageId"] == "TaskEvent.1.0.TaskCompletedOK"
        assert records[0]["MessageId"] == "TaskEvent.1.0.TaskStarted"
        assert {r["OriginOfCondition"]["@odata.id"] for r in records} == {task_uri}
        # Registry messages carry their real arguments (the task's Id, the percentage).
        progress = [r for r in records if r["MessageId"] == "TaskEvent.1.0.TaskProgressChanged"]
        assert progress and all(r["MessageArgs"][0] == result.op_id for r in progress)
        assert [int(r["MessageArgs"][1]) for r in progress][-1] >= 90

        tasks = await get_json(s, f"{url}{TASKS}")
        assert {"@odata.id": task_uri} in tasks["Members"]
        task = await get_json(s, f"{url}{task_uri}")
        assert (task["TaskState"], task["TaskStatus"]) == ("Completed", "OK")
        assert task["Oem"]["Fwrescue"]["Kind"] == "recovery"
        transcript = await get_json(s, f"{url}{task['Oem']['Fwrescue']['TranscriptUri']}")
    assert transcript["TaskId"] == result.op_id
    assert {e.get("donor") for e in transcript["Entries"]} >= {peer.node_id}, transcript
    # The negotiation is readable JSON: the chosen offer names the peer, not a Python repr.
    [selected] = [e for e in transcript["Entries"] if e["event"] == "DonorSelected"]
    assert selected["offer"]["donor_id"] == peer.node_id, selected
    assert selected["offer"]["donor_kind"] == "peer", selected
    assert flash_image(node) == peer.release.image.read_bytes()


# --- 6. the fwrescue rf CLI as a subprocess ----------------------------------------------------


def rf_cli(*args: str) -> list[str]:
    """The installed ``fwrescue`` command, as an operator runs it."""
    return [tool("fwrescue"), "rf", *args]


@pytest.fixture
def no_cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("FWRESCUE_RF_USER", raising=False)
    monkeypatch.delenv("FWRESCUE_RF_PASSWORD", raising=False)
    yield


async def test_rf_cli_over_https_shows_bios_version_and_recovery_and_rejects_bad_password(
        plan: FleetPlan, console: ConsoleDonor, no_cli_env: None) -> None:
    node = plan.nodes[CLI]
    async with running(node, tls=True) as agent:
        await asyncio.wait_for(agent.wait_idle(), WAIT_S)
        url = str(agent.redfish_url)
        assert url.startswith("https://127.0.0.1:")
        version = plan.newest(node.board).version
        creds = ("--user", ADMIN, "--password", ADMIN_PW, "--insecure")

        code, out = await run(*rf_cli("status", url, *creds))
        assert code == 0, out
        assert f"system {node.node_id}:" in out and f"bios={version}" in out, out
        code, out = await run(*rf_cli("inventory", url, *creds))
        assert code == 0, out
        assert "bios" in out and version in out, out
        code, out = await run(*rf_cli("tasks", url, *creds))
        assert code == 0, out
        op_id = agent.results["bios"].op_id
        [line] = [ln for ln in out.splitlines() if ln.startswith(op_id)]
        assert "recovery" in line and "Completed" in line, out

        code, out = await run(*rf_cli("status", url, "--user", ADMIN, "--password",
                                      "wrong-password-1", "--insecure"))
        assert code == 4, out
        assert "bios=" not in out
