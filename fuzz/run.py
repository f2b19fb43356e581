"""Run the fuzz targets: ``python -m fuzz.run [--seconds N] [TARGET ...]``.

Each target runs in its own process (libFuzzer exits when it stops) for ``--seconds``
(default ``$FUZZ_SECONDS`` or 150), starting from the seed corpus in the repo
(``fuzz/corpus/<target>/``, read only) plus a working corpus under ``--workdir``
(``fuzz-out/``, where new inputs and crash artifacts go). At the end one line per
target: executions, crashes (inputs that raised an undocumented error), and the
artifact paths. Exit status 1 when any target crashed or did not run.

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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_SECONDS = 150
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


def run_target(target: str, seconds: int, workdir: Path, *, max_len: int = 8192,
               extra: list[str] | None = None) -> Outcome:
    """Fuzz ``target`` for ``seconds`` in a subprocess; count executions and crashes."""
    corpus = workdir / "corpus" / target
    artifacts = workdir / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "corpus" / target
    before = set(artifacts.iterdir())
    argv = [sys.executable, "-m", "fuzz.run", "--child", target, "--",
            f"-max_total_time={seconds}", f"-max_len={max_len}", "-print_final_stats=1",
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
    parser.add_argument("--seconds", type=int,
                        default=int(os.environ.get("FUZZ_SECONDS", DEFAULT_SECONDS)))
    parser.add_argument("--workdir", type=Path, default=Path("fuzz-out"))
    opts = parser.parse_args(args)
    if not 1 <= opts.seconds <= 86_400:
        parser.error("--seconds must be within 1..86400")
    names = opts.targets or list(TARGETS)
    outcomes = []
    for name in names:
        print(f"== fuzzing {name} for {opts.seconds} s", flush=True)
        outcomes.append(run_target(name, opts.seconds, opts.workdir.resolve()))
    print(f"\n{'target':<10} {'execs':>12} {'execs/s':>9} {'crashes':>8}")
    failed = False
    for o in outcomes:
        rate = o.execs / o.seconds if o.seconds else 0.0
        print(f"{o.target:<10} {o.execs:>12,} {rate:>9,.0f} {len(o.crashes):>8}")
        for c in o.crashes:
            print(f"           crash input: {c}")
        if o.exit_code != 0 and not o.crashes:
            print(f"           exited {o.exit_code} without a crash input: see {o.target}.log")
        failed = failed or bool(o.crashes) or o.execs == 0 or o.exit_code != 0
    total = sum(o.execs for o in outcomes)
    print(f"{'total':<10} {total:>12,} {'':>9} {sum(len(o.crashes) for o in outcomes):>8}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
