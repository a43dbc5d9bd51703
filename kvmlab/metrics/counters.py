"""Per-vCPU exit counters, written by exactly one vCPU thread and read by anyone.

Firecracker keeps one global ``VcpuMetrics`` (``exit_mmio_read``, ``exit_io_out``, ...,
``exit_*_agg`` latency aggregates); kvmlab keeps one per vCPU, with the same names. The exit
hot path does plain int ``+=`` and compares on slot attributes: no locks (one writer per
object; CPython reads and writes a slot atomically), no allocation beyond the ints, no calls.

The per-address tables are fed by the guest: every new address it touches would be a new key.
Each keeps at most ``ADDRESS_LIMIT`` addresses; exits at any further address are added to
``other_addresses[table]`` instead, so the counts still add up to the exits exactly.
"""

from __future__ import annotations

import collections

#: Accesses that reached no device, by direction: what a guest probing hardware kvmlab lacks
#: touched (reads saw all ones, writes were dropped, as on a PC). ``unhandled_accesses`` is
#: their sum, kept under its old name.
ABSENT_COUNTERS = ("absent_io_read", "absent_io_write", "absent_mmio_read", "absent_mmio_write")

#: Interrupts raised from user space (``Machine.raise_irq``): vectors that went in with
#: KVM_INTERRUPT, KVM_EXIT_IRQ_WINDOW_OPEN exits, and HLTs with IF=1 an interrupt ended.
INTERRUPT_COUNTERS = ("interrupts_injected", "irq_window_exits", "hlt_wakeups")

#: Coalesced MMIO and PIO (``Machine.coalesce_mmio``, ``coalesce_pio``): writes a drain of the ring delivered to their
#: device without an exit of their own, and the drains that delivered any.
COALESCED_COUNTERS = ("coalesced_mmio_write", "coalesced_pio_write", "coalesced_drains")

#: Counter names in display order; each is an int slot of ``VcpuMetrics``.
COUNTERS = (
    "exit_mmio_read",
    "exit_mmio_write",
    "exit_io_in",
    "exit_io_out",
    *COALESCED_COUNTERS,
    "exit_hlt",
    "exit_shutdown",
    "exit_debug",
    "interrupted",
    *INTERRUPT_COUNTERS,
    "failures",
    "unhandled_accesses",
    *ABSENT_COUNTERS,
    "device_errors",
)

#: Latency aggregates, Firecracker's ``*_agg`` names: around the device call of each exit
#: kind, and an interrupt's delivery from its raise to its handler's acknowledge
#: (``kvmlab.vstate.interrupts.DeliveryClock``).
AGGREGATES = ("exit_mmio_read_agg", "exit_mmio_write_agg", "exit_io_in_agg", "exit_io_out_agg", "irq_delivery_agg")
#: Delivery latencies kept one by one per vCPU, newest last, for their distribution
#: (percentiles); the aggregate above keeps count, min, max and sum of all of them.
LATENCY_SAMPLES = 65_536

#: Where the per-address counts live, by exit kind.
BY_ADDRESS = ("mmio_read_by_addr", "mmio_write_by_addr", "io_in_by_port", "io_out_by_port")

#: Distinct addresses (or ports) one by-address table of one vCPU keeps. Far more than any
#: device set here has registers (the kit's devices have a few dozen; a Linux boot probing
#: legacy ISA ports touches a few hundred), so a real driver never reaches it; only a guest
#: sweeping an address range does, and then a full table costs ~0.3-0.4 MB (about 75-100
#: bytes per entry measured), under 2 MB per vCPU for the four tables, however long it sweeps.
ADDRESS_LIMIT = 4096

NS_PER_US = 1000
#: "no sample yet" for a minimum: any latency is smaller, so the hot path needs one compare.
NO_MIN = 1 << 62


class LatencyAgg:
    """count / min / max / sum of a latency in nanoseconds, since the start and per window.

    ``min_ns``/``max_ns``/``sum_ns``/``count`` are cumulative. ``window_min_ns`` and
    ``window_max_ns`` are the extremes since the last ``take_window()``: the JSON-lines writer
    reports per-flush min/max, as Firecracker resets its aggregates on every flush.
    """

    __slots__ = ("count", "min_ns", "max_ns", "sum_ns", "window_min_ns", "window_max_ns")

    def __init__(self) -> None:
        self.count = 0
        self.min_ns = NO_MIN
        self.max_ns = 0
        self.sum_ns = 0
        self.window_min_ns = NO_MIN
        self.window_max_ns = 0

    def record(self, ns: int) -> None:
        """One device call's latency. Both exit paths call this: inlining it saved ~30 ns an
        exit (measured), under 0.5% of an exit here, not worth two copies."""
        if ns > self.max_ns:
            self.max_ns = ns
        if ns < self.min_ns:
            self.min_ns = ns
        if ns > self.window_max_ns:
            self.window_max_ns = ns
        if ns < self.window_min_ns:
            self.window_min_ns = ns
        self.count += 1
        self.sum_ns += ns

    @property
    def min_us(self) -> float:
        return self.min_ns / NS_PER_US if self.count else 0.0

    @property
    def max_us(self) -> float:
        return self.max_ns / NS_PER_US

    @property
    def sum_us(self) -> float:
        return self.sum_ns / NS_PER_US

    def take_window(self) -> tuple[float, float]:
        """(min_us, max_us) since the previous call, and starts a new window.

        Racing the vCPU thread can lose one sample's effect on the *window* extremes; the
        cumulative fields are never reset and stay exact.
        """
        low, high = self.window_min_ns, self.window_max_ns
        self.window_min_ns, self.window_max_ns = NO_MIN, 0
        return (low / NS_PER_US if low != NO_MIN else 0.0), high / NS_PER_US

    def __repr__(self) -> str:
        return f"LatencyAgg(count={self.count}, min_us={self.min_us:.2f}, max_us={self.max_us:.2f}, sum_us={self.sum_us:.1f})"


class VcpuMetrics:
    """The counters of one vCPU. Attribute names are the metric names."""

    __slots__ = ("vcpu", "other_addresses", "irq_delivery_samples") + COUNTERS + AGGREGATES + BY_ADDRESS

    def __init__(self, vcpu: int):
        self.vcpu = vcpu
        for name in COUNTERS:
            setattr(self, name, 0)
        for name in AGGREGATES:
            setattr(self, name, LatencyAgg())
        for name in BY_ADDRESS:
            setattr(self, name, {})
        #: exits at addresses a full table did not keep, by table name (see ADDRESS_LIMIT)
        self.other_addresses: dict[str, int] = dict.fromkeys(BY_ADDRESS, 0)
        #: (vector, ns) of the latest LATENCY_SAMPLES interrupt deliveries
        self.irq_delivery_samples: collections.deque[tuple[int, int]] = collections.deque(maxlen=LATENCY_SAMPLES)

    def count_new_address(self, table: str, address: int) -> None:
        """The first exit at ``address`` in by-address ``table`` (a name in ``BY_ADDRESS``):
        the exit path's slow branch, taken only when the address is not in the table yet.
        The address is kept while the table has room, else the exit goes to ``other_addresses``."""
        counts = getattr(self, table)
        if len(counts) < ADDRESS_LIMIT:
            counts[address] = 1
        else:
            self.other_addresses[table] += 1

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def __repr__(self) -> str:
        nonzero = ", ".join(f"{k}={v}" for k, v in self.counters().items() if v)
        return f"VcpuMetrics(vcpu={self.vcpu}, {nonzero or 'no exits yet'})"
