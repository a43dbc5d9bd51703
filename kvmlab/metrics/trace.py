"""The exit trace: one row per exit, per vCPU, in a bounded buffer.

Off by default (the hot path then pays one ``is not None`` test). When on, each exit appends
one tuple to a ``deque(maxlen=capacity)``; when the buffer is full the oldest rows go, and
``dropped`` counts them, so a trace is never silently incomplete.
"""

from __future__ import annotations

import collections
from time import perf_counter_ns

from ..errors import ConfigError

# What kind of exit a row is (small ints on the hot path; names in the DataFrame).
# IRQ_WINDOW is a KVM_EXIT_IRQ_WINDOW_OPEN; INJECTED is not an exit but the KVM_INTERRUPT
# before a run (its address column is the vector), so a trace shows when each went in.
# COALESCED_MMIO_WRITE (COALESCED_IO_OUT for a port) is not an exit either: a write that waited in the coalesced ring,
# its row written when a drain delivered it (start_ns is the delivery, not the guest's write).
MMIO_READ, MMIO_WRITE, IO_IN, IO_OUT, HLT, SHUTDOWN, INTERRUPTED, DEBUG, SYSTEM_EVENT, ERROR, IRQ_WINDOW, INJECTED = range(12)
COALESCED_MMIO_WRITE, COALESCED_IO_OUT = 12, 13
KIND_NAMES = (
    "mmio_read", "mmio_write", "io_in", "io_out", "hlt", "shutdown", "interrupted", "debug", "system_event", "error",
    "irq_window", "interrupt_injected", "coalesced_mmio_write", "coalesced_io_out",
)  # fmt: skip

DEFAULT_CAPACITY = 100_000


class TraceBuffer:
    """The trace of one vCPU. ``record`` is what exit handling calls."""

    __slots__ = ("vcpu", "capacity", "rows", "appended", "record")

    def __init__(self, vcpu: int, capacity: int = DEFAULT_CAPACITY):
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"trace capacity {capacity!r}: need a positive number of rows")
        self.vcpu = vcpu
        self.capacity = capacity
        self.rows: collections.deque = collections.deque(maxlen=capacity)
        self.appended = 0
        append = self.rows.append

        def record(kind: int, address: int, size: int, value: int, start_ns: int, latency_ns: int) -> None:
            append((start_ns, kind, address, size, value, latency_ns))
            self.appended += 1

        self.record = record

    def mark(self, kind: int, address: int = 0) -> None:
        """A row for an exit that touches no device (HLT, kick, shutdown...)."""
        self.record(kind, address, 0, 0, perf_counter_ns(), 0)

    def tail(self, count: int) -> tuple[dict, ...]:
        """The last ``count`` rows as plain dicts, oldest first (a final state keeps them)."""
        rows = list(self.rows)[-count:] if count > 0 else []
        return tuple(
            {"kind": KIND_NAMES[kind], "address": address, "size": size, "value": value, "latency_us": latency_ns / 1000}
            for _, kind, address, size, value, latency_ns in rows
        )

    @property
    def dropped(self) -> int:
        """Rows pushed out because the buffer was full."""
        return self.appended - len(self.rows)

    def clear(self) -> None:
        self.rows.clear()
        self.appended = 0
