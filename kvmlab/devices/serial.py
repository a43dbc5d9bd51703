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
5      LSR: THRE|TEMT, DR, OE (read only; reading clears OE)
6      MSR: CTS|DSR|DCD       (read only; in loopback, mirrors MCR)
7      SCR scratch            SCR scratch
====== ====================== ==============================================================

The transmitter is always empty (output is instant), so LSR always has THRE (0x20) and TEMT
(0x40); DR (0x01) is set while received bytes wait (``feed`` gives the guest input).

Bytes the guest sends itself in loopback arrive in a receiver as small as the real one: the
guest must not be able to grow host memory by writing THR without ever reading RBR. As the
16550 datasheet says, with FIFOs on (FCR bit 0) the receive FIFO holds 16 bytes and a byte
arriving when it is full is lost; with FIFOs off (16450 mode) RBR holds one byte and the next
one overwrites it. Either way LSR.OE (0x02, overrun) is set until the guest reads LSR, and
``rx_dropped`` counts the bytes lost. ``feed`` is the host's side of the line and is not
limited: the host decides how much it queues (a terminal waiting for the guest to read).
"""

from __future__ import annotations

import collections
import threading

from .base import Device
from .console import Console

COM1 = 0x3F8

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
LCR_DLAB = 0x80
MCR_LOOP = 0x10
IIR_NO_INTERRUPT = 0x01
IIR_FIFO_ENABLED = 0xC0
MSR_IDLE = 0xB0  # DCD | DSR | CTS
FCR_FIFO_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
#: The 16550's receive FIFO depth; with FIFOs off the receiver is RBR alone (one byte).
RX_FIFO_DEPTH = 16


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
        self._overrun = 0  # LSR_OE until the guest reads LSR
        #: received bytes lost because the receiver was full (loopback only; see the module doc)
        self.rx_dropped = 0

    @property
    def divisor(self) -> int:
        return self.dll | (self.dlm << 8)

    def feed(self, data: bytes) -> None:
        """Queues input bytes for the guest to read from RBR."""
        with self._lock:
            self._rx.extend(data)

    def _receive(self, value: int) -> None:
        """A byte reaches the receiver from the line (here: THR in loopback); the lock is held.
        A full receiver loses a byte and flags an overrun, as the datasheet describes."""
        fifo = self.fcr & FCR_FIFO_ENABLE
        if len(self._rx) < (RX_FIFO_DEPTH if fifo else 1):
            self._rx.append(value)
            return
        self._overrun = LSR_OE
        self.rx_dropped += 1
        if not fifo:  # 16450 mode: the new character overwrites RBR, the old one is lost
            self._rx[-1] = value

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
                return IIR_NO_INTERRUPT | (IIR_FIFO_ENABLED if self.fcr & FCR_FIFO_ENABLE else 0)
            if offset == 3:
                return self.lcr
            if offset == 4:
                return self.mcr
            if offset == 5:
                lsr = LSR_THRE | LSR_TEMT | self._overrun | (LSR_DR if self._rx else 0)
                self._overrun = 0  # OE is cleared by reading LSR
                return lsr
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
                    self._receive(value)
                else:
                    self.console.put(value)
            elif offset == 1:
                if dlab:
                    self.dlm = value
                else:
                    self.ier = value & 0x0F
            elif offset == 2:
                toggled = (self.fcr ^ value) & FCR_FIFO_ENABLE
                self.fcr = value
                # Turning the FIFOs on or off clears them, as the datasheet says; so does bit 1.
                if value & FCR_CLEAR_RX or toggled:
                    self._rx.clear()
            elif offset == 3:
                self.lcr = value
            elif offset == 4:
                self.mcr = value & 0x1F
            elif offset == 7:
                self.scr = value
