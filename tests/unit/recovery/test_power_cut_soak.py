"""The short in-suite version of ``make soak``'s power-cut part (soak/powercut.py): seeded
cuts of chip ops and state writes (journal, installed record, anti-rollback floor,
transcript) on single- and dual-bank 16 MiB flash, DC-off and DC-on; no host bricked."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from soak.powercut import Case, PowerCutSoak, Totals, plan_cases, run_cases

from fwrescue.host.base import FlashMode

SEED = 20261202
CASES = 32


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[PowerCutSoak, Totals]:
    root = tmp_path_factory.mktemp("powercut")
    soak = PowerCutSoak(root, SEED)
    return soak, asyncio.run(soak.totals(root / "measure"))


def test_an_update_is_every_kind_of_write_the_soak_cuts(
        soak: tuple[PowerCutSoak, Totals]) -> None:
    _, totals = soak
    for (layout, _mode), ops in totals.chip_ops.items():
        # a full 16 MiB rewrite: one 64 KiB erase and one program per block, plus the
        # two marker ops (erase, program) on a dual-bank chip
        assert ops == 512 + (2 if layout == "dual" else 0)
    # DETECTED, LOCATING, STAGED, FLASHING, BOOTING, installed record, floor, transcript
    assert set(totals.fs_writes.values()) == {8}
    assert totals.fs_paths[:6] == ["journal.json"] * 5 + ["installed.manifest"]
    assert totals.fs_paths[6] == "floor.json" and totals.fs_paths[7].endswith(".json")


def test_seeded_power_cuts_never_brick_a_host(soak: tuple[PowerCutSoak, Totals],
                                             tmp_path: Path) -> None:
    instance, totals = soak
    cases = plan_cases(CASES, SEED, totals, fs_share=0.4)
    # every setup and both cut kinds are in the short run, and the floor write is cut
    assert {(c.layout, c.mode, c.kind) for c in cases} == {
        (layout, mode, kind) for layout in ("single", "dual")
        for mode in (FlashMode.DC_OFF, FlashMode.DC_ON) for kind in ("chip", "fs")}
    floor_write = totals.fs_paths.index("floor.json") + 1  # raised after the boot
    cases += [Case(CASES + i, layout, FlashMode.DC_ON, "fs", floor_write, step)
              for i, (layout, step) in enumerate(
                  [("single", "before"), ("dual", "after"), ("single", "after")])]
    cases += [Case(CASES + 10 + i, "dual", FlashMode.DC_OFF, "chip", op, seed=op)
              for i, op in enumerate((513, 514))]  # the marker erase and program
    bricked, kinds = run_cases(instance, cases, tmp_path, max(1, min(2, os.cpu_count() or 1)))
    assert bricked == {}
    assert sum(kinds.values()) == len(cases)
