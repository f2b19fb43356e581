"""Profile a fuzz target's harness: ``python -m fuzz.profile TARGET [--inputs N]``.

Feeds ``N`` (2,000) inputs — the seed corpus and seeded random mutations of it (byte
flips, truncations, duplications) — through :func:`fuzz.targets.run_one` under
cProfile, without atheris instrumentation, and prints inputs per second and the
functions with the most cumulative time. For finding harness overhead (file writes,
per-input setup), not for figures.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from pathlib import Path

from fuzz.targets import TARGETS, run_one

ROOT = Path(__file__).resolve().parent


def mutations(seeds: list[bytes], count: int, seed: int = 20261202) -> list[bytes]:
    """``count`` inputs: every seed, then seeded mutations of random seeds."""
    rng = random.Random(seed)
    out = list(seeds)[:count]
    while len(out) < count:
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(3)
            if kind == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == 1 and data:
                del data[rng.randrange(len(data)):]
            elif data:
                at = rng.randrange(len(data))
                data[at:at] = data[at:at + rng.randint(1, 64)]
        out.append(bytes(data))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=list(TARGETS))
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    opts = parser.parse_args(argv)
    seeds = [p.read_bytes() for p in sorted((ROOT / "corpus" / opts.target).iterdir())]
    inputs = mutations(seeds, max(1, min(opts.inputs, 1_000_000)))
    one = TARGETS[opts.target]()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for data in inputs:
        run_one(opts.target, one, data)
    profiler.disable()
    elapsed = time.perf_counter() - started
    print(f"{opts.target}: {len(inputs):,} inputs in {elapsed:.2f} s under cProfile "
          f"({len(inputs) / elapsed:,.0f}/s)")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(opts.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
