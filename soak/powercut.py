"""Power-cut soak: seeded BMC power cuts during a 16 MiB update, the agent restarted after
each, never a bricked host. ``python -m soak.powercut --cuts 10000``.

Each case updates a 16 MiB image A to B (random images: every 4 KiB sector differs)
through the real engine, erase-aware writer, bank layout and journal, on an in-memory
NOR chip wrapped in :class:`~fwrescue.flash.faults.FaultyChip`, and cuts the BMC's power
once at a seeded point:

* **chip** — the N-th erase or program reaching the chip (torn at a seeded byte): the
  image erases and programs, and on a dual-bank chip the bank-marker erase and program;
* **fs** — the N-th atomic file write of the agent's state (journal records, the
  installed-image record, the anti-rollback floor, the transcript), either before the
  rename (a torn temp file is left, the old file stays) or just after it.

Layouts: single bank, dual bank (two 16 MiB banks + marker); flash modes DC-off (host
powered off) and DC-on (host held in reset). Power comes back, a *new* engine is built
on the same state (the agent restarting), runs ``startup()`` and then a guarded
power-on. A case is **bricked** unless: the host runs a genuine image (A or B) and booted;
it never ran on anything else (never released onto unverified flash); no erase/program
reached the chip while the host ran; the journal is closed; the anti-rollback floor is
readable and never below where it started, nor above the running image's.

Cases are independent and run in forked worker processes (``--workers``, default the
core count). The in-suite versions (tests/unit/recovery/test_power_cut_sweep.py and
test_power_cut_soak.py) reuse this machinery on fewer cases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tests.fakes.firmware import Signer

from fwrescue import atomicfile
from fwrescue.errors import FlashPowerLoss
from fwrescue.flash.device import FlashChip, FlashGeometry
from fwrescue.flash.faults import FaultPlan, FaultyChip
from fwrescue.flash.filechip import MemoryChip
from fwrescue.flash.layout import BankedFlash, FlashLayout, FlashRegion
from fwrescue.flash.writer import EraseAwareFlash
from fwrescue.host.base import BootResult, FlashMode, PowerState
from fwrescue.image.store import PackageStore
from fwrescue.recovery import journal as journal_module
from fwrescue.recovery.engine import EngineSettings, RecoveryEngine
from fwrescue.recovery.journal import Journal
from fwrescue.recovery.ports import Located, TranscriptLog
from fwrescue.trust import rollback as rollback_module
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import VerifiedManifest

__all__ = ["Case", "PowerCutSoak", "StoredLocator", "SweepHost", "WatchedChip", "plan_cases"]

IMAGE = 16 * 1024 * 1024
BLOCK = 64 * 1024
MARKER = 2 * IMAGE  # dual bank: bank A at 0, bank B at IMAGE, the marker after them
DUAL_CHIP = 2 * IMAGE + BLOCK
#: a worker answering nothing for this long is hung (a case takes well under a second)
WORKER_TIMEOUT_PER_CASE = 30.0


class SweepHost:
    """A model host that records, at every power-on or release, which image it runs.

    ``view()`` returns the bytes the host would execute (the region, or the active bank).
    """

    def __init__(self, view: Callable[[], bytes], genuine: dict[str, bytes]) -> None:
        self._view = view
        self._genuine = genuine
        self.state = PowerState.ON  # running image A when the update starts
        self.runs: list[str | None] = []  # "A"/"B", or None: ran on unverified flash

    def _run(self) -> None:
        self.state = PowerState.ON
        flash = self._view()
        self.runs.append(next((n for n, image in self._genuine.items() if flash == image), None))

    async def power_state(self) -> PowerState:
        return self.state

    async def power_on(self) -> None:
        if self.state is not PowerState.ON:
            self._run()

    async def power_off(self) -> None:
        self.state = PowerState.OFF

    async def hold_reset(self) -> None:
        self.state = PowerState.RESET_HELD

    async def release_reset(self) -> None:
        if self.state is PowerState.RESET_HELD:
            self._run()

    async def wait_boot(self, timeout: float) -> BootResult:
        booted = self.state is PowerState.ON and bool(self.runs) and self.runs[-1] is not None
        return BootResult(booted=booted, seconds=0.0)

    async def close(self) -> None:
        return None

    @property
    def running(self) -> str | None:
        """The image the host runs now ("A"/"B"), None if off/held or on anything else."""
        return self.runs[-1] if self.state is PowerState.ON and self.runs else None


class WatchedChip:
    """Counts erases/programs that reach the chip while the host is running."""

    def __init__(self, chip: FlashChip, host: SweepHost) -> None:
        self._chip = chip
        self._host = host
        self.while_running = 0

    @property
    def geometry(self) -> FlashGeometry:
        return self._chip.geometry

    def read(self, offset: int, length: int) -> bytes:
        return self._chip.read(offset, length)

    def erase(self, offset: int, length: int) -> None:
        self._watch()
        self._chip.erase(offset, length)

    def program(self, offset: int, data: bytes) -> None:
        self._watch()
        self._chip.program(offset, data)

    def _watch(self) -> None:
        if self._host.state is PowerState.ON:
            self.while_running += 1


class StoredLocator:
    """A predetermined source whose package is already staged in the store."""

    def __init__(self, verified: VerifiedManifest, image: Path) -> None:
        self._verified = verified
        self._image = image

    async def locate(self, target: str, machine_name: str, workdir: Path,
                     log: TranscriptLog) -> Located | None:
        return Located(verified=self._verified, image=self._image, origin="usb:/sweep")


class PowerCut(FlashPowerLoss):
    """The BMC lost power during a state-file write (fs cuts)."""


class FsCuts:
    """Counts the agent's atomic state writes; cuts power at the armed one (module doc).

    Installed by patching ``atomic_write`` where the journal and the floor store call it
    (this process only: a soak worker)."""

    def __init__(self) -> None:
        self.writes = 0
        self.paths: list[str] = []  # file names written since arm()
        self._armed: tuple[int, str] | None = None
        self._real = atomicfile.atomic_write

    def arm(self, at: int | None, step: str = "before") -> None:
        self.writes = 0
        self.paths = []
        self._armed = None if at is None else (at, step)

    def __call__(self, path: Path, data: bytes) -> None:
        self.writes += 1
        self.paths.append(path.name)
        if self._armed is not None and self._armed[0] == self.writes:
            step = self._armed[1]
            self._armed = None
            if step == "before":  # part of the temp file reached the disk; no rename
                (path.parent / f".{path.name}.torn.tmp").write_bytes(data[: len(data) // 2])
                raise PowerCut("power lost before the rename", path=path.name)
            self._real(path, data)
            raise PowerCut("power lost after the rename", path=path.name)
        self._real(path, data)

    @contextlib.contextmanager
    def installed(self) -> Iterator[FsCuts]:
        modules = (journal_module, rollback_module)  # each calls its own bound name
        saved = [getattr(m, "atomic_write") for m in modules]  # noqa: B009
        for m in modules:
            setattr(m, "atomic_write", self)  # noqa: B010
        try:
            yield self
        finally:
            for m, original in zip(modules, saved, strict=True):
                setattr(m, "atomic_write", original)  # noqa: B010


@dataclass(frozen=True)
class Case:
    number: int
    layout: str  # "single" | "dual"
    mode: FlashMode
    kind: str  # "chip" | "fs"
    at: int  # the op or write number the power is cut at (1-based)
    step: str = ""  # fs: "before" | "after" the rename
    seed: int = 0

    @property
    def label(self) -> str:
        where = f"op {self.at}" if self.kind == "chip" else f"write {self.at} {self.step}"
        return f"#{self.number} {self.layout} {self.mode.value} {self.kind} {where}"


@dataclass
class Totals:
    """How many chip ops and state writes an uninterrupted update makes, per setup."""

    chip_ops: dict[tuple[str, FlashMode], int] = field(default_factory=dict)
    fs_writes: dict[tuple[str, FlashMode], int] = field(default_factory=dict)
    fs_paths: list[str] = field(default_factory=list)  # names, in order, of the last setup


def plan_cases(count: int, seed: int, totals: Totals, *, fs_share: float = 0.2) -> list[Case]:
    """``count`` seeded cases spread evenly over layouts and modes; ``fs_share`` of them
    cut a state write, the rest a chip op (uniform over every op of the update)."""
    rng = random.Random(seed)
    setups = [(layout, mode) for layout in ("single", "dual")
              for mode in (FlashMode.DC_OFF, FlashMode.DC_ON)]
    cases = []
    for n in range(count):
        layout, mode = setups[n % len(setups)]
        if rng.random() < fs_share:
            cases.append(Case(n, layout, mode, "fs", rng.randint(1, totals.fs_writes[
                (layout, mode)]), rng.choice(("before", "after")), seed=rng.randrange(1 << 30)))
        else:
            cases.append(Case(n, layout, mode, "chip", rng.randint(1, totals.chip_ops[
                (layout, mode)]), seed=rng.randrange(1 << 30)))
    return cases


class PowerCutSoak:
    """Images, keys and the staged B, built once and shared (read only) by the workers."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.signer = Signer(root / "keys")
        rng = random.Random(seed)
        self.a = self.signer.firmware(image=rng.randbytes(IMAGE), version="1.0.0",
                                      security_version=1)
        self.b = self.signer.firmware(image=rng.randbytes(IMAGE), version="1.1.0",
                                      security_version=2)
        verifier = self.signer.verifier(root / "setup")
        self.verified_a = verifier.verify_signed(self.a.signed, target="bios",
                                                 machine_name="board-a")
        self.verified_b = verifier.verify_signed(self.b.signed, target="bios",
                                                 machine_name="board-a")
        self.store_root = root / "store"
        stored = PackageStore(self.store_root).put(self.verified_b,
                                                   self.b.write_image(root / "b.bin"))
        self.stored_b = Path(stored.image_path)
        self.genuine = {"A": self.a.image, "B": self.b.image}
        self.fs = FsCuts()

    def engine(self, state: Path, flash: Any, host: SweepHost, mode: FlashMode) -> RecoveryEngine:
        """An engine as the agent builds one at start, on the persistent state in ``state``."""
        return RecoveryEngine(
            EngineSettings(target="bios", machine_name="board-a", node_id="soak",
                           flash_mode=mode, boot_timeout=1.0, flash_retries=0),
            flash=flash, host=host, verifier=self.signer.verifier(state),
            store=PackageStore(self.store_root), journal=Journal(state / "journal"),
            workdir=state / "work", locator=StoredLocator(self.verified_b, self.stored_b))

    def _setup(self, layout: str, state: Path) -> tuple[MemoryChip, Callable[[FlashChip], Any],
                                                        Callable[[], bytes]]:
        """A chip holding A, how to build the flash over a (wrapped) chip, the host's view."""
        Journal(state / "journal").set_installed(self.a.signed.raw)
        self.signer.verifier(state).commit_flashed(self.verified_a)  # floor 1
        if layout == "single":
            memory = MemoryChip(FlashGeometry(IMAGE), fill=self.a.image)
            return memory, lambda chip: EraseAwareFlash(chip), lambda: memory.read(0, IMAGE)
        memory = MemoryChip(FlashGeometry(DUAL_CHIP),
                            fill=self.a.image + self.a.image + b"\xff" * BLOCK)
        geometry = FlashLayout(bank_a=FlashRegion("bank-a", 0, IMAGE),
                               bank_b=FlashRegion("bank-b", IMAGE, IMAGE),
                               marker=FlashRegion("marker", MARKER, 2 * 4096))
        reader = BankedFlash(memory, geometry)

        def view() -> bytes:
            return memory.read(reader.active_bank * IMAGE, IMAGE)

        return memory, lambda chip: BankedFlash(chip, geometry), view

    async def measure(self, layout: str, mode: FlashMode, state: Path) -> tuple[int, int]:
        """(chip ops, state writes) of one uninterrupted update (names in ``self.fs.paths``)."""
        memory, build, view = self._setup(layout, state)
        faulty = FaultyChip(memory)
        host = SweepHost(view, self.genuine)
        with self.fs.installed() as fs:
            fs.arm(None)
            result = await self.engine(state, build(WatchedChip(faulty, host)), host,
                                       mode).recover("update to B")
            writes = fs.writes
        if not result.ok or host.running != "B":
            raise RuntimeError(f"the uninterrupted update failed: {result}")
        return faulty.mutating_ops, writes

    async def totals(self, work: Path) -> Totals:
        t = Totals()
        for layout in ("single", "dual"):
            for mode in (FlashMode.DC_OFF, FlashMode.DC_ON):
                ops, writes = await self.measure(layout, mode, work / f"m-{layout}-{mode.value}")
                t.chip_ops[(layout, mode)], t.fs_writes[(layout, mode)] = ops, writes
                t.fs_paths = list(self.fs.paths)
        return t

    async def run_case(self, case: Case, state: Path) -> str | None:
        """Run one case; return why the host is bricked, or None."""
        memory, build, view = self._setup(case.layout, state)
        plan = FaultPlan(power_loss_at_op=case.at if case.kind == "chip" else None,
                         seed=case.seed)
        faulty = FaultyChip(memory, plan)
        host = SweepHost(view, self.genuine)
        watched = WatchedChip(faulty, host)
        with self.fs.installed() as fs:
            fs.arm(case.at if case.kind == "fs" else None, case.step)
            try:
                await self.engine(state, build(watched), host, case.mode).recover("update to B")
            except FlashPowerLoss:
                pass
            else:
                return "power was never cut"
            fs.arm(None)
            faulty.power_restore()  # the BMC reboots; the torn chip and files stay
            try:
                floor_before = RollbackStore(state / "floor.json").floor("bios")
            except Exception as e:
                return f"anti-rollback floor unreadable after the cut: {e!r}"
            second = self.engine(state, build(watched), host, case.mode)
            await second.startup()
            await second.guarded_power_on()
        running = host.running
        if running not in ("A", "B") or not (await host.wait_boot(1.0)).booted:
            return f"host not running a genuine image: runs={host.runs} state={host.state}"
        if None in host.runs:
            return f"host released onto unverified flash: runs={host.runs}"
        if watched.while_running:
            return f"{watched.while_running} flash ops while the host ran"
        if view() != self.genuine[running]:
            return f"flash does not hold the image the host runs ({running})"
        if Journal(state / "journal").load() is not None:
            return "journal left open"
        floor = RollbackStore(state / "floor.json").floor("bios")
        if floor < max(1, floor_before):
            return f"anti-rollback floor lowered to {floor}"
        if floor > {"A": 1, "B": 2}[running]:
            return f"floor {floor} above the running image {running}"
        return None


PROGRESS_EVERY = 250  # a worker reports after this many cases


def _worker(soak: PowerCutSoak, cases: list[Case], root: Path, conn: Connection) -> None:
    """Worker process: run ``cases``; send ("progress", done, bricked) every
    PROGRESS_EVERY cases, then ("done", {label: why} bricked, Counter of kinds)."""
    async def run() -> tuple[dict[str, str], Counter[str]]:
        bricked: dict[str, str] = {}
        kinds: Counter[str] = Counter()
        for done, case in enumerate(cases, 1):
            state = root / str(case.number)
            try:
                why = await soak.run_case(case, state)
            except Exception as e:
                why = f"crashed: {e!r}"
            shutil.rmtree(state, ignore_errors=True)
            kinds[f"{case.layout}/{case.mode.value}/{case.kind}"] += 1
            if why is not None:
                bricked[case.label] = why
            if done % PROGRESS_EVERY == 0 and done < len(cases):
                conn.send(("progress", done, len(bricked)))
        return bricked, kinds

    try:
        conn.send(("done", *asyncio.run(run())))
    except BaseException as e:  # report, never hang the parent
        conn.send(("done", {"worker": f"crashed: {e!r}"}, Counter()))
    finally:
        conn.close()


def run_cases(soak: PowerCutSoak, cases: list[Case], root: Path, workers: int,
              progress: Callable[[int, int], None] | None = None,
              ) -> tuple[dict[str, str], Counter[str]]:
    """Run ``cases`` in ``workers`` forked processes; ({label: why} bricked, kinds run).

    ``progress(cases done, bricked so far)`` is called as the workers report."""
    ctx = multiprocessing.get_context("fork")
    jobs = []
    for w in range(workers):
        recv, send = ctx.Pipe(duplex=False)
        share = cases[w::workers]
        proc = ctx.Process(target=_worker, args=(soak, share, root, send))
        proc.start()
        send.close()
        jobs.append((proc, recv, len(share)))
    bricked: dict[str, str] = {}
    kinds: Counter[str] = Counter()
    done = [0] * workers
    seen = [0] * workers
    pending = {recv: w for w, (_, recv, _) in enumerate(jobs)}
    try:
        while pending:
            # a worker silent for this long is hung (a case takes well under a second)
            ready = multiprocessing.connection.wait(
                list(pending), timeout=60 + WORKER_TIMEOUT_PER_CASE * PROGRESS_EVERY)
            if not ready:
                for w in pending.values():
                    bricked[f"worker {w}"] = "no answer within the timeout"
                break
            for r in ready:
                w = next(w for c, w in pending.items() if c is r)
                recv = jobs[w][1]
                try:
                    message = recv.recv()
                except EOFError:
                    bricked[f"worker {w}"] = "exited without an answer"
                    del pending[recv]
                    continue
                if message[0] == "progress":
                    done[w], seen[w] = message[1], message[2]
                else:
                    bricked.update(message[1])
                    kinds.update(message[2])
                    done[w], seen[w] = jobs[w][2], 0
                    del pending[recv]
                    jobs[w][0].join(60)
                if progress is not None:
                    progress(sum(done), len(bricked) + sum(seen))
    finally:
        for proc, recv, _ in jobs:
            recv.close()
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return bricked, kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.powercut", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, default=int(os.environ.get("SOAK_CUTS", 10_000)))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=20261202)
    opts = parser.parse_args(argv)
    if not 1 <= opts.cuts <= 1_000_000 or not 1 <= opts.workers <= 64:
        parser.error("--cuts must be within 1..1000000 and --workers within 1..64")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fwrescue-powercut-") as tmp:
        root = Path(tmp)
        soak = PowerCutSoak(root, opts.seed)
        totals = asyncio.run(soak.totals(root / "measure"))
        cases = plan_cases(opts.cuts, opts.seed, totals)
        print(f"power-cut soak: {len(cases):,} cuts planned, {opts.workers} workers "
              f"(progress every {PROGRESS_EVERY} cases per worker)", flush=True)

        def progress(done: int, bad: int) -> None:
            took = time.perf_counter() - started
            print(f"  progress: {done:,}/{len(cases):,} cuts, {bad} bricked, {took:.0f} s",
                  flush=True)

        bricked, kinds = run_cases(soak, cases, root / "cases", opts.workers, progress)
    seconds = time.perf_counter() - started
    print(f"power-cut soak: {len(cases):,} seeded cuts (seed {opts.seed}) on a 16 MiB image, "
          f"{opts.workers} workers, {seconds:.0f} s")
    for (layout, mode), ops in sorted(totals.chip_ops.items(), key=str):
        print(f"  {layout:>6} {mode.value:<6} update = {ops} chip ops, "
              f"{totals.fs_writes[(layout, mode)]} state writes")
    for kind, n in sorted(kinds.items()):
        print(f"  {kind:<22} {n:>7,} cuts")
    print(f"  bricked hosts: {len(bricked)}")
    for label, why in sorted(bricked.items())[:50]:
        print(f"    {label}: {why}")
    return 1 if bricked or sum(kinds.values()) != len(cases) else 0


if __name__ == "__main__":
    sys.exit(main())
