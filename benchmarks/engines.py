#!/usr/bin/env python3
"""The emulated engine against the KVM engine: exit throughput on the same guest, and kick latency.

    .venv/bin/python benchmarks/engines.py [--iterations 100000] [--rounds 5]

Guest: real-mode mmio_counter (an MMIO write per iteration, a read every 8th), to its HLT, on
1 and 2 vCPUs, engines interleaved round by round; prints medians of exits/s and the median
of the per-round ratios emulated/KVM. Then pause-all latency of 4 vCPUs in a loop without exits
on each engine (on the emulator the kick is a flag its block hook reads at the next block
start, see kvmlab/engines/emulated.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlab import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kick-cycles", type=int, default=100)
    args = parser.parse_args()
    rounds = bench.engines(args.iterations, args.rounds, progress=lambda d, t: print(f"  round {d}/{t}", file=sys.stderr))
    print(f"guest: mmio_counter, real mode, {args.iterations:,} iterations per vCPU; {args.rounds} interleaved rounds")
    print("vCPUs   KVM exits/s   emulated exits/s   emulated / KVM")
    for vcpus in (1, 2):
        kvm, emu = rounds.median(f"kvm_{vcpus}"), rounds.median(f"emulated_{vcpus}")
        print(f"{vcpus:>5}   {kvm:>11,.0f}   {emu:>16,.0f}   {rounds.ratio(f'emulated_{vcpus}', f'kvm_{vcpus}'):>14.3f}")
    for engine in ("kvm", "emulated"):
        latencies = bench.kick_latency(4, args.kick_cycles, engine=engine)
        print(f"pause-all latency, 4 vCPUs without exits, {engine}: p50 {bench.percentile(latencies, 0.5) * 1e3:.2f} ms, "
              f"p99 {bench.percentile(latencies, 0.99) * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
