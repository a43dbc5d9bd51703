#!/usr/bin/env python3
"""Kick latency: how long pausing every vCPU takes when none of them ever exits by itself.

    .venv/bin/python benchmarks/kick_latency.py [--vcpus 4] [--cycles 200] [--engine kvm|emulated]

4 vCPUs run busy_loop.asm (no exits at all), so each Pause needs the kick: immediate_exit = 1
and SIGRTMIN to the vCPU thread, KVM_RUN returns EINTR, the thread reads its event and
answers. Measures, for each of 200 pause-all/resume-all cycles, the time from the request to
the last Paused answer. Target: p99 <= 5 ms. The baseline in the same run is the round trip of
a Pause to vCPUs that are already paused (no kick needed, queue and thread wake-up only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlab import Machine, bench, programs  # noqa: E402


def paused_round_trip(vcpus: int, cycles: int, engine: str = "kvm") -> list[float]:
    latencies = []
    with Machine(vcpus=vcpus, memory_mib=1, engine=engine) as m:
        m.load(programs.busy_loop(), mode="protected")
        m.start()
        m.pause()
        for _ in range(cycles):
            started = time.perf_counter()
            m.pause()
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--vcpus", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--engine", choices=["kvm", "emulated"], default="kvm")
    args = parser.parse_args()
    kicked = bench.kick_latency(args.vcpus, args.cycles, engine=args.engine)
    queued = paused_round_trip(args.vcpus, args.cycles, args.engine)
    p50, p99 = bench.percentile(kicked, 0.5), bench.percentile(kicked, 0.99)
    q50, q99 = bench.percentile(queued, 0.5), bench.percentile(queued, 0.99)
    print(f"{args.vcpus} vCPUs, {args.cycles} cycles, engine {args.engine}")
    print(f"  pause-all of running vCPUs (kick needed):  p50 {p50 * 1e3:6.3f} ms   p99 {p99 * 1e3:6.3f} ms   max {max(kicked) * 1e3:6.3f} ms")
    print(f"  pause-all of paused vCPUs (no kick):       p50 {q50 * 1e3:6.3f} ms   p99 {q99 * 1e3:6.3f} ms")
    print(f"  kick cost (p50 ratio): {p50 / q50:.2f}x the queue round trip")
    print(f"  p99 target <= 5 ms: {'met' if p99 <= 0.005 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
