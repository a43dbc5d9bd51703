"""Per-vCPU exit counters, written by exactly one vCPU thread and read by anyone.

Firecracker keeps one global ``VcpuMetrics`` (``exit_mmio_read``, ``exit_io_out``, ...,
``*_agg`` latency aggregates); kvmlab keeps one per vCPU. The exit hot path does plain int
``+=`` on slot attributes: no locks (a single writer per object, and CPython reads a slot
atomically), no allocation beyond the int itself, no method call.
"""

from __future__ import annotations

#: Counter names in display order; each is an int slot of ``VcpuMetrics``.
COUNTERS = (
    "exit_mmio_read",
    "exit_mmio_write",
    "exit_io_in",
    "exit_io_out",
    "exit_hlt",
    "exit_shutdown",
    "exit_debug",
    "interrupted",
    "failures",
    "unhandled_accesses",
    "device_errors",
)

#: Latency aggregates, measured around the device call as Firecracker's ``*_agg``.
AGGREGATES = ("mmio_read_agg", "mmio_write_agg", "io_in_agg", "io_out_agg")

#: Where the per-address counts live, by exit kind.
BY_ADDRESS = ("mmio_read_by_addr", "mmio_write_by_addr", "io_in_by_port", "io_out_by_port")

NS_PER_US = 1000


class LatencyAgg:
    """count / min / max / sum of a latency, in nanoseconds (exported in microseconds)."""

    __slots__ = ("count", "min_ns", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self.count = 0
        self.min_ns = 0
        self.max_ns = 0
        self.sum_ns = 0

    def record(self, ns: int) -> None:
        """Slow-path helper (the hot path inlines the same four lines)."""
        if self.count == 0 or ns < self.min_ns:
            self.min_ns = ns
        if ns > self.max_ns:
            self.max_ns = ns
        self.count += 1
        self.sum_ns += ns

    def as_us(self) -> dict[str, float]:
        return {
            "count": self.count,
            "min_us": self.min_ns / NS_PER_US,
            "max_us": self.max_ns / NS_PER_US,
            "sum_us": self.sum_ns / NS_PER_US,
        }

    def __repr__(self) -> str:
        return f"LatencyAgg(count={self.count}, min_us={self.min_ns / 1e3:.2f}, max_us={self.max_ns / 1e3:.2f}, sum_us={self.sum_ns / 1e3:.1f})"


class VcpuMetrics:
    """The counters of one vCPU. Attribute names are the metric names."""

    __slots__ = ("vcpu",) + COUNTERS + AGGREGATES + BY_ADDRESS

    def __init__(self, vcpu: int):
        self.vcpu = vcpu
        for name in COUNTERS:
            setattr(self, name, 0)
        for name in AGGREGATES:
            setattr(self, name, LatencyAgg())
        for name in BY_ADDRESS:
            setattr(self, name, {})

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def __repr__(self) -> str:
        nonzero = ", ".join(f"{k}={v}" for k, v in self.counters().items() if v)
        return f"VcpuMetrics(vcpu={self.vcpu}, {nonzero or 'no exits yet'})"
