#!/usr/bin/env python3
"""Cycles per port-I/O exit, timed by the guest with RDTSC, on kvmlab and on the C loop.

    .venv/bin/python benchmarks/exit_cycles.py [--iterations N] [--rounds R]

The guest (``programs.exit_cost``, real mode, one vCPU) reads the TSC, writes the UART's
scratch register (a KVM_EXIT_IO to user space), reads the TSC again, N times, and leaves the
total and the fewest cycles in its results area. The same bytes run under
``benchmarks/exit_loop.c`` (which stores the byte and re-enters) and under a kvmlab Machine
(bus lookup, the 16550 model, metrics), interleaved; each ratio is the median of the rounds'
kvmlab / C ratios (above 1: kvmlab's exit costs the guest more cycles).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlab import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"guest: exit_cost, real mode, 1 vCPU, {args.iterations:,} timed port-I/O exits a run; {args.rounds} rounds\n")
    rounds = bench.exit_cycles(args.iterations, args.rounds, progress=lambda d, t: print(f"  round {d}/{t} done", file=sys.stderr))
    print("cycles per exit (guest TSC)      mean (median)   fewest (median)")
    for name, label in (("c", "C loop (benchmarks/exit_loop.c)"), ("kvmlab", "kvmlab, metrics on")):
        print(f"  {label:<31} {rounds.median(f'{name}_mean'):>12,.0f}   {rounds.median(f'{name}_min'):>14,.0f}")
    print(f"\n  kvmlab / C, mean cycles per exit:    {rounds.ratio('kvmlab_mean', 'c_mean'):.3f}")
    print(f"  kvmlab / C, fewest cycles per exit:  {rounds.ratio('kvmlab_min', 'c_min'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
