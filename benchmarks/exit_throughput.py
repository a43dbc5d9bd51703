#!/usr/bin/env python3
"""Exit throughput of kvmlab against a C VMM loop and a bare ctypes loop, measured in one run.

    .venv/bin/python benchmarks/exit_throughput.py [--iterations N] [--rounds R]

Every variant runs the same guest bytes (real-mode mmio_counter: an MMIO write per iteration,
a read every 8th) to its HLT; variants are interleaved round by round and each figure is the
median of the per-round ratios to the C loop measured next to it. Prints, for one vCPU:
exits/s and the ratio to C with metrics on (target >= 0.75), with the exit trace on, with the
sampler off (sampler cost: on/off >= 0.95), and the bare loop; then 2-vCPU scaling
(target >= 1.4x) for kvmlab, the bare loop and C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlab import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exits = bench.exits_for(args.iterations)
    print(f"guest: mmio_counter, real mode, {args.iterations:,} iterations = {exits:,} exits per vCPU; {args.rounds} rounds\n")

    one = bench.throughput(args.iterations, args.rounds, progress=lambda d, t: print(f"  round {d}/{t} done", file=sys.stderr))
    print("1 vCPU                         exits/s (median)   / C (median of rounds)")
    for variant, label in (("c", "C loop (benchmarks/exit_loop.c)"), ("bare", "bare ctypes KVM_RUN loop"),
                           ("kvmlab", "kvmlab, metrics on"), ("kvmlab_trace", "kvmlab, exit trace on"),
                           ("kvmlab_no_sampler", "kvmlab, sampler off")):  # fmt: skip
        print(f"  {label:<31} {one.median(variant):>12,.0f}   {one.ratio(variant, 'c'):>6.3f}")
    metrics_ratio = one.ratio("kvmlab", "c")
    sampler_ratio = one.ratio("kvmlab", "kvmlab_no_sampler")
    print(f"\n  kvmlab / C with metrics on:   {metrics_ratio:.3f}  (target >= 0.75: {'met' if metrics_ratio >= 0.75 else 'MISSED'})")
    print(f"  sampler on / off:             {sampler_ratio:.3f}  (target >= 0.95: {'met' if sampler_ratio >= 0.95 else 'MISSED'})")
    print(f"  trace on / metrics on:        {one.ratio('kvmlab_trace', 'kvmlab'):.3f}")
    print(f"  kvmlab / bare loop:           {one.ratio('kvmlab', 'bare'):.3f}")

    two = bench.scaling(args.iterations, args.rounds, progress=lambda d, t: print(f"  scaling round {d}/{t} done", file=sys.stderr))
    print("\n2 vCPUs on 2 cores / 1 vCPU     exits/s 1 vCPU   exits/s 2 vCPUs   scaling")
    for name in ("kvmlab", "bare", "c"):
        print(f"  {name:<31} {two.median(f'{name}_1'):>12,.0f} {two.median(f'{name}_2'):>16,.0f}   {two.ratio(f'{name}_2', f'{name}_1'):>6.2f}x")
    scaling = two.ratio("kvmlab_2", "kvmlab_1")
    print(f"\n  kvmlab scaling: {scaling:.2f}x  (target >= 1.4x: {'met' if scaling >= 1.4 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
