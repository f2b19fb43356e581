"""Run the fuzz targets: ``python -m fuzz.run [--execs N] [--seconds S] [--jobs J] [TARGET ...]``.

Each target runs in its own process (libFuzzer exits when it stops), ``--jobs`` of them
at once (default: the usable cores), until it reached ``--execs`` executions (default
``$FUZZ_EXECS`` or 1,000,000) or ran ``--seconds`` (a cap per target, default
``$FUZZ_SECONDS`` or 900), so a run takes at most about ``ceil(targets / jobs) *
seconds``. Each starts from the seed corpus in the repo
(``fuzz/corpus/<target>/``, read only) plus a working corpus under ``--workdir``
(``fuzz-out/``, where new inputs and crash artifacts go). At the end one line per
target: executions, executions per second, crashes (inputs that raised an undocumented
error, with the artifact paths), seconds, and whether it reached ``--execs``. Exit
status 1 when any target crashed or did not run (not reaching ``--execs`` is reported,
not a failure).

``python -m fuzz.run --child TARGET …`` is the per-target process itself (atheris +
libFuzzer flags after ``--``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_SECONDS = 900
DEFAULT_EXECS = 1_000_000
#: targets that take longest to reach the goal: started first
_SLOW = ("config", "redfish", "package", "openbmc")
_DONE = re.compile(rb"Done (\d+) runs in")
_STATUS = re.compile(rb"^#(\d+)\s", re.M)


@dataclass
class Outcome:
    target: str
    execs: int
    crashes: list[Path]
    seconds: float
    exit_code: int


def child(target: str, libfuzzer_args: list[str]) -> None:
    """The per-target fuzzing process (never returns)."""
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["fwrescue"]):
        from fuzz import targets

        one = targets.TARGETS[target]()  # imports its parser: instrumented too

    def test_one_input(data: bytes) -> None:
        targets.run_one(target, one, data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def run_target(target: str, seconds: int, workdir: Path, *, execs: int = DEFAULT_EXECS,
               max_len: int = 8192, extra: list[str] | None = None) -> Outcome:
    """Fuzz ``target`` in a subprocess until ``execs`` executions or ``seconds`` (whichever
    comes first); count executions and crashes."""
    corpus = workdir / "corpus" / target
    artifacts = workdir / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "corpus" / target
    before = set(artifacts.iterdir())
    argv = [sys.executable, "-m", "fuzz.run", "--child", target, "--",
            f"-max_total_time={seconds}", f"-runs={execs}", f"-max_len={max_len}",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/", "-rss_limit_mb=1024", "-timeout=10",
            *(extra or []), str(corpus), str(seeds)]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT.parent, capture_output=True,
                          timeout=seconds * 4 + 120, check=False)
    elapsed = time.monotonic() - started
    log = proc.stderr + proc.stdout
    (workdir / f"{target}.log").write_bytes(log)
    done = _DONE.findall(log)
    status = _STATUS.findall(log)
    execs = int(done[-1]) if done else int(status[-1]) if status else 0
    crashes = sorted(p for p in set(artifacts.iterdir()) - before
                     if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    return Outcome(target, execs, crashes, elapsed, proc.returncode)


def _row(o: Outcome, execs_goal: int) -> str:
    rate = o.execs / o.seconds if o.seconds else 0.0
    reached = "yes" if o.execs >= execs_goal else "no"
    return (f"{o.target:<10} {o.execs:>12,} {rate:>9,.0f} {len(o.crashes):>8} "
            f"{o.seconds:>7.0f} {reached:>8}")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["--child"]:
        rest = args[2:]
        child(args[1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    from fuzz.targets import TARGETS  # the names only (not instrumented here)

    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[])
    parser.add_argument("--execs", type=int,
                        default=int(os.environ.get("FUZZ_EXECS", DEFAULT_EXECS)),
                        help="stop a target after this many executions")
    parser.add_argument("--seconds", type=int,
                        default=int(os.environ.get("FUZZ_SECONDS", DEFAULT_SECONDS)),
                        help="cap per target, in seconds")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="targets fuzzed at once (default: the usable cores)")
    parser.add_argument("--workdir", type=Path, default=Path("fuzz-out"))
    opts = parser.parse_args(args)
    if not 1 <= opts.seconds <= 86_400:
        parser.error("--seconds must be within 1..86400")
    if not 1 <= opts.execs <= 10**12:
        parser.error("--execs must be within 1..10^12")
    if not 1 <= opts.jobs <= 256:
        parser.error("--jobs must be within 1..256")
    names = opts.targets or list(TARGETS)
    names.sort(key=lambda n: n not in _SLOW)  # the slow ones start first: a shorter run
    jobs = min(opts.jobs, len(names))
    waves = -(-len(names) // jobs)
    print(f"== fuzzing {len(names)} targets, {jobs} at a time, each until "
          f"{opts.execs:,} executions or {opts.seconds} s (at most ~{waves * opts.seconds} s)",
          flush=True)
    workdir = opts.workdir.resolve()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(run_target, name, opts.seconds, workdir,
                                     execs=opts.execs) for name in names}
        for name in names:
            o = futures[name].result()
            print(f"   done {o.target} ({o.execs:,} executions, {o.seconds:.0f} s)", flush=True)
        outcomes = [futures[name].result() for name in names]
    wall = time.monotonic() - started
    print(f"\n{'target':<10} {'execs':>12} {'execs/s':>9} {'crashes':>8} {'seconds':>7} "
          f"{'reached':>8}")
    failed = False
    for o in sorted(outcomes, key=lambda o: list(TARGETS).index(o.target)):
        print(_row(o, opts.execs))
        for c in o.crashes:
            print(f"           crash input: {c}")
        if o.exit_code != 0 and not o.crashes:
            print(f"           exited {o.exit_code} without a crash input: see {o.target}.log")
        failed = failed or bool(o.crashes) or o.execs == 0 or o.exit_code != 0
    total = sum(o.execs for o in outcomes)
    reached = sum(o.execs >= opts.execs for o in outcomes)
    print(f"{'total':<10} {total:>12,} {'':>9} {sum(len(o.crashes) for o in outcomes):>8} "
          f"{wall:>7.0f} {f'{reached}/{len(outcomes)}':>8}")
    print(f"goal: {opts.execs:,} executions per target; {jobs} jobs; wall {wall:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
