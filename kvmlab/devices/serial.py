"""A 16550A UART on port I/O (COM1 at 0x3f8), enough for polling drivers.

Registers (offset from the base port; DLAB = LCR bit 7):

====== ====================== ==============================================================
offset read                   write
====== ====================== ==============================================================
0      RBR receive buffer     THR: the byte goes to the console (DLAB=1: divisor low, DLL)
1      IER (DLAB=1: DLM)      IER (DLAB=1: divisor high, DLM)
2      IIR: 0x01 no interrupt FCR: FIFO control (bit 0 enables FIFOs, IIR shows 0xC0)
3      LCR                    LCR: word length, parity, DLAB
4      MCR                    MCR: bit 4 = loopback (THR feeds RBR, nothing printed)
5      LSR: THRE|TEMT, DR     (read only)
6      MSR: CTS|DSR|DCD       (read only; in loopback, mirrors MCR)
7      SCR scratch            SCR scratch
====== ====================== ==============================================================

The transmitter is always empty (output is instant), so LSR always has THRE (0x20) and TEMT
(0x40); DR (0x01) is set while received bytes wait (``feed`` gives the guest input).
"""

from __future__ import annotations

import collections
import threading

from .base import Device
from .console import Console

COM1 = 0x3F8

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
LCR_DLAB = 0x80
MCR_LOOP = 0x10
IIR_NO_INTERRUPT = 0x01
IIR_FIFO_ENABLED = 0xC0
MSR_IDLE = 0xB0  # DCD | DSR | CTS


class Serial16550(Device):
    name = "serial"
    size = 8
    registers = {0: "THR/RBR", 1: "IER", 2: "IIR/FCR", 3: "LCR", 4: "MCR", 5: "LSR", 6: "MSR", 7: "SCR"}

    def __init__(self, console: Console, name: str = "serial"):
        self.name = name
        self.console = console
        self._lock = threading.Lock()
        self._rx: collections.deque[int] = collections.deque()
        self.dll, self.dlm = 0x01, 0x00  # 115200 baud
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0

    @property
    def divisor(self) -> int:
        return self.dll | (self.dlm << 8)

    def feed(self, data: bytes) -> None:
        """Queues input bytes for the guest to read from RBR."""
        with self._lock:
            self._rx.extend(data)

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == 0:
                if dlab:
                    return self.dll
                return self._rx.popleft() if self._rx else 0
            if offset == 1:
                return self.dlm if dlab else self.ier
            if offset == 2:
                return IIR_NO_INTERRUPT | (IIR_FIFO_ENABLED if self.fcr & 1 else 0)
            if offset == 3:
                return self.lcr
            if offset == 4:
                return self.mcr
            if offset == 5:
                return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
            if offset == 6:
                if self.mcr & MCR_LOOP:  # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                    m = self.mcr
                    return ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
                return MSR_IDLE
            if offset == 7:
                return self.scr
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == 0:
                if dlab:
                    self.dll = value
                elif self.mcr & MCR_LOOP:
                    self._rx.append(value)
                else:
                    self.console.put(value)
            elif offset == 1:
                if dlab:
                    self.dlm = value
                else:
                    self.ier = value & 0x0F
            elif offset == 2:
                self.fcr = value
                if value & 0x02:
                    self._rx.clear()
            elif offset == 3:
                self.lcr = value
            elif offset == 4:
                self.mcr = value & 0x1F
            elif offset == 7:
                self.scr = value
