"""A PCI host bridge with an empty bus: how a guest learns there are no PCI devices.

Firmware and kernels look for PCI through *configuration mechanism #1* (PCI Local Bus
Specification, rev. 3.0, section 3.2.2.3.2): a dword written to CONFIG_ADDRESS (port 0xcf8)
selects a configuration register, and CONFIG_DATA (ports 0xcfc-0xcff) reads or writes it.

====== ============ ===================================================================
bits   field        meaning
====== ============ ===================================================================
31     enable       1: CONFIG_DATA accesses are configuration cycles
30:24  reserved
23:16  bus          bus number (0: the bus behind this bridge)
15:11  device       device number on that bus, 0-31
10:8   function     function of that device, 0-7
7:2    register     dword of its 256-byte configuration space
1:0    0            a byte of that dword is chosen by the CONFIG_DATA port used (0xcfc + n)
====== ============ ===================================================================

Without a bridge a probe fails in the wrong way: CONFIG_ADDRESS reads back all ones, so a
guest decides the mechanism is broken instead of that the bus is empty. With this one,
CONFIG_ADDRESS holds the dword written (Linux's ``pci_check_type1`` writes 0x80000000 and
expects it back) and every configuration read is all ones: no device answers, the cycle ends in a master abort, and vendor ID 0xffff
is how firmware and kernels know a slot is empty. Configuration writes go nowhere. Only a
dword access at 0xcf8 is CONFIG_ADDRESS (spec: other sizes pass through as ordinary I/O, and
there is nothing else here), so those read all ones and their writes are dropped.
"""

from __future__ import annotations

from typing import NamedTuple

from ..vstate.bus import ALL_ONES
from .base import Device

PCI_CONFIG_PORT = 0xCF8  # CONFIG_ADDRESS; CONFIG_DATA is 4 ports on
CONFIG_ADDRESS = 0
CONFIG_DATA = 4
ENABLE = 1 << 31


class ConfigAddress(NamedTuple):
    """The fields of a CONFIG_ADDRESS value (the table above)."""

    enabled: bool
    bus: int
    device: int
    function: int
    register: int  # byte offset in configuration space, a multiple of 4


def decode(value: int) -> ConfigAddress:
    return ConfigAddress(bool(value & ENABLE), value >> 16 & 0xFF, value >> 11 & 0x1F, value >> 8 & 0x7, value & 0xFC)


class PciHost(Device):
    name = "pci-host"
    size = 8  # 0xcf8-0xcfb CONFIG_ADDRESS, 0xcfc-0xcff CONFIG_DATA
    registers = {CONFIG_ADDRESS: "CONFIG_ADDRESS", CONFIG_DATA: "CONFIG_DATA"} | {
        CONFIG_DATA + n: f"CONFIG_DATA+{n}" for n in (1, 2, 3)
    }

    def __init__(self, name: str = "pci-host"):
        self.name = name
        #: the last dword written to CONFIG_ADDRESS (one store: atomic for the vCPU threads)
        self.address = 0

    @property
    def selected(self) -> ConfigAddress:
        """The configuration register the guest selected last (which slot it probed)."""
        return decode(self.address)

    def read(self, offset: int, size: int) -> int:
        if offset == CONFIG_ADDRESS and size == 4:
            return self.address
        return ALL_ONES[size]  # no device answers a configuration read; nothing else is here

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == CONFIG_ADDRESS and size == 4:
            self.address = value
