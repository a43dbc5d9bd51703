"""The mailbox: an MMIO device the bundled programs talk through.

Register map (32-bit little-endian, offsets from the device base, 0xa0000 by default)::

    0x000  ID        read only: 0x4c4d564b ("KVML")
    0x004  PING      read/write: vCPU 0's message in the ping-pong program
    0x008  PONG      read/write: vCPU 1's answer
    0x100  COUNTER0  read/write, one per vCPU (COUNTER<n> at 0x100 + 4*n, up to 64)

Registers are plain memory behind an MMIO window, so any size and alignment works and the
guest reads back what it wrote; but every access leaves the guest (an MMIO exit), which is
the point. ``ID`` ignores writes.
"""

from __future__ import annotations

from .base import Device

MAILBOX_BASE = 0xA0000
MAILBOX_ID = 0x4C4D564B
ID, PING, PONG, COUNTERS = 0x000, 0x004, 0x008, 0x100
MAX_COUNTERS = 64


class Mailbox(Device):
    name = "mailbox"
    size = 0x1000
    registers = {ID: "ID", PING: "PING", PONG: "PONG", **{COUNTERS + 4 * i: f"COUNTER{i}" for i in range(MAX_COUNTERS)}}

    def __init__(self, name: str = "mailbox"):
        self.name = name
        self._regs = bytearray(self.size)
        self._words = memoryview(self._regs).cast("I")  # aligned dword accesses, the common case
        self._words[ID // 4] = MAILBOX_ID

    def read(self, offset: int, size: int) -> int:
        if size == 4 and not offset & 3:
            return self._words[offset >> 2]
        return int.from_bytes(self._regs[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < ID + 4:
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
