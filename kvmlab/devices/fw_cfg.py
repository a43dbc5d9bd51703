"""fw_cfg: QEMU's firmware configuration interface, legacy port I/O flavour.

How a guest reads it: write a 16-bit *key* to the selector port (0x510), then read the item's
bytes one at a time from the data port (0x511); each read returns the next byte, and bytes
past the item's end read as 0. Writing a new key starts again at its first byte. Unknown keys
are empty (read as zeros). Values are little-endian, except the file directory (big-endian).

Keys kvmlab provides (QEMU's numbers, ``FW_CFG_*`` in QEMU's ``fw_cfg_keys.h``):

======= ================ =============================================================
key     name             value
======= ================ =============================================================
0x0000  SIGNATURE        ``b"QEMU"``: a guest checks this first
0x0001  ID               u32 1: the traditional (port) interface only, no DMA
0x0002  UUID             16 zero bytes
0x0003  RAM_SIZE         u64: guest RAM top, in bytes
0x0004  NOGRAPHIC        u16 1: no display
0x0005  NB_CPUS          u16: number of vCPUs
0x0006  MACHINE_ID       u32 0
0x0007  KERNEL_ADDR      u32: where the booted kernel's lowest segment is
0x0008  KERNEL_SIZE      u32: bytes from there to its highest segment's end
0x000a  INITRD_ADDR      u32: the first module's address (0 without one)
0x000b  INITRD_SIZE      u32: its size
0x000f  MAX_CPUS         u16: the most vCPUs this machine could have (= NB_CPUS)
0x0010  KERNEL_ENTRY     u32: the kernel's entry point
0x0014  CMDLINE_SIZE     u32: bytes of the command line, with its NUL
0x0015  CMDLINE_DATA     the command line, NUL-terminated
0x0019  FILE_DIR         u32 (big-endian) 0: no named files
======= ================ =============================================================
"""

from __future__ import annotations

import struct
import threading

from .base import Device

FW_CFG_PORT = 0x510
SIGNATURE, ID, UUID, RAM_SIZE, NOGRAPHIC, NB_CPUS, MACHINE_ID = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
KERNEL_ADDR, KERNEL_SIZE, INITRD_ADDR, INITRD_SIZE, MAX_CPUS, KERNEL_ENTRY = 0x07, 0x08, 0x0A, 0x0B, 0x0F, 0x10
CMDLINE_SIZE, CMDLINE_DATA, FILE_DIR = 0x14, 0x15, 0x19


class FwCfg(Device):
    name = "fw_cfg"
    size = 2  # 0x510 selector (16-bit), 0x511 data (8-bit)
    registers = {0: "SELECTOR", 1: "DATA"}

    def __init__(self, ram_size: int, cpus: int, name: str = "fw_cfg"):
        self.name = name
        self._lock = threading.Lock()
        self.items: dict[int, bytes] = {
            SIGNATURE: b"QEMU",
            ID: struct.pack("<I", 1),
            UUID: bytes(16),
            RAM_SIZE: struct.pack("<Q", ram_size),
            NOGRAPHIC: struct.pack("<H", 1),
            NB_CPUS: struct.pack("<H", cpus),
            MACHINE_ID: struct.pack("<I", 0),
            MAX_CPUS: struct.pack("<H", cpus),
            FILE_DIR: struct.pack(">I", 0),
        }
        self.set_cmdline("")
        self.selected = SIGNATURE
        self._offset = 0

    def set_cmdline(self, cmdline: str) -> None:
        data = cmdline.encode() + b"\0"
        self.items[CMDLINE_SIZE] = struct.pack("<I", len(data))
        self.items[CMDLINE_DATA] = data

    def set_kernel(self, address: int, size: int, entry: int, initrd: tuple[int, int] | None = None) -> None:
        self.items[KERNEL_ADDR] = struct.pack("<I", address)
        self.items[KERNEL_SIZE] = struct.pack("<I", size)
        self.items[KERNEL_ENTRY] = struct.pack("<I", entry)
        address, length = initrd or (0, 0)
        self.items[INITRD_ADDR] = struct.pack("<I", address)
        self.items[INITRD_SIZE] = struct.pack("<I", length)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:  # the selector: a new item, from its first byte
            with self._lock:
                self.selected = value & 0xFFFF
                self._offset = 0
        # writes to the data port are a deprecated legacy feature: ignored

    def read(self, offset: int, size: int) -> int:
        if offset != 1:
            return 0
        with self._lock:
            item = self.items.get(self.selected, b"")
            chunk = item[self._offset : self._offset + size]
            self._offset += size
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")
