#!/usr/bin/env python3
"""Interrupt-driven against polling ping-pong: rounds/s, host CPU per 1,000 rounds, exits per round, delivery latency.

    .venv/bin/python benchmarks/interrupts.py [--rounds 2000] [--repeats 5] [--engines kvm,emulated]

Guests: ``mailbox_pingpong`` (each vCPU polls an MMIO register for the other's answer) and
``mailbox_irq`` (each vCPU waits in HLT until the other rings the mailbox's doorbell), both
in protected mode on 2 vCPUs, the sampler off, variants interleaved repeat by repeat. Host CPU
is this process's CPU time (time.process_time(): every thread, in the guest or in kvmlab).
Delivery latency: raise_irq to the handler's IRQ_ACK exit (kvmlab.vstate.interrupts.DeliveryClock).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlab import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", default="kvm,emulated")
    args = parser.parse_args()
    engines = tuple(args.engines.split(","))
    result, latencies = bench.interrupt_pingpong(args.rounds, args.repeats, engines=engines,
                                                 progress=lambda d, t: print(f"  repeat {d}/{t}", file=sys.stderr))  # fmt: skip
    print(f"{args.rounds:,} rounds, protected mode, 2 vCPUs; medians of {args.repeats} interleaved repeats")
    print("engine     guest        rounds/s   CPU ms / 1,000 rounds   exits / round")
    for engine in engines:
        for kind in ("polling", "interrupts"):
            prefix = f"{engine}_{kind}"
            print(f"{engine:<10} {kind:<11} {result.median(prefix + '_rounds_per_s'):>9,.0f}   {result.median(prefix + '_cpu_ms'):>21,.1f}"
                  f"   {result.median(prefix + '_exits'):>13.1f}")  # fmt: skip
        speed = result.ratio(f"{engine}_interrupts_rounds_per_s", f"{engine}_polling_rounds_per_s")
        cpu = result.ratio(f"{engine}_interrupts_cpu_ms", f"{engine}_polling_cpu_ms")
        print(f"{engine:<10} interrupts / polling: rounds/s {speed:.3f}, CPU per round {cpu:.3f}")
    for engine in engines:
        values = latencies[engine]
        print(f"delivery latency, {engine}: {len(values):,} interrupts, p50 {bench.percentile(values, 0.5):.1f} us, "
              f"p99 {bench.percentile(values, 0.99):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
