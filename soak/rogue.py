"""Rogue-donor soak: real agents recover again and again while rogue donors answer first.
``python -m soak.rogue --rounds N``.

A fleet of real :class:`~fwrescue.agent.Agent` s on loopback (their own multicast group):
one honest peer and ``--recipients`` recipients, plus rogue donors — the genuine donor code
(:class:`tests.fakes.rogue.RogueDonor`) with lies planted in its store or its transfer
server — that offer at once, claim the newest version and never suppress themselves:

==========================  =========================================================
rogue                       lie
==========================  =========================================================
``rogue-rollback``          a genuinely signed older release (below the floor)
``rogue-key``               an image signed by a key the fleet does not trust
``rogue-unsigned``          the genuine manifest with an all-zero signature
``rogue-board``             a genuine release of another board offered as this board's
``rogue-bitflip``           the genuine manifest, one byte of a chunk flipped on disk
``rogue-endless``           the right Content-Range, then an endless chunked body
``rogue-lying-size``        a Content-Length twice the span, a quarter of it, a hang-up
``rogue-partial-have``      a partial donor whose have-map claims chunks it then
                            refuses (416)
``rogue-partial-shifted``   a partial donor serving another chunk than asked
``rogue-partial-bitflip``   a partial donor serving chunks with a byte flipped
``rogue-replay``            no store, no fleet key: re-sends captured honest OFFER and
                            ACK datagrams (again, re-addressed, and rounds later)
``rogue-slow``              a few bytes, then silence until the recipient's stall timeout
``rogue-trickle``           a byte every 2 s: under the stall timeout, caught by the
                            throughput floor (``TransferLimits.min_throughput_bps``)
==========================  =========================================================

The slow and trickling rogues are in play only every ``--slow-every``-th round (each
costs the recipient about 10 s). The fleet's datagrams carry an HMAC (a fleet key).

Each round corrupts every recipient's flash, removes its stored copy, and runs a recovery
(recipients in parallel). A round passes when the recovery succeeded from an honest
donor (the peer, or a recipient that recovered earlier and donates), the only image ever
handed to the flash is the genuine one, and the flash holds it. Before the rogues start,
``--baseline`` rounds with the honest agents alone give the
undisturbed recovery time; each round's delay is its time minus that median. Progress
lines every ``--progress-every`` rounds; at the end: rogue offers and transfers received,
replayed datagrams and what the codec did with them, bad flashes, failed rounds, delay
median and worst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from tests.fakes.rogue import (
    Claim,
    ReplayRogue,
    RogueDonor,
    corrupted_carrier,
    other_board,
    plant,
    record_flash_writes,
    rogue_signed,
    rolled_back,
)

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.errors import RemoteProtocolError
from fwrescue.image.store import PackageStore
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.recipient import RecipientSession
from fwrescue.sim.fleet import CORRUPT_BYTES, FleetPlan, NodeSpec, build_fleet, isolated_network
from fwrescue.transfer.server import parse_range
from fwrescue.trust.manifest import SignedManifest

__all__ = ["RogueSoak", "main"]

IMAGE_SIZE = 256 * 1024
ENDLESS_LIMIT = 64 * 1024 * 1024  # an endless body still ends here (loops stay bounded)
ROUND_TIMEOUT = 120.0
TRICKLE_GAP = 2.0  # seconds between the trickling rogue's bytes (stall timeout: 10 s)
TRICKLE_BYTES = 60  # bounded: two minutes of trickle at most
KINDS = 14  # rogue kinds in play (the module docstring's table)
ROGUE_CAPACITY = 64  # rogues promise offers to every recipient (honest donors: 4)
GENUINE = web.AppKey("genuine", bytes)  # a rogue's copy of the genuine image
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _misbehave(kind: str) -> Any:
    """An aiohttp middleware making a transfer server lie about image bodies."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/images/") or request.method != "GET":
            return await handler(request)
        # Headers as a genuine donor sends them (the span asked for); the body lies.
        span = parse_range(request.headers.get("Range"), IMAGE_SIZE) or (0, IMAGE_SIZE - 1)
        length = span[1] - span[0] + 1
        resp = web.StreamResponse(status=206 if "Range" in request.headers else 200)
        if "Range" in request.headers:
            resp.headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{IMAGE_SIZE}"
        resp.headers["Content-Type"] = "application/octet-stream"
        if kind == "partial-have":  # its have-map (all chunks) claimed this range
            return web.Response(status=416, headers={"Content-Range": f"bytes */{IMAGE_SIZE}"})
        if kind == "partial-shifted" and "Range" in request.headers:
            # the genuine bytes of another span (one byte off), honestly labelled as that
            a, b = span[0] + 1, min(span[1] + 1, IMAGE_SIZE - 1)  # [a, b], inclusive
            if span[0] > 0:
                a, b = span[0] - 1, span[1] - 1
            resp.headers["Content-Range"] = f"bytes {a}-{b}/{IMAGE_SIZE}"
            resp.content_length = b - a + 1
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await resp.write(_genuine(request)[a:b + 1])
            return resp
        if kind == "lying-size":
            resp.content_length = 2 * length
        elif kind in ("slow", "trickle"):
            resp.content_length = length  # endless: no length, chunked, never-ending
        rng = random.Random(request.path)
        try:
            await resp.prepare(request)
            if kind == "trickle":  # never silent for the stall timeout, never useful
                for _ in range(TRICKLE_BYTES):
                    await resp.write(rng.randbytes(1))
                    await asyncio.sleep(TRICKLE_GAP)
            elif kind == "endless":
                sent, block = 0, rng.randbytes(64 * 1024)  # one block, sent again and again
                while sent < ENDLESS_LIMIT:
                    await resp.write(block)
                    sent += len(block)
            elif kind == "lying-size":
                await resp.write(rng.randbytes(length // 4))
            elif kind == "slow":
                await resp.write(rng.randbytes(16))
                await asyncio.sleep(3600)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the recipient hung up on the lie: what it should do
        if request.transport is not None:
            request.transport.close()
        return resp

    return middleware


def _genuine(request: web.Request) -> bytes:
    """The genuine image bytes a rogue's app was given (for the shifted-chunk lie)."""
    return request.app[GENUINE]


def _http_rogue(root: Path, kind: str, plan: FleetPlan, board: str,
                claim: Claim | None = None) -> RogueDonor:
    new = plan.newest(board)
    store = PackageStore(root / "store")
    plant(store, new.signed, new.image)
    rogue = RogueDonor(donor_id=f"rogue-{kind}", store=store, network=plan.network,
                       claim=claim or Claim())
    rogue.server.app[GENUINE] = new.image.read_bytes()
    rogue.server.app.middlewares.append(_misbehave(kind))
    return rogue


@contextlib.contextmanager
def watch_replays(replay: ReplayRogue) -> Iterator[Counter[str]]:
    """Count what the recipients' codecs (every session of every agent in this process)
    do with the replay rogue's datagrams: the refusal, or ``passed the codec``. A node
    runs several sessions (swarm slots, rounds), each with its own codec and replay
    cache, so a replay that reaches a session which never saw the original passes the
    codec; that session's xid/state checks then drop it (a replay never binds: the
    soak's verdicts show it)."""
    seen: Counter[str] = Counter()
    decode = Codec.decode

    def watched(self: Codec, data: bytes, now: float) -> Any:
        kind = replay.sent.get(data)
        if kind is not None and not isinstance(sys._getframe(1).f_locals.get("self"),
                                               RecipientSession):
            kind = None  # counted where they are aimed: the recipients' sessions
        try:
            msg = decode(self, data, now)
        except RemoteProtocolError as e:
            if kind is not None:
                seen[f"{kind}: refused, {e.message}"] += 1
            raise
        if kind is not None:
            seen[f"{kind}: passed the codec"] += 1
        return msg

    setattr(Codec, "decode", watched)  # noqa: B010 - this process only, undone below
    try:
        yield seen
    finally:
        setattr(Codec, "decode", decode)  # noqa: B010


def _unsigned(root: Path, plan: FleetPlan, board: str) -> RogueDonor:
    new = plan.newest(board)
    zero = SignedManifest.parse(SignedManifest.envelope(new.signed.manifest, bytes(64)))
    store = PackageStore(root / "store")
    plant(store, zero, new.image)
    return RogueDonor(donor_id="rogue-unsigned", store=store, network=plan.network,
                      claim=Claim())


class RogueSoak:
    def __init__(self, root: Path, *, recipients: int, seed: int) -> None:
        timers = TimerSettings(startup_jitter=0.02, offer_window=0.1, backoff_initial=0.2,
                               backoff_max=0.5, max_solicits=8, accept_timeout=0.5,
                               enough_offers=16)
        # nodes alternate boards a/b and versions; board-a nodes 0, 2, 4… ; the honest peer
        # and the recipients are board-a nodes on the newest release
        key = root / "fleet.key"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(random.Random(seed).randbytes(32).hex().encode())
        network = dataclasses.replace(isolated_network(random.Random(seed)),
                                      fleet_key_file=key)
        self.plan = build_fleet(root / "fleet", nodes=4 * (recipients + 1), boards=2,
                                image_size=IMAGE_SIZE, network=network, timers=timers,
                                seed=seed)
        board_a = [n for n in self.plan.nodes if n.board == "board-a"
                   and n.release == self.plan.newest("board-a")]
        self.honest_spec, self.recipient_specs = board_a[0], board_a[1:1 + recipients]
        self.genuine = self.plan.newest("board-a")
        self.root = root
        self.rng = random.Random(seed)
        self.rogues: list[RogueDonor] = []
        self.slow: list[RogueDonor] = []
        self.replay: ReplayRogue | None = None

    def build_rogues(self) -> None:
        plan, root, net = self.plan, self.root / "rogues", self.plan.network
        old, new = plan.releases["board-a"]
        evil = root / "evil.bin"
        evil.parent.mkdir(parents=True, exist_ok=True)
        evil.write_bytes(random.Random(666).randbytes(IMAGE_SIZE))
        other = plan.newest("board-b")
        half = Claim(held=max(1, new.signed.manifest.chunk_count // 2))  # a partial donor
        self.rogues = [
            rolled_back(root / "rollback", donor_id="rogue-rollback", network=net,
                        signed=old.signed, image=old.image),
            rogue_signed(root / "key", donor_id="rogue-key", network=net, board="board-a",
                         image=evil),
            _unsigned(root / "unsigned", plan, "board-a"),
            other_board(root / "board", donor_id="rogue-board", network=net,
                        signed=other.signed, image=other.image, claimed_boards=["board-a"]),
            corrupted_carrier(root / "bitflip", donor_id="rogue-bitflip", network=net,
                              signed=new.signed, image=new.image),
            _http_rogue(root / "endless", "endless", plan, "board-a"),
            _http_rogue(root / "lying", "lying-size", plan, "board-a"),
            _http_rogue(root / "partial-have", "partial-have", plan, "board-a", half),
            _http_rogue(root / "partial-shifted", "partial-shifted", plan, "board-a", half),
            corrupted_carrier(root / "partial-bitflip", donor_id="rogue-partial-bitflip",
                              network=net, signed=new.signed, image=new.image,
                              flip_all=True, claim=half),
        ]
        self.build_slow()

    @staticmethod
    def _break(agent: Agent, spec: NodeSpec) -> None:
        """Corrupt the flash's reset-vector end and drop the stored copy (what corrupt_node
        does before a start), on a running agent."""
        size = spec.release.signed.manifest.size
        with open(spec.flash_path, "r+b") as f:
            f.seek(size - CORRUPT_BYTES)
            f.write(os.urandom(CORRUPT_BYTES))
        store = agent.store.root
        for sub in ("manifests", "images"):
            for p in (store / sub).iterdir():
                p.unlink()
        agent.store.refresh()

    async def _round(self, agent: Agent, spec: NodeSpec, written: list[str]) -> dict[str, Any]:
        self._break(agent, spec)
        start = len(written)
        started = time.perf_counter()
        result = await asyncio.wait_for(agent.recover("bios", "soak: corrupted"), ROUND_TIMEOUT)
        seconds = time.perf_counter() - started
        transcript = agent.engine("bios").transcript()
        image = self.genuine.image.read_bytes()
        offers = Counter(e["offer"]["donor_id"] for e in transcript
                         if e["event"] == "OfferReceived" and "offer" in e)
        acked = Counter(e["offer"]["donor_id"] for e in transcript
                        if e["event"] == "DonorAcked" and "offer" in e)
        mine = written[start:]
        bad = [d for d in mine if d != self.genuine.signed.manifest.sha256]
        stats = agent.fetchers["bios"].last_stats
        by_donor = dict(stats.bytes_by_donor) if stats is not None else {}
        honest_bytes = sum(n for d, n in by_donor.items() if not d.startswith("rogue-"))
        return {
            "seconds": seconds, "ok": bool(result.ok),
            # every agent is honest: the peer, and recipients that recovered and donate.
            # A swarm keeps every chunk that matches the signed manifest, so a rogue's
            # genuine chunks may be among them; an honest donor must have served too.
            "honest": honest_bytes > 0,
            "rogue_chunks": any(d.startswith("rogue-") and n > 0 for d, n in by_donor.items()),
            "offers_by": {d: n for d, n in offers.items() if d.startswith("rogue-")},
            "dropped": {} if stats is None else {
                d: why for d, why in {**stats.released, **stats.dropped}.items()
                if d.startswith("rogue-")},
            "flash_ok": hashlib.sha256(spec.flash_path.read_bytes()[:len(image)]).digest()
            == hashlib.sha256(image).digest(),
            "bad_flashes": len(bad), "writes": len(mine), "reason": result.reason,
            "donor": result.donor_id, "origin": result.origin,
            "rogue_offers": sum(n for d, n in offers.items() if d.startswith("rogue-")),
            "rogue_transfers": sum(n for d, n in acked.items() if d.startswith("rogue-")),
        }

    async def run(self, rounds: int, baseline: int, slow_every: int,
                  progress: Callable[[int, list[dict[str, Any]], Counter[str]], None]
                  | None = None, progress_every: int = 25) -> dict[str, Any]:
        honest = Agent(self.honest_spec.config)
        recipients = [Agent(s.config) for s in self.recipient_specs]
        await honest.start(run_startup_checks=False)
        for agent in recipients:
            await agent.start(run_startup_checks=False)
        writes = [record_flash_writes(a) for a in recipients]
        pairs = list(zip(recipients, self.recipient_specs, writes, strict=True))
        net = self.plan.network
        self.replay = replay = ReplayRogue(group=net.group, port=net.port,
                                           node_ids=[s.node_id for s in self.recipient_specs])
        for agent in [honest, *recipients]:
            replay.tap(agent.link)
        base: list[float] = []
        records: list[dict[str, Any]] = []
        with watch_replays(replay) as replays:
            try:
                for _ in range(baseline):
                    got = await asyncio.gather(*(self._round(a, s, w) for a, s, w in pairs))
                    base += [g["seconds"] for g in got if g["ok"]]
                self.build_rogues()
                for rogue in self.rogues:
                    await self._start_rogue(rogue)
                await replay.start()
                for n in range(rounds):
                    slow = slow_every > 0 and n % slow_every == 0
                    if slow:
                        for rogue in self.slow:
                            await self._start_rogue(rogue)
                    replay.replay_old()
                    try:
                        got = await asyncio.gather(*(self._round(a, s, w)
                                                     for a, s, w in pairs))
                    finally:
                        if slow:
                            for rogue in self.slow:
                                await rogue.stop()
                            self.build_slow()
                    for g in got:
                        g["slow"] = slow
                    records += got
                    if progress is not None and (n + 1) % progress_every == 0:
                        progress(n + 1, records, replays)
            finally:
                await replay.stop()
                for rogue in self.rogues:
                    await rogue.stop()
                for agent in [*recipients, honest]:
                    await agent.stop()
        return {"baseline": base, "records": records, "replays": replays,
                "replays_sent": dict(replay.counts)}

    @staticmethod
    async def _start_rogue(rogue: RogueDonor) -> None:
        await rogue.start()
        assert rogue.responder is not None  # rogues promise offers to every recipient
        rogue.responder.limits = dataclasses.replace(rogue.responder.limits,
                                                     capacity=ROGUE_CAPACITY)

    def build_slow(self) -> None:
        """Fresh slow and trickling rogues (a stopped DonorService is not restarted)."""
        for kind in ("slow", "trickle"):
            shutil.rmtree(self.root / "rogues" / kind, ignore_errors=True)
        self.slow = [_http_rogue(self.root / "rogues" / kind, kind, self.plan, "board-a")
                     for kind in ("slow", "trickle")]


def totals(records: list[dict[str, Any]], replays: Counter[str]) -> dict[str, int]:
    """Rogue offers received, rogue transfers tried, replays refused, their sum."""
    offers = sum(r["rogue_offers"] for r in records)
    transfers = sum(r["rogue_transfers"] for r in records)
    refused = sum(n for k, n in replays.items() if not k.endswith("passed the codec"))
    return {"offers": offers, "transfers": transfers, "replays_refused": refused,
            "all": offers + transfers + refused}


def summarize(out: dict[str, Any], seconds: float) -> tuple[list[str], bool]:
    records, base = out["records"], out["baseline"]
    replays: Counter[str] = out.get("replays", Counter())
    baseline = statistics.median(base) if base else 0.0
    delays = sorted(max(0.0, r["seconds"] - baseline) for r in records)
    t = totals(records, replays)
    failed = [r for r in records
              if not (r["ok"] and r["honest"] and r["flash_ok"] and r["writes"] >= 1)]
    bad = sum(r["bad_flashes"] for r in records)
    slow = [max(0.0, r["seconds"] - baseline) for r in records if r["slow"]]
    by_rogue: Counter[str] = Counter()
    for r in records:
        by_rogue.update(r.get("offers_by", {}))
    lines = [
        f"rogue-donor soak: {len(records):,} recoveries against {KINDS} kinds of rogue "
        f"donors, {seconds:.0f} s",
        f"  rogue offers received:    {t['offers']:,}",
        f"  rogue transfers tried:    {t['transfers']:,}",
        f"  replayed datagrams refused by recipients' codecs: {t['replays_refused']:,} "
        f"(replays sent: {out.get('replays_sent', {})})",
        f"  offers + transfers + refused replays: {t['all']:,}",
        f"  bad flashes:              {bad}",
        f"  recoveries not finished from an honest donor: {len(failed)}",
        f"  recoveries with verified chunks from a rogue (its genuine chunks): "
        f"{sum(1 for r in records if r.get('rogue_chunks'))}",
        f"  baseline recovery (honest agents alone): median {baseline:.2f} s over "
        f"{len(base)} runs",
        f"  delay caused by rogues:   median {statistics.median(delays) if delays else 0:.2f}"
        f" s, worst {delays[-1] if delays else 0:.2f} s",
    ]
    if slow:
        lines.append(f"  rounds with the slow and trickling rogues: {len(slow)}, delay median "
                     f"{statistics.median(slow):.2f} s, worst {max(slow):.2f} s")
    lines.append("  offers received, by rogue: " + ", ".join(
        f"{d.removeprefix('rogue-')} {n:,}" for d, n in sorted(by_rogue.items())))
    drops: Counter[str] = Counter()
    for r in records:
        drops.update(r.get("dropped", {}).keys())
    lines.append("  recoveries that dropped each rogue (with a logged reason): " + ", ".join(
        f"{d.removeprefix('rogue-')} {n:,}" for d, n in sorted(drops.items())))
    lines.append("  replays reaching a recipient's session, by what its codec did:")
    lines += [f"    {k}: {n:,}" for k, n in sorted(replays.items())]
    for r in failed[:10]:
        lines.append(f"    failed: ok={r['ok']} from={r['donor']} ({r['origin']}) "
                     f"flash_ok={r['flash_ok']} writes={r['writes']}: {r['reason'][:160]}")
    return lines, bool(failed) or bad > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.rogue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("SOAK_ROUNDS", 100)))
    parser.add_argument("--recipients", type=int, default=8)
    parser.add_argument("--baseline", type=int, default=5)
    parser.add_argument("--slow-every", type=int, default=50)
    parser.add_argument("--progress-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261202)
    opts = parser.parse_args(argv)
    if not 1 <= opts.rounds <= 1_000_000 or not 1 <= opts.recipients <= 16:
        parser.error("--rounds must be within 1..1000000, --recipients within 1..16")
    if opts.progress_every < 1:
        parser.error("--progress-every must be at least 1")
    logging.basicConfig(level=logging.CRITICAL)  # refusals are the point, not news
    started = time.perf_counter()

    def progress(n: int, records: list[dict[str, Any]], replays: Counter[str]) -> None:
        t = totals(records, replays)
        failed = sum(1 for r in records if not (r["ok"] and r["honest"] and r["flash_ok"]))
        print(f"  progress: round {n:,}/{opts.rounds:,}, {len(records):,} recoveries, "
              f"offers+transfers+refused replays {t['all']:,}, bad flashes "
              f"{sum(r['bad_flashes'] for r in records)}, not from an honest donor {failed}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)

    print(f"rogue-donor soak: {opts.rounds:,} rounds x {opts.recipients} recipients "
          f"(seed {opts.seed})", flush=True)
    with tempfile.TemporaryDirectory(prefix="fwrescue-rogue-") as tmp:
        soak = RogueSoak(Path(tmp), recipients=opts.recipients, seed=opts.seed)
        out = asyncio.run(soak.run(opts.rounds, opts.baseline, opts.slow_every, progress,
                                   opts.progress_every))
    lines, failed = summarize(out, time.perf_counter() - started)
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
