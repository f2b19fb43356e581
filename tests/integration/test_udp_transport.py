"""Real loopback multicast: recipients and donors as asyncio endpoints complete the exchange."""

from __future__ import annotations

import asyncio
import functools
import random
import subprocess
import sys
import textwrap

import pytest

from fwrescue.donor.responder import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import DonorAcked, Event, ReservationGranted
from fwrescue.protocol.messages import DonorKind
from fwrescue.protocol.policy import get_policy
from fwrescue.protocol.recipient import RecipientIdentity, RecipientSession, RecipientTimers
from fwrescue.protocol.states import RecipientState
from fwrescue.transport.udp import MulticastConfig, SessionDriver, UdpMulticastLink

KEY = b"integration-fleet-key-0123456789"
IMAGE = OfferableImage(manifest_digest="ab" * 32, image_sha256="cd" * 32, target="bios",
                       machine_names=("board-a",), version="2.1.0", security_version=3,
                       size=1 << 20)
FAST = RecipientTimers(startup_jitter=0.05, offer_window=0.2, backoff_initial=0.5,
                       backoff_max=2.0, max_solicits=6, accept_timeout=0.5)


def config() -> MulticastConfig:
    # A random group and port per run keeps parallel test runs on one host apart.
    rng = random.Random()
    return MulticastConfig(group=f"239.255.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}",
                           port=rng.randrange(20000, 60000))


def donor(name: str, seed: int) -> DonorResponder:
    return DonorResponder(
        identity=DonorIdentity(donor_id=name, kind=DonorKind.PEER,
                               transfer_url=f"http://127.0.0.1:{9000 + seed}"),
        catalog=lambda: [IMAGE], limits=DonorLimits(capacity=1, jitter=0.05),
        codec=Codec(KEY), rng=random.Random(seed))


def recipient(name: str, seed: int) -> RecipientSession:
    identity = RecipientIdentity(node_id=name, target="bios", machine_name="board-a",
                                 installed_version=None, security_version=0,
                                 min_security_version=3)
    return RecipientSession(identity=identity, timers=FAST, policy=get_policy("least-loaded"),
                            codec=Codec(KEY), rng=random.Random(seed))


async def first(queue: asyncio.Queue[Event], kind: type[Event], timeout: float) -> Event:
    async def wait() -> Event:
        while True:  # bounded by the timeout below
            event = await queue.get()
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(wait(), timeout)


@pytest.mark.timeout(30)
async def test_two_recipients_and_two_donors_complete_the_exchange_over_multicast() -> None:
    cfg = config()
    donors = [donor("donor-a", 1), donor("donor-b", 2)]
    recipients = [recipient("rcp-1", 3), recipient("rcp-2", 4)]
    granted: list[Event] = []

    async def on_donor_event(event: Event) -> None:
        granted.append(event)

    donor_drivers = [SessionDriver(d, UdpMulticastLink(cfg), on_event=on_donor_event)
                     for d in donors]
    rcp_drivers = [SessionDriver(r, UdpMulticastLink(cfg)) for r in recipients]
    for drv in (*donor_drivers, *rcp_drivers):
        await drv.start()
    try:
        addrs = {drv.link.local_address for drv in (*donor_drivers, *rcp_drivers)}
        assert len(addrs) == 4  # four endpoints share the group port, each with its own reply port
        for drv, rcp in zip(rcp_drivers, recipients, strict=True):
            drv.act(rcp.start)
        acks = [await first(drv.events, DonorAcked, 10.0) for drv in rcp_drivers]
        assert all(isinstance(a, DonorAcked) for a in acks)
        chosen = {a.offer.donor_id for a in acks if isinstance(a, DonorAcked)}
        # capacity 1 each: the two recipients end up on different donors
        assert chosen == {"donor-a", "donor-b"}
        assert all(r.state is RecipientState.BOUND for r in recipients)
        for drv, rcp in zip(rcp_drivers, recipients, strict=True):
            drv.act(functools.partial(rcp.release, "recovered", IMAGE.size))
        for _ in range(100):  # bounded wait for the RELEASEs to land
            if all(d.reservations == 0 for d in donors):
                break
            await asyncio.sleep(0.02)
        assert all(d.reservations == 0 for d in donors)
        tokens = {e.token for e in granted if isinstance(e, ReservationGranted)}
        assert {a.token for a in acks if isinstance(a, DonorAcked)} <= tokens
        assert all(not r.dropped for r in recipients)
    finally:
        for drv in (*donor_drivers, *rcp_drivers):
            await drv.close()


DONOR_PROCESS = textwrap.dedent("""
    import asyncio, random, sys
    from fwrescue.protocol.codec import Codec
    from fwrescue.donor.responder import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
    from fwrescue.protocol.messages import DonorKind
    from fwrescue.transport.udp import MulticastConfig, SessionDriver, UdpMulticastLink

    async def main():
        cfg = MulticastConfig(group=sys.argv[1], port=int(sys.argv[2]))
        image = OfferableImage(manifest_digest="ab" * 32, image_sha256="cd" * 32,
                               target="bios", machine_names=("board-a",), version="2.1.0",
                               security_version=3, size=1 << 20)
        d = DonorResponder(identity=DonorIdentity(donor_id="child", kind=DonorKind.CONSOLE,
                                                  transfer_url="http://127.0.0.1:9999"),
                           catalog=lambda: [image], limits=DonorLimits(),
                           codec=Codec(sys.argv[3].encode()), rng=random.Random(9))
        async with SessionDriver(d, UdpMulticastLink(cfg)):
            print("ready", flush=True)
            await asyncio.sleep(float(sys.argv[4]))

    asyncio.run(main())
""")


@pytest.mark.timeout(30)
async def test_a_donor_in_another_process_shares_the_group_port() -> None:
    cfg = config()
    # a same-process endpoint already holds the port: the child must still bind and hear us
    bystander = SessionDriver(donor("bystander", 5), UdpMulticastLink(cfg))
    await bystander.start()
    bystander.session.set_active_uploads(1)  # type: ignore[attr-defined]  # full: stays quiet
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DONOR_PROCESS, cfg.group, str(cfg.port), KEY.decode(), "8",
        stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
        assert line.strip() == b"ready"
        rcp = recipient("rcp-x", 6)
        async with SessionDriver(rcp, UdpMulticastLink(cfg)) as drv:
            drv.act(rcp.start)
            ack = await first(drv.events, DonorAcked, 10.0)
            assert isinstance(ack, DonorAcked) and ack.offer.donor_id == "child"
    finally:
        proc.kill()
        await proc.wait()
        await bystander.close()
