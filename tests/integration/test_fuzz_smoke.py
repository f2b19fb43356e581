"""Every fuzz target runs briefly (a few seconds each, real atheris/libFuzzer processes)
from the committed seed corpus and finds no crash; `make fuzz` runs the long version."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
SECONDS_PER_TARGET = 3
EXECS = 20_000  # the fast targets reach it within the 3 s, the slow ones stop at the cap
ROW = re.compile(r"^(\w+)\s+([\d,]+)\s+([\d,]+)\s+(\d+)\s+\d+\s+(yes|no)$", re.M)


def test_every_fuzz_target_runs_from_its_seeds_without_a_crash(tmp_path: Path) -> None:
    for name in TARGETS:
        assert list((REPO / "fuzz" / "corpus" / name).iterdir()), f"no seeds for {name}"
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--seconds", str(SECONDS_PER_TARGET),
         "--execs", str(EXECS), "--workdir", str(tmp_path)], cwd=REPO, capture_output=True,
        text=True, timeout=60 * len(TARGETS), check=False)
    rows = {m[0]: (int(m[1].replace(",", "")), int(m[3]), m[4])
            for m in ROW.findall(proc.stdout)}
    assert set(rows) == set(TARGETS), proc.stdout + proc.stderr[-2000:]
    for name, (execs, crashes, reached) in rows.items():
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert crashes == 0, f"{name} crashed:\n{log[-3000:]}"
        assert execs > 0, f"{name} never ran:\n{log[-3000:]}"
        # each stops at --execs (libFuzzer -runs) or the time cap, and says which
        assert execs <= EXECS, proc.stdout
        assert (reached == "yes") == (execs == EXECS), proc.stdout
    assert proc.returncode == 0, proc.stdout
