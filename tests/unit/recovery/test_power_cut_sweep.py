"""Power cut at every erase-block boundary of a 16 MiB update: no host is ever bricked.

One engine updates a 16 MiB chip from image A to image B (random images, so every
4 KiB sector differs and every 64 KiB block is erased). For every 64 KiB boundary,
plus seeded random byte offsets and seeded random operation numbers (which tear
programs as well as erases), power is cut when the write reaches that point: the
engine raises FlashPowerLoss with the chip torn. Power comes back, a *new* engine is
built on the same journal, store and rollback state (the agent restarting) and runs
``startup()``. Each case must end with the chip holding B, the host booted, and the
host never powered while the flash was being changed or while it held anything but a
genuine image.

The staged image B is stored once and shared by every case; the locator hands out its
stored path, so nothing is copied or re-hashed that the engine itself does not hash. The
cases are independent, so they run in two forked worker processes (one per core).
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from soak.powercut import StoredLocator, SweepHost, WatchedChip

from fwrescue.errors import FlashPowerLoss
from fwrescue.flash.device import FlashGeometry
from fwrescue.flash.faults import FaultPlan, FaultyChip
from fwrescue.flash.filechip import MemoryChip
from fwrescue.flash.writer import EraseAwareFlash
from fwrescue.host.base import FlashMode, PowerState
from fwrescue.image.store import PackageStore
from fwrescue.recovery.engine import EngineSettings, RecoveryEngine
from fwrescue.recovery.journal import Journal, Phase
from fwrescue.trust.verifier import VerifiedManifest
from tests.fakes.firmware import Firmware, Signer

CHIP = 16 * 1024 * 1024
BLOCK = 64 * 1024
GEOMETRY = FlashGeometry(size=CHIP)
RANDOM_OFFSETS = 20
RANDOM_OPS = 8
SEED = 20240601
#: A worker runs ~140 cases of ~0.3 s; far longer means it hangs.
WORKER_TIMEOUT = 240.0


@dataclass
class Sweep:
    signer: Signer
    a: Firmware
    b: Firmware
    store_root: Path
    stored_b: Path
    verified_b: VerifiedManifest
    genuine: dict[str, bytes]
    outcomes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Cut:
    label: str
    plan: FaultPlan


def _cuts() -> list[Cut]:
    rng = random.Random(SEED)
    cuts = [Cut(f"block {i}", FaultPlan(power_loss_at_offset=i * BLOCK, seed=i))
            for i in range(CHIP // BLOCK)]
    cuts += [Cut(f"byte {x:#x}", FaultPlan(power_loss_at_offset=x, seed=x))
             for x in sorted(rng.randrange(CHIP) for _ in range(RANDOM_OFFSETS))]
    # A full A->B write is one 64 KiB erase and one program per block: 512 ops; even
    # numbers tear a program, odd ones an erase, each at a seeded random byte.
    cuts += [Cut(f"op {n}", FaultPlan(power_loss_at_op=n, seed=n))
             for n in sorted(rng.sample(range(1, 2 * CHIP // BLOCK + 1), RANDOM_OPS))]
    return cuts


def _engine(sweep: Sweep, state: Path, flash: EraseAwareFlash, host: SweepHost) -> RecoveryEngine:
    """An engine as the agent builds one at start, on the persistent state in ``state``."""
    verifier = sweep.signer.verifier(state)
    return RecoveryEngine(
        EngineSettings(target="bios", machine_name="board-a", node_id="sweep",
                       flash_mode=FlashMode.DC_OFF, boot_timeout=1.0, flash_retries=0),
        flash=flash, host=host, verifier=verifier, store=PackageStore(sweep.store_root),
        journal=Journal(state / "journal"), workdir=state / "work",
        locator=StoredLocator(sweep.verified_b, sweep.stored_b))


async def _one_cut(sweep: Sweep, cut: Cut, state: Path) -> str | None:
    """Run one case; return why the host is bricked, or None when it recovered."""
    memory = MemoryChip(GEOMETRY, fill=sweep.a.image)
    faulty = FaultyChip(memory, cut.plan)
    host = SweepHost(memory.snapshot, sweep.genuine)
    watched = WatchedChip(faulty, host)
    Journal(state / "journal").set_installed(sweep.a.signed.raw)

    first = _engine(sweep, state, EraseAwareFlash(watched), host)
    try:
        await first.recover("update to B")
    except FlashPowerLoss:
        pass
    else:
        return "power was never cut"
    record = Journal(state / "journal").load()
    if record is None or not record.phase.past_staging:
        return f"journal after the cut: {record}"

    faulty.power_restore()  # the BMC reboots; the torn chip stays as it is
    second = _engine(sweep, state, EraseAwareFlash(watched), host)
    result = await second.startup()
    if result is None or not result.ok:
        return f"restart did not recover: {result}"
    if not result.booted or host.runs[-1:] != ["B"]:
        return f"host did not boot B: runs={host.runs}"
    if None in host.runs:
        return f"host ran on unverified flash: runs={host.runs}"
    if watched.while_running:
        return f"{watched.while_running} flash ops while the host ran"
    if memory.snapshot() != sweep.b.image:
        return "chip does not hold B"
    if Journal(state / "journal").load() is not None:
        return "journal left behind"
    return None


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    signer = Signer(tmp_path / "keys")
    rng = random.Random(SEED)
    a = signer.firmware(image=rng.randbytes(CHIP), version="1.0.0", security_version=1)
    b = signer.firmware(image=rng.randbytes(CHIP), version="1.1.0", security_version=2)
    for i in range(0, CHIP, 4096):  # B differs from A in every sector, so in every block
        assert a.image[i:i + 4096] != b.image[i:i + 4096]
    verifier = signer.verifier(tmp_path / "setup")
    verified_b = verifier.verify_signed(b.signed, target="bios", machine_name="board-a")
    store = PackageStore(tmp_path / "store")
    stored = store.put(verified_b, b.write_image(tmp_path / "b.bin"))
    return Sweep(signer=signer, a=a, b=b, store_root=tmp_path / "store",
                 stored_b=stored.image_path, verified_b=verified_b,
                 genuine={"A": a.image, "B": b.image})


def test_cut_plan_covers_every_erase_block_boundary() -> None:
    cuts = _cuts()
    boundaries = {c.plan.power_loss_at_offset for c in cuts if c.label.startswith("block")}
    assert boundaries == set(range(0, CHIP, BLOCK)) and len(boundaries) == 256
    assert len(cuts) == 256 + RANDOM_OFFSETS + RANDOM_OPS


def _sweep_slice(sweep: Sweep, cuts: list[tuple[int, Cut]], root: Path,
                 conn: Connection) -> None:
    """Worker process: run some cases, send back {label: why} for the bricked ones."""
    async def run() -> dict[str, str]:
        bricked: dict[str, str] = {}
        for n, cut in cuts:
            why = await _one_cut(sweep, cut, root / str(n))
            if why is not None:
                bricked[cut.label] = why
        return bricked

    try:
        conn.send(asyncio.run(run()))
    except BaseException as e:  # report, never hang the parent
        conn.send({"worker": f"crashed: {e!r}"})
    finally:
        conn.close()


def _sweep(sweep: Sweep, cuts: list[Cut], root: Path, workers: int) -> dict[str, str]:
    """Run every case in ``workers`` forked processes; {label: why} of bricked hosts."""
    ctx = multiprocessing.get_context("fork")
    jobs = []
    numbered = list(enumerate(cuts))
    for w in range(workers):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_sweep_slice, args=(sweep, numbered[w::workers], root, send))
        proc.start()
        send.close()
        jobs.append((proc, recv))
    bricked: dict[str, str] = {}
    try:
        for w, (proc, recv) in enumerate(jobs):
            if not recv.poll(WORKER_TIMEOUT):
                bricked[f"worker {w}"] = "no answer within the timeout"
                continue
            bricked.update(recv.recv())
            proc.join(WORKER_TIMEOUT)
    finally:
        for proc, recv in jobs:
            recv.close()
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return bricked


def test_power_cut_at_every_block_boundary_never_bricks_the_host(
        sweep: Sweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cuts = _cuts()
    workers = max(1, min(2, os.cpu_count() or 1))
    started = time.perf_counter()
    bricked = _sweep(sweep, cuts, tmp_path / "cases", workers)
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\npower-cut sweep: {len(cuts)} cuts on a 16 MiB chip, "
              f"{len(bricked)} bricked hosts, {seconds:.1f} s on {workers} workers "
              f"({1000 * seconds * workers / len(cuts):.0f} ms per cut per worker)")
    assert bricked == {}
    # The stored B was shared, never consumed or rewritten by any case.
    assert hashlib.sha256(sweep.stored_b.read_bytes()).hexdigest() == sweep.b.manifest.sha256


async def test_a_torn_restart_resumes_from_the_journal_not_from_the_source(
        sweep: Sweep, tmp_path: Path) -> None:
    """One case in detail: the restart re-verifies the stored image and says so."""
    state = tmp_path / "one"
    memory = MemoryChip(GEOMETRY, fill=sweep.a.image)
    faulty = FaultyChip(memory, FaultPlan(power_loss_at_offset=100 * BLOCK + 12345))
    host = SweepHost(memory.snapshot, sweep.genuine)
    Journal(state / "journal").set_installed(sweep.a.signed.raw)
    with pytest.raises(FlashPowerLoss):
        await _engine(sweep, state, EraseAwareFlash(faulty), host).recover("update to B")
    assert faulty.torn == (100 * BLOCK, BLOCK)  # the block being erased was torn
    assert memory.snapshot() not in sweep.genuine.values()
    record = Journal(state / "journal").load()
    assert record is not None and record.phase is Phase.FLASHING
    assert host.state is PowerState.OFF and host.runs == []

    faulty.power_restore()
    engine = _engine(sweep, state, EraseAwareFlash(faulty), host)
    result = await engine.startup()
    assert result is not None and result.ok and result.booted
    events = [e["event"] for e in engine.transcript()]
    assert "restaged" in events and events.index("restaged") < events.index("flashed")
    flashed = next(e for e in engine.transcript() if e["event"] == "flashed")
    # Blocks written before the cut are skipped on resume: only the rest is erased.
    assert flashed["erased"] == CHIP // BLOCK - 100
    assert host.runs == ["B"] and memory.snapshot() == sweep.b.image
