"""The fleet circuit breaker on the real network: recipients that cannot boot a genuinely
signed image REPORT ``boot_failed``; at N distinct failures the donor withholds the image
(no more offers, ACCEPTs NAKed), and says so over Redfish: a ``ResourceEvent`` on its
EventService (SSE) and a listing on its UpdateService."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import aiohttp

from fwrescue.agent import Agent
from fwrescue.config import DonorSettings, RedfishSettings, TimerSettings
from fwrescue.host.virtual import VirtualHost
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network

ADMIN, ADMIN_PW = "admin", "admin-password-1"
THRESHOLD = 2
RECIPIENTS = 3
WAIT_S = 60.0
SSE_MAX_LINES = 400


async def read_sse_until(resp: aiohttp.ClientResponse, message_id: str) -> dict[str, Any]:
    for _ in range(SSE_MAX_LINES):
        line = await resp.content.readline()
        if not line:
            raise AssertionError("SSE stream ended early")
        if not line.startswith(b"data:"):
            continue
        for record in json.loads(line[len(b"data:"):])["Events"]:
            if record["MessageId"] == message_id:
                return dict(record)
    raise AssertionError(f"no {message_id} among {SSE_MAX_LINES} SSE lines")


async def test_breaker_withholds_an_image_after_n_failed_boots_and_redfish_shows_it(
        tmp_path: Path) -> None:
    plan = build_fleet(
        tmp_path / "fleet", nodes=RECIPIENTS + 1, boards=1, image_size=64 * 1024,
        network=isolated_network(random.Random(77)), all_newest=True, chunk_size=16 * 1024,
        timers=TimerSettings(startup_jitter=0.1, offer_window=0.2, backoff_initial=0.4,
                             backoff_max=0.8, max_solicits=4))
    donor_node, recipients = plan.nodes[0], plan.nodes[1:]
    donor_node.config = dataclasses.replace(
        donor_node.config,
        donor=DonorSettings(max_uploads=4, breaker_failures=THRESHOLD),
        redfish=RedfishSettings(enabled=True, tls=False,
                                users=((ADMIN, ADMIN_PW, "Administrator"),)))
    for node in recipients:
        corrupt_node(node)
        # Recipients donate too (they send REPORT through their donor's link, and their
        # own breakers count the reports as well).
        node.config = dataclasses.replace(node.config, donor=DonorSettings(
            max_uploads=4, breaker_failures=THRESHOLD))
    digest = plan.newest("board-a").signed.digest
    donor = Agent(donor_node.config)
    agents = [Agent(n.config) for n in recipients]
    token = base64.b64encode(f"{ADMIN}:{ADMIN_PW}".encode()).decode()
    auth = {"Authorization": f"Basic {token}"}
    try:
        await donor.start()
        for agent in agents:
            await agent.start(run_startup_checks=False)
            host = agent.targets["bios"].host
            assert isinstance(host, VirtualHost)
            # A genuinely signed image that hangs this board's host: it never boots.
            setattr(host, "_firmware_ok", lambda: False)  # noqa: B010
        url = str(donor.redfish_url)
        async with aiohttp.ClientSession(headers=auth) as http, \
                http.get(f"{url}/redfish/v1/EventService/SSE") as stream:
            assert stream.status == 200
            results = await asyncio.wait_for(asyncio.gather(
                *(a.recover("bios", "test: breaker") for a in agents[:THRESHOLD])), WAIT_S)
            record = await asyncio.wait_for(
                read_sse_until(stream, "ResourceEvent.1.4.ResourceErrorThresholdExceeded"),
                WAIT_S)
            async with http.get(f"{url}/redfish/v1/UpdateService") as resp:
                service = await resp.json()
            # The next recipient is refused the withheld image.
            late = await asyncio.wait_for(agents[THRESHOLD].recover("bios", "late"), WAIT_S)
    finally:
        for agent in [*agents, donor]:
            await agent.stop()
    assert [r.ok for r in results] == [False] * THRESHOLD
    assert all("did not boot" in r.reason for r in results)
    assert record["OriginOfCondition"]["@odata.id"] == "/redfish/v1/UpdateService"
    assert record["MessageArgs"] == [f"BootFailures of image {digest}", str(THRESHOLD)]
    (withheld,) = service["Oem"]["Fwrescue"]["WithheldImages"]
    assert withheld["ManifestDigest"] == digest and withheld["BootFailures"] == THRESHOLD
    assert sorted(withheld["Recipients"]) == sorted(n.node_id for n in recipients[:THRESHOLD])
    assert digest in donor.donor.withheld
    responder = donor.donor.responder
    assert responder is not None and responder.breaker.is_withheld(digest)
    # No more offers of it, from the healthy donor or from the recipients that stored it:
    # the late recipient found no donor.
    assert not late.ok and "no donor" in late.reason
    assert sum(n for why, n in responder.skipped.items()
               if why.startswith("no matching image")) >= 1
