"""The negotiation over real nats-server processes, at session level: the exchange
completes across the nodes of a 3-node cluster, and forged, replayed, oversize and
unaddressed messages published on the fleet's subjects change nothing; rejected
credentials are a clear error at start; an unreachable broker falls back to multicast."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from fwrescue.config import NetworkSettings, TransportSettings
from fwrescue.donor.responder import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
from fwrescue.errors import ConfigError
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import DonorAcked, Event, ReservationGranted
from fwrescue.protocol.messages import DonorKind, Solicit
from fwrescue.protocol.policy import get_policy
from fwrescue.protocol.recipient import RecipientIdentity, RecipientSession, RecipientTimers
from fwrescue.protocol.session import GROUP
from fwrescue.protocol.states import RecipientState
from fwrescue.sim.nats_cluster import NatsCluster
from fwrescue.transport.link import DualLink, open_link
from fwrescue.transport.nats import NatsLink, NatsOptions
from fwrescue.transport.udp import SessionDriver
from tests.nats_cluster import nats_cluster  # noqa: F401 - the fixture

KEY = b"integration-fleet-key-0123456789"
IMAGE = OfferableImage(manifest_digest="ab" * 32, image_sha256="cd" * 32, target="bios",
                       machine_names=("board-a",), version="2.1.0", security_version=3,
                       size=1 << 20)
FAST = RecipientTimers(startup_jitter=0.05, offer_window=0.2, backoff_initial=0.5,
                       backoff_max=2.0, max_solicits=6, accept_timeout=0.5)
PREFIX, SITE = "fwrescue.v1", "lab"


def _link(cluster: NatsCluster, server: int) -> NatsLink:
    # Each endpoint starts on a different node, so every exchange crosses a cluster route.
    urls = cluster.urls[server:] + cluster.urls[:server]
    return NatsLink(NatsOptions.from_settings(TransportSettings(
        kind="nats", nats_servers=tuple(urls[:1]), subject_prefix=PREFIX, site=SITE)))


def _donor_and_recipient() -> tuple[DonorResponder, RecipientSession]:
    """A peer donor of IMAGE and a recipient that wants it, both on the fleet key."""
    donor = DonorResponder(
        identity=DonorIdentity(donor_id="donor-a", kind=DonorKind.PEER,
                               transfer_url="http://127.0.0.1:9001"),
        catalog=lambda: [IMAGE], limits=DonorLimits(capacity=2, jitter=0.05),
        codec=Codec(KEY), rng=random.Random(1))
    recipient = RecipientSession(
        identity=RecipientIdentity(node_id="rcp-1", target="bios", machine_name="board-a",
                                   installed_version=None, security_version=0,
                                   min_security_version=3),
        timers=FAST, policy=get_policy("newest"), codec=Codec(KEY), rng=random.Random(2))
    return donor, recipient


async def _first(queue: asyncio.Queue[Event], kind: type[Event], timeout: float) -> Event:
    async def wait() -> Event:
        while True:  # bounded by the timeout below
            event = await queue.get()
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(wait(), timeout)


@pytest.mark.timeout(60)
async def test_forged_replayed_oversize_and_unaddressed_nats_messages_change_nothing(
        nats_cluster: NatsCluster) -> None:  # noqa: F811
    donor, recipient = _donor_and_recipient()
    donor_events: list[Event] = []

    async def on_donor_event(event: Event) -> None:
        donor_events.append(event)

    # A wiretap on another node records every message of the site and every unicast.
    captured: list[Msg] = []

    async def tap(msg: Msg) -> None:
        captured.append(msg)

    spy = await nats.connect(nats_cluster.urls[2])
    await spy.subscribe(f"{PREFIX}.>", cb=tap)
    await spy.flush()
    donor_link, recipient_link = _link(nats_cluster, 0), _link(nats_cluster, 1)
    donor_driver = SessionDriver(donor, donor_link, on_event=on_donor_event)
    recipient_driver = SessionDriver(recipient, recipient_link)
    await donor_driver.start()
    await recipient_driver.start()
    try:
        assert donor_link.connected_url != recipient_link.connected_url
        recipient_driver.act(recipient.start)
        ack = await _first(recipient_driver.events, DonorAcked, 10.0)
        assert isinstance(ack, DonorAcked) and recipient.state is RecipientState.BOUND
        await asyncio.sleep(0.3)  # let the tap see the whole exchange
        subjects = {m.subject for m in captured}
        assert f"{PREFIX}.{SITE}._.solicit.bios.board-a" in subjects
        assert f"{PREFIX}.{SITE}._.offer.bios" in subjects
        assert f"{PREFIX}.ep.{recipient_link.endpoint}" in subjects  # the ACK, unicast
        granted = sum(isinstance(e, ReservationGranted) for e in donor_events)
        assert granted == 1 and donor.reservations == 1
        before_donor, before_recipient = sum(donor.dropped.values()), dict(recipient.dropped)

        # 1. replay every captured message, reply subject and all, on its own subject
        for msg in list(captured):
            await spy.publish(msg.subject, msg.data, reply=msg.reply)
        # 2. a SOLICIT authenticated with another key, and one with no tag at all
        forged = Solicit(xid=7, recipient_id="rcp-evil", target="bios",
                         machine_name="board-a", installed_version=None, security_version=0,
                         min_security_version=3, topology=None, declined=())
        evil_inbox = f"{PREFIX}.ep.{'e' * 32}"
        for codec in (Codec(b"not-the-fleet-key-but-long-enough"), Codec()):
            await spy.publish(f"{PREFIX}.{SITE}._.solicit.bios.board-a",
                              codec.encode(forged, time.time()), reply=evil_inbox)
        # 3. oversize, no reply subject, a malformed reply subject, garbage
        genuine = Codec(KEY).encode(forged, time.time())
        await spy.publish(f"{PREFIX}.{SITE}._.solicit.bios.board-a", b"\0" * 1300,
                          reply=evil_inbox)
        await spy.publish(f"{PREFIX}.{SITE}._.solicit.bios.board-a", genuine)
        await spy.publish(f"{PREFIX}.{SITE}._.solicit.bios.board-a", genuine,
                          reply=f"{PREFIX}.ep.not-hex")
        await spy.publish(f"{PREFIX}.{SITE}._.accept", b"FWRN garbage", reply=evil_inbox)
        await spy.flush()
        await asyncio.sleep(0.5)

        assert donor.reservations == 1  # no second reservation from a replayed ACCEPT
        assert sum(isinstance(e, ReservationGranted) for e in donor_events) == 1
        assert recipient.state is RecipientState.BOUND
        # the SOLICIT and the ACCEPT again (the OFFER and the ACK went to the recipient)
        assert donor.dropped["invalid: replayed datagram"] >= 2
        assert donor.dropped["invalid: bad HMAC tag"] == 1
        assert donor.dropped["invalid: authentication flag does not match the fleet "
                             "configuration"] == 1  # the untagged SOLICIT
        assert donor.dropped["invalid: unsupported wire version"] == 1  # the garbage
        assert sum(donor.dropped.values()) >= before_donor + 5
        assert recipient.dropped["invalid: replayed datagram"] >= \
            before_recipient.get("invalid: replayed datagram", 0) + 2  # OFFER and ACK
        assert donor_link.stats.dropped is not None
        assert donor_link.stats.dropped["oversize"] == 1
        assert donor_link.stats.dropped["bad reply subject"] == 2
        # the exchange still ends cleanly: RELEASE frees the one reservation
        recipient_driver.act(lambda now: recipient.release("recovered", IMAGE.size, now))
        for _ in range(100):
            if donor.reservations == 0:
                break
            await asyncio.sleep(0.02)
        assert donor.reservations == 0
    finally:
        await recipient_driver.close()
        await donor_driver.close()
        await spy.close()


@pytest.mark.timeout(30)
async def test_rejected_credentials_are_a_clear_error_at_start_and_good_ones_connect(
        tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "auth", size=1, users=[("bmc", "s3cret-pass")]) as cluster:
        def link(password: str) -> NatsLink:
            return NatsLink(NatsOptions.from_settings(TransportSettings(
                kind="nats", nats_servers=tuple(cluster.urls), user="bmc",
                password=password)))

        bad = link("wrong")
        with pytest.raises(ConfigError, match="rejected this agent's credentials"):
            await bad.open(lambda data, source: None)
        good = link("s3cret-pass")
        await good.open(lambda data, source: None)
        try:
            assert good.connected
        finally:
            good.close()
            await good.wait_closed()


def _user_nkey(path: Path) -> str:
    """A fresh nkey user pair: its seed (``SU…``) written to ``path``, its public key."""
    import os

    import nkeys  # type: ignore[import-untyped]

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed + b"\n")
    return str(nkeys.from_seed(seed).public_key.decode())


@pytest.mark.timeout(30)
async def test_an_nkey_user_connects_to_a_real_server_and_an_unknown_nkey_is_refused(
        tmp_path: Path) -> None:
    known = _user_nkey(tmp_path / "bmc.nk")
    _user_nkey(tmp_path / "stranger.nk")  # a well-formed user seed the servers don't know
    assert known.startswith("U")
    with NatsCluster(tmp_path / "nkey", size=1, nkey_users=[known]) as cluster:
        assert f'{{nkey: "{known}"}}' in cluster.nodes[0].config.read_text()

        def link(**credentials: Any) -> NatsLink:
            return NatsLink(NatsOptions.from_settings(TransportSettings(
                kind="nats", nats_servers=tuple(cluster.urls), subject_prefix=PREFIX,
                site=SITE, **credentials)))

        for refused in (link(nkey_seed_file=tmp_path / "stranger.nk"), link()):
            with pytest.raises(ConfigError, match="rejected this agent's credentials"):
                await refused.open(lambda data, source: None)
        good = link(nkey_seed_file=tmp_path / "bmc.nk")
        heard: list[bytes] = []
        await good.open(lambda data, source: heard.append(data))
        try:
            assert good.connected
            good.send(b"FWRN signed-in", GROUP)  # the server lets it publish and subscribe
            for _ in range(100):  # bounded: one round trip
                if heard:
                    break
                await asyncio.sleep(0.02)
            assert heard == [b"FWRN signed-in"]
        finally:
            good.close()
            await good.wait_closed()


@pytest.mark.timeout(30)
async def test_an_unreachable_broker_falls_back_to_multicast() -> None:
    rng = random.Random()
    network = NetworkSettings(
        group=f"239.254.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
        port=rng.randint(20000, 32000),
        transport=TransportSettings(kind="nats", nats_servers=("nats://127.0.0.1:9",),
                                    connect_timeout_s=0.3))
    donor, recipient = _donor_and_recipient()
    links = [open_link(network), open_link(network)]
    assert all(isinstance(link, DualLink) for link in links)
    async with SessionDriver(donor, links[0]), SessionDriver(recipient, links[1]) as driver:
        assert not any(isinstance(link, DualLink) and link.nats.connected for link in links)
        driver.act(recipient.start)
        ack = await _first(driver.events, DonorAcked, 10.0)
        assert isinstance(ack, DonorAcked)
        assert all(isinstance(link, DualLink) and link.multicast_sends > 0 for link in links)


@pytest.mark.timeout(30)
async def test_a_neighbour_without_a_broker_is_answered_by_multicast(
        nats_cluster: NatsCluster) -> None:  # noqa: F811
    rng = random.Random()
    group = f"239.254.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
    port = rng.randint(20000, 32000)

    def network(servers: list[str]) -> NetworkSettings:
        return NetworkSettings(group=group, port=port, transport=TransportSettings(
            kind="nats", nats_servers=tuple(servers), connect_timeout_s=0.3))

    donor_link = open_link(network(nats_cluster.urls))
    recipient_link = open_link(network(["nats://127.0.0.1:9"]))  # its broker never answers
    assert isinstance(donor_link, DualLink) and isinstance(recipient_link, DualLink)
    donor, recipient = _donor_and_recipient()
    async with SessionDriver(donor, donor_link), \
            SessionDriver(recipient, recipient_link) as driver:
        assert donor_link.nats.connected and not recipient_link.nats.connected
        driver.act(recipient.start)
        ack = await _first(driver.events, DonorAcked, 10.0)
        assert isinstance(ack, DonorAcked)
        # the connected donor answered its multicast-only neighbour by multicast too
        assert donor_link.multicast_sends > 0 and recipient_link.multicast_sends > 0


@pytest.mark.timeout(30)
async def test_a_broker_that_comes_up_later_is_joined_in_the_background(
        tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "late", size=1)  # ports chosen, server not started
    link = NatsLink(NatsOptions.from_settings(TransportSettings(
        kind="nats", nats_servers=tuple(cluster.urls), connect_timeout_s=0.3,
        reconnect_wait_s=0.1, reconnect_max_s=0.5)))
    got: list[bytes] = []
    await link.open(lambda data, source: got.append(data))
    try:
        assert not link.connected
        link.send(b"lost", GROUP)  # nowhere to go yet: dropped and counted
        assert link.stats.dropped["not connected"] == 1
        with cluster:
            for _ in range(300):  # bounded: nats-py retries every reconnect_time_wait
                if link.connected:
                    break
                await asyncio.sleep(0.02)
            assert link.connected
            link.send(b"FWRN-hello", GROUP)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.02)
            assert got == [b"FWRN-hello"]  # its own echo, through the server
            link.close()
            await link.wait_closed()
    finally:
        link.close()


@pytest.mark.timeout(30)
async def test_tls_to_the_broker_verifies_the_server_certificate(tmp_path: Path) -> None:
    from fwrescue.redfish.tls import ensure_certificate

    cert, key = ensure_certificate(tmp_path / "server", "127.0.0.1")
    other, _ = ensure_certificate(tmp_path / "other", "127.0.0.1")  # a different self-signed
    with NatsCluster(tmp_path / "tls", size=1, tls=(cert, key)) as cluster:
        def link(ca: Path) -> NatsLink:
            return NatsLink(NatsOptions.from_settings(TransportSettings(
                kind="nats", nats_servers=tuple(u.replace("nats://", "tls://")
                                                for u in cluster.urls),
                tls_ca_file=ca, connect_timeout_s=1.0)))

        trusted = link(cert)
        await trusted.open(lambda data, source: None)
        untrusted = link(other)
        await untrusted.open(lambda data, source: None)
        try:
            assert trusted.connected
            assert not untrusted.connected  # the server's certificate is not the one trusted
        finally:
            for link_ in (trusted, untrusted):
                link_.close()
                await link_.wait_closed()


@pytest.mark.timeout(30)
async def test_a_dual_stack_donor_serves_a_multicast_only_and_a_nats_only_recipient(
        nats_cluster: NatsCluster) -> None:  # noqa: F811
    rng = random.Random()
    base = NetworkSettings(group=f"239.254.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
                           port=rng.randint(20000, 32000))

    def network(kind: str) -> NetworkSettings:
        return dataclasses.replace(base, transport=TransportSettings(
            kind=kind, nats_servers=tuple(nats_cluster.urls), multicast_fallback=False))

    donor = DonorResponder(
        identity=DonorIdentity(donor_id="donor-a", kind=DonorKind.PEER,
                               transfer_url="http://127.0.0.1:9001"),
        catalog=lambda: [IMAGE], limits=DonorLimits(capacity=4, jitter=0.05),
        codec=Codec(KEY), rng=random.Random(1))
    recipients = [RecipientSession(
        identity=RecipientIdentity(node_id=f"rcp-{kind}", target="bios",
                                   machine_name="board-a", installed_version=None,
                                   security_version=0, min_security_version=3),
        timers=FAST, policy=get_policy("newest"), codec=Codec(KEY), rng=random.Random(i))
        for i, kind in enumerate(("udp", "nats"))]
    dual = open_link(network("both"))
    assert isinstance(dual, DualLink) and dual.always_multicast
    udp_only, nats_only = open_link(network("udp")), open_link(network("nats"))
    assert isinstance(nats_only, NatsLink)
    async with SessionDriver(donor, dual), SessionDriver(recipients[0], udp_only) as a, \
            SessionDriver(recipients[1], nats_only) as b:
        for driver, session in ((a, recipients[0]), (b, recipients[1])):
            driver.act(session.start)
        acks = [await _first(d.events, DonorAcked, 10.0) for d in (a, b)]
        assert all(isinstance(ack, DonorAcked) for ack in acks)
        assert donor.reservations == 2
        # the NATS-only recipient heard the donor's OFFER over NATS, the other by multicast
        assert nats_only.stats.received > 0 and dual.multicast_sends > 0


@pytest.mark.timeout(60)
async def test_a_racks_solicit_reaches_its_rack_first_and_the_whole_site_and_leaf_node(
        tmp_path: Path, nats_cluster: NatsCluster) -> None:  # noqa: F811
    def racked(urls: list[str], rack: str | None) -> NatsLink:
        return NatsLink(NatsOptions.from_settings(TransportSettings(
            kind="nats", nats_servers=tuple(urls), subject_prefix=PREFIX, site=SITE,
            rack=rack, rack_first_delay_s=0.05)))

    leaf = NatsCluster(tmp_path / "leaf", size=1, leaf_of=nats_cluster).start()
    links = {"recipient": racked(nats_cluster.urls[:1], "r1"),
             "same rack": racked(nats_cluster.urls[1:2], "r1"),
             "other rack": racked(nats_cluster.urls[2:3], "r2"),
             "console on the leaf": racked(leaf.urls, None)}
    heard: dict[str, list[tuple[bytes, tuple[str, int]]]] = {n: [] for n in links}
    taps: dict[str, list[str]] = {"P.lab.r1.>": [], "P.lab.r2.>": [], "P.*.*.>": []}
    spy = await nats.connect(nats_cluster.urls[0])
    try:
        for pattern, seen in taps.items():
            async def tap(msg: Msg, seen: list[str] = seen) -> None:
                seen.append(msg.subject)
            await spy.subscribe(pattern.replace("P", PREFIX, 1), cb=tap)
        await spy.flush()
        for name, link in links.items():
            await link.open(lambda data, source, name=name: heard[name].append((data, source)))
        assert all(link.connected for link in links.values())
        # interest travels to the other nodes and the leaf asynchronously: wait until a
        # probe from the recipient's node reaches every listener
        for _ in range(250):  # bounded
            await spy.publish(f"{PREFIX}.{SITE}._.probe", b"probe",
                              reply=f"{PREFIX}.ep.{'0' * 32}")
            await asyncio.sleep(0.02)
            if all(heard[n] for n in links):
                break
        solicit = Solicit(xid=11, recipient_id="rcp-1", target="bios",
                          machine_name="board-a", installed_version=None, security_version=0,
                          min_security_version=3, topology="r1", declined=())
        data = Codec(KEY).encode(solicit, time.time())
        links["recipient"].send(data, GROUP)
        for _ in range(200):  # bounded: a few round trips through the cluster and leaf
            if all((data, links["recipient"].local_address) in heard[n] for n in links):
                break
            await asyncio.sleep(0.02)
    finally:
        await spy.close()
        for link in links.values():
            link.close()
            await link.wait_closed()
        leaf.stop()

    subject = f"{PREFIX}.{SITE}.r1.solicit.bios.board-a"
    source = links["recipient"].local_address
    for name in ("same rack", "other rack", "console on the leaf"):
        assert [h for h in heard[name] if h[0] != b"probe"] == [(data, source)], name
    taps = {k: [s for s in v if not s.endswith(".probe")] for k, v in taps.items()}
    # only a racked link of another rack defers it: its own rack and the console don't
    assert [links[n].stats.deferred for n in links] == [0, 0, 1, 0]
    assert taps["P.lab.r1.>"] == [subject] and taps["P.*.*.>"] == [subject]
    assert taps["P.lab.r2.>"] == []
