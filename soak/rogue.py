"""Rogue-donor soak: real agents recover again and again while rogue donors answer first.
``python -m soak.rogue --rounds N``.

A fleet of real :class:`~fwrescue.agent.Agent` s on loopback (their own multicast group):
one honest peer and ``--recipients`` recipients, plus rogue donors — the genuine donor code
(:class:`tests.fakes.rogue.RogueDonor`) with lies planted in its store or its transfer
server — that offer at once, claim the newest version and never suppress themselves:

========================  ===========================================================
rogue                     lie
========================  ===========================================================
``rogue-rollback``        a genuinely signed older release (below the floor)
``rogue-key``             an image signed by a key the fleet does not trust
``rogue-unsigned``        the genuine manifest with an all-zero signature
``rogue-board``           a genuine release of another board offered as this board's
``rogue-bitflip``         the genuine manifest, one byte of a chunk flipped on disk
``rogue-endless``         the right Content-Range, then an endless chunked body
``rogue-lying-size``      a Content-Length twice the span, a quarter of it, a hang-up
``rogue-slow``            a few bytes, then silence until the recipient's stall timeout
                          (only every ``--slow-every``-th round: each costs a stall)
========================  ===========================================================

Each round corrupts every recipient's flash, removes its stored copy, and runs a recovery
(recipients in parallel). A round passes when the recovery succeeded from an honest
donor (the peer, or a recipient that recovered earlier and donates), the only image ever
handed to the flash is the genuine one, and the flash holds it. Before the rogues start,
``--baseline`` rounds with the honest agents alone give the
undisturbed recovery time; each round's delay is its time minus that median. At the end:
rogue offers and transfers received, bad flashes, failed rounds, delay median and worst.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from tests.fakes.rogue import (
    Claim,
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
from fwrescue.image.store import PackageStore
from fwrescue.sim.fleet import CORRUPT_BYTES, FleetPlan, NodeSpec, build_fleet, isolated_network
from fwrescue.transfer.server import parse_range
from fwrescue.trust.manifest import SignedManifest

__all__ = ["RogueSoak", "main"]

IMAGE_SIZE = 256 * 1024
ENDLESS_LIMIT = 64 * 1024 * 1024  # an endless body still ends here (loops stay bounded)
ROUND_TIMEOUT = 120.0
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
        if kind == "lying-size":
            resp.content_length = 2 * length
        elif kind == "slow":
            resp.content_length = length  # endless: no length, chunked, never-ending
        rng = random.Random(request.path)
        try:
            await resp.prepare(request)
            if kind == "endless":
                sent = 0
                while sent < ENDLESS_LIMIT:
                    await resp.write(rng.randbytes(64 * 1024))
                    sent += 64 * 1024
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


def _http_rogue(root: Path, kind: str, plan: FleetPlan, board: str) -> RogueDonor:
    new = plan.newest(board)
    store = PackageStore(root / "store")
    plant(store, new.signed, new.image)
    rogue = RogueDonor(donor_id=f"rogue-{kind}", store=store, network=plan.network,
                       claim=Claim())
    rogue.server.app.middlewares.append(_misbehave(kind))
    return rogue


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
        self.plan = build_fleet(root / "fleet", nodes=4 * (recipients + 1), boards=2,
                                image_size=IMAGE_SIZE, network=isolated_network(
                                    random.Random(seed)), timers=timers, seed=seed)
        board_a = [n for n in self.plan.nodes if n.board == "board-a"
                   and n.release == self.plan.newest("board-a")]
        self.honest_spec, self.recipient_specs = board_a[0], board_a[1:1 + recipients]
        self.genuine = self.plan.newest("board-a")
        self.root = root
        self.rng = random.Random(seed)
        self.rogues: list[RogueDonor] = []
        self.slow: RogueDonor | None = None

    def build_rogues(self) -> None:
        plan, root, net = self.plan, self.root / "rogues", self.plan.network
        old, new = plan.releases["board-a"]
        evil = root / "evil.bin"
        evil.parent.mkdir(parents=True, exist_ok=True)
        evil.write_bytes(random.Random(666).randbytes(IMAGE_SIZE))
        other = plan.newest("board-b")
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
        ]
        self.slow = _http_rogue(root / "slow", "slow", plan, "board-a")

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
        return {
            "seconds": seconds, "ok": bool(result.ok),
            # every agent is honest: the peer, and recipients that recovered and donate
            "honest": result.donor_id is not None and not result.donor_id.startswith("rogue-"),
            "flash_ok": hashlib.sha256(spec.flash_path.read_bytes()[:len(image)]).digest()
            == hashlib.sha256(image).digest(),
            "bad_flashes": len(bad), "writes": len(mine), "reason": result.reason,
            "donor": result.donor_id, "origin": result.origin,
            "rogue_offers": sum(n for d, n in offers.items() if d.startswith("rogue-")),
            "rogue_transfers": sum(n for d, n in acked.items() if d.startswith("rogue-")),
        }

    async def run(self, rounds: int, baseline: int, slow_every: int) -> dict[str, Any]:
        honest = Agent(self.honest_spec.config)
        recipients = [Agent(s.config) for s in self.recipient_specs]
        await honest.start(run_startup_checks=False)
        for agent in recipients:
            await agent.start(run_startup_checks=False)
        writes = [record_flash_writes(a) for a in recipients]
        pairs = list(zip(recipients, self.recipient_specs, writes, strict=True))
        base: list[float] = []
        records: list[dict[str, Any]] = []
        try:
            for _ in range(baseline):
                got = await asyncio.gather(*(self._round(a, s, w) for a, s, w in pairs))
                base += [g["seconds"] for g in got if g["ok"]]
            self.build_rogues()
            for rogue in self.rogues:
                await rogue.start()
            for n in range(rounds):
                slow = self.slow is not None and slow_every > 0 and n % slow_every == 0
                if slow and self.slow is not None:
                    await self.slow.start()
                try:
                    got = await asyncio.gather(*(self._round(a, s, w) for a, s, w in pairs))
                finally:
                    if slow and self.slow is not None:
                        await self.slow.stop()
                        self.build_slow()
                for g in got:
                    g["slow"] = slow
                records += got
        finally:
            for rogue in self.rogues:
                await rogue.stop()
            for agent in [*recipients, honest]:
                await agent.stop()
        return {"baseline": base, "records": records}

    def build_slow(self) -> None:
        """A fresh slow rogue (a stopped DonorService is not restarted)."""
        shutil.rmtree(self.root / "rogues" / "slow", ignore_errors=True)
        self.slow = _http_rogue(self.root / "rogues" / "slow", "slow", self.plan, "board-a")


def summarize(out: dict[str, Any], seconds: float) -> tuple[list[str], bool]:
    records, base = out["records"], out["baseline"]
    baseline = statistics.median(base) if base else 0.0
    delays = sorted(max(0.0, r["seconds"] - baseline) for r in records)
    offers = sum(r["rogue_offers"] for r in records)
    transfers = sum(r["rogue_transfers"] for r in records)
    failed = [r for r in records
              if not (r["ok"] and r["honest"] and r["flash_ok"] and r["writes"] >= 1)]
    bad = sum(r["bad_flashes"] for r in records)
    slow = [max(0.0, r["seconds"] - baseline) for r in records if r["slow"]]
    lines = [
        f"rogue-donor soak: {len(records):,} recoveries against 8 kinds of rogue donors, "
        f"{seconds:.0f} s",
        f"  rogue offers received:    {offers:,}",
        f"  rogue transfers tried:    {transfers:,}",
        f"  offers + transfers:       {offers + transfers:,}",
        f"  bad flashes:              {bad}",
        f"  recoveries not finished from an honest donor: {len(failed)}",
        f"  baseline recovery (honest agents alone): median {baseline:.2f} s over "
        f"{len(base)} runs",
        f"  delay caused by rogues:   median {statistics.median(delays) if delays else 0:.2f}"
        f" s, worst {delays[-1] if delays else 0:.2f} s",
    ]
    if slow:
        lines.append(f"  rounds with the slow rogue: {len(slow)}, delay median "
                     f"{statistics.median(slow):.2f} s, worst {max(slow):.2f} s")
    for r in failed[:10]:
        lines.append(f"    failed: ok={r['ok']} from={r['donor']} ({r['origin']}) "
                     f"flash_ok={r['flash_ok']} writes={r['writes']}: {r['reason'][:160]}")
    return lines, bool(failed) or bad > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.rogue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("SOAK_ROUNDS", 800)))
    parser.add_argument("--recipients", type=int, default=4)
    parser.add_argument("--baseline", type=int, default=5)
    parser.add_argument("--slow-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20261202)
    opts = parser.parse_args(argv)
    if not 1 <= opts.rounds <= 1_000_000 or not 1 <= opts.recipients <= 16:
        parser.error("--rounds must be within 1..1000000, --recipients within 1..16")
    logging.basicConfig(level=logging.CRITICAL)  # refusals are the point, not news
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fwrescue-rogue-") as tmp:
        soak = RogueSoak(Path(tmp), recipients=opts.recipients, seed=opts.seed)
        out = asyncio.run(soak.run(opts.rounds, opts.baseline, opts.slow_every))
    lines, failed = summarize(out, time.perf_counter() - started)
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
