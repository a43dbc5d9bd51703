"""The mailbox: an MMIO device the bundled programs talk through.

Register map (32-bit little-endian, offsets from the device base, 0xa0000 by default)::

    0x000  ID        read only: 0x4c4d564b ("KVML")
    0x004  PING      read/write: vCPU 0's message in the ping-pong program
    0x008  PONG      read/write: vCPU 1's answer
    0x00c  IRQ_VECTOR read/write: the interrupt vector the doorbell raises (0: none yet)
    0x010  DOORBELL  write n: raise IRQ_VECTOR at vCPU n (``Machine.raise_irq``); reads 0
    0x014  IRQ_ACK   write v: a handler for vector v has started (the delivery latency); reads 0
    0x100  COUNTER0  read/write, one per vCPU (COUNTER<n> at 0x100 + 4*n, up to 64)

Registers are plain memory behind an MMIO window, so any size and alignment works and the
guest reads back what it wrote; but every access leaves the guest (an MMIO exit), which is
the point. ``ID`` ignores writes.

The interrupt registers make the mailbox a device that interrupts instead of being polled:
a vCPU that wants another's attention rings the doorbell and the other wakes from HLT into
its handler (``programs.mailbox_irq``). The vector is the guest's to choose, as a driver
programs a device's MSI vector. A handler whose first instruction writes its vector to
IRQ_ACK lets kvmlab time each delivery, from the raise to that write
(``m.metrics.interrupt_latencies()``; without the in-kernel irqchip, whose MSIs are not timed).
"""

from __future__ import annotations

from .base import Device

MAILBOX_BASE = 0xA0000
MAILBOX_ID = 0x4C4D564B
ID, PING, PONG, IRQ_VECTOR, DOORBELL, IRQ_ACK, COUNTERS = 0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x100
MAX_COUNTERS = 64


class Mailbox(Device):
    name = "mailbox"
    size = 0x1000
    registers = {
        ID: "ID", PING: "PING", PONG: "PONG", IRQ_VECTOR: "IRQ_VECTOR", DOORBELL: "DOORBELL", IRQ_ACK: "IRQ_ACK",
        **{COUNTERS + 4 * i: f"COUNTER{i}" for i in range(MAX_COUNTERS)},
    }  # fmt: skip

    #: the counters only store what the guest writes: their writes may wait (coalesce_mmio)
    coalescible = frozenset(COUNTERS + 4 * i for i in range(MAX_COUNTERS))
    side_effects = {
        ID: "read only, it identifies the device",
        PING: "its write is the ping-pong's hand-over, which the other vCPU polls for: it must arrive at once",
        PONG: "its write is the ping-pong's hand-over, which the other vCPU polls for: it must arrive at once",
        IRQ_VECTOR: "it programs the vector the doorbell raises, which the next DOORBELL write must see",
        DOORBELL: "its write raises an interrupt at once",
        IRQ_ACK: "its write acknowledges an interrupt and times its delivery at the moment of the write",
    }

    def __init__(self, name: str = "mailbox"):
        self.name = name
        self._regs = bytearray(self.size)
        self._words = memoryview(self._regs).cast("I")  # aligned dword accesses, the common case
        self._words[ID // 4] = MAILBOX_ID

    irq_vector_hint = "its guest writes one (32-255) to the IRQ_VECTOR register first, as programs.mailbox_irq does"

    @property
    def irq_vector(self) -> int | None:
        """The vector the guest programmed into IRQ_VECTOR (None before it did): what
        ``raise_irq()`` raises when given no vector, and what the doorbell rings."""
        return self._words[IRQ_VECTOR // 4] or None

    def read(self, offset: int, size: int) -> int:
        if DOORBELL <= offset < IRQ_ACK + 4:  # actions, not storage: they read 0
            return 0
        if size == 4 and not offset & 3:
            return self._words[offset >> 2]
        return int.from_bytes(self._regs[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < ID + 4:
            return
        if offset == DOORBELL:  # any width: the value written names the vCPU
            self.raise_irq(vcpu=value)  # refusals (no vector yet, no such vCPU) are device errors
            return
        if offset == IRQ_ACK:
            self.irq_acknowledged(value)
            return
        if size == 4 and not offset & 3:
            self._words[offset >> 2] = value
            return
        end = min(offset + size, self.size)  # an access straddling the window's end is cut
        self._regs[offset:end] = value.to_bytes(size, "little")[: end - offset]

    def register(self, offset: int) -> int:
        return self.read(offset, 4)

    def counter(self, index: int) -> int:
        return self.read(COUNTERS + 4 * index, 4)

    @property
    def ping(self) -> int:
        return self.register(PING)

    @property
    def pong(self) -> int:
        return self.register(PONG)
