#!/usr/bin/env python3
"""The observer effect of the notebook lab: exits/s with a Lab on screen against without.

    .venv/bin/python benchmarks/lab_overhead.py [--seconds 3] [--rounds 5]

Two vCPUs run mmio_counter (each on its own register, an MMIO exit per iteration; the
ping-pong program is too sensitive to scheduling to measure with) for --seconds, once with a
``Lab(m)`` attached (its updater redraws the live plot and the console a few times a second,
and the control panel at each state change, on the same GIL the vCPU threads need) and once
without, interleaved;
prints the median of the per-round ratios of MMIO exits/s. Also prints the cost of one live
plot frame (update + PNG).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlab import Machine, programs  # noqa: E402
from kvmlab.plotting import RatePlot  # noqa: E402
from kvmlab.widgets import Lab  # noqa: E402


def exits_per_second(seconds: float, with_lab: bool) -> tuple[float, int]:
    with Machine(vcpus=2, memory_mib=1) as m:
        m.load(programs.mmio_counter(iterations=0), mode="protected")
        lab = Lab(m) if with_lab else None
        m.start()
        time.sleep(seconds)
        m.pause()
        exits = sum(v.exit_mmio_read + v.exit_mmio_write for v in m.metrics)
        frames = lab.plot.plot.updates if lab else 0
        if lab:
            lab.close()
    return exits / seconds, frames


def frame_cost() -> tuple[float, float]:
    with Machine(vcpus=2, memory_mib=1) as m:
        m.load(programs.mailbox_pingpong(rounds=0), mode="protected")
        m.start()
        time.sleep(2)
        m.pause()
        plot = RatePlot(m.metrics, window_s=30, size=(8, 2.0))
        plot.update()
        plot.png()  # the first frame draws everything
        updates, pngs = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            plot.update()
            t1 = time.perf_counter()
            plot.png()
            pngs.append(time.perf_counter() - t1)
            updates.append(t1 - t0)
    return statistics.median(updates), statistics.median(pngs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    ratios, frames = [], []
    for _ in range(args.rounds):
        without, _ = exits_per_second(args.seconds, False)
        with_lab, drawn = exits_per_second(args.seconds, True)
        ratios.append(with_lab / without)
        frames.append(drawn)
        print(f"  without {without:,.0f} exits/s, with Lab {with_lab:,.0f} exits/s ({with_lab / without:.3f}), {drawn} plot frames", file=sys.stderr)
    update, png = frame_cost()
    print(f"2 vCPUs, mmio_counter, {args.seconds:g} s a run, {args.rounds} interleaved rounds")
    print(f"  MMIO exits/s with a Lab / without: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"  live plot frames drawn per run: median {statistics.median(frames):g}")
    print(f"  one live frame: update {update * 1e3:.2f} ms + PNG {png * 1e3:.2f} ms (wall time; Pillow compresses without the GIL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
