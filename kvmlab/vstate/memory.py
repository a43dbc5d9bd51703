"""Guest memory: anonymous mmap-backed regions with bounds-checked access.

Each RAM range of the layout is one ``mmap`` and one KVM memory slot. Every read and write
checks that the whole range lies inside one region, so a wrong address raises a
``GuestMemoryError`` naming the RAM that does exist instead of corrupting the host.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass

from ..errors import ConfigError, GuestMemoryError
from .layout import PAGE_SIZE, RAM_CEILING, Range, ram_ranges


@dataclass
class MemoryRegion:
    """One RAM range, its host mapping and the KVM slot it is registered in."""

    slot: int
    range: Range
    mapping: mmap.mmap
    host_address: int

    @property
    def guest_phys_addr(self) -> int:
        return self.range.start

    @property
    def size(self) -> int:
        return self.range.size


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def validate_memory_size(size: int) -> None:
    """Raises ``ConfigError`` unless ``size`` is a sane RAM size for this host and layout."""
    if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
        raise ConfigError(
            f"memory size {size!r} bytes is not a positive multiple of 4 KiB; "
            "pass memory_mib as a whole number of MiB (or a fraction that gives whole 4 KiB pages, e.g. 0.5)"
        )
    cap = min(RAM_CEILING, host_memory_bytes() // 2)
    if size > cap:
        raise ConfigError(
            f"memory size {size // (1 << 20)} MiB is beyond kvmlab's cap of {cap >> 20} MiB "
            "(RAM must end below the 32-bit device space at 0xC0000000 and leave half the host's memory free)"
        )


class GuestMemory:
    """The guest's RAM. ``read``/``write`` take guest physical addresses."""

    def __init__(self, size: int):
        validate_memory_size(size)
        self.size = size
        self.regions: list[MemoryRegion] = []
        for slot, rng in enumerate(ram_ranges(size)):
            mapping = mmap.mmap(
                -1,
                rng.size,
                mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0),
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
            anchor = ctypes.c_char.from_buffer(mapping)
            address = ctypes.addressof(anchor)
            del anchor  # drop the buffer export at once, or the mmap could never be closed
            self.regions.append(MemoryRegion(slot, rng, mapping, address))

    @property
    def ranges(self) -> list[Range]:
        return [r.range for r in self.regions]

    def is_ram(self, address: int, size: int = 1) -> bool:
        return any(r.range.overlaps(Range(address, address + size)) for r in self.regions)

    def close(self) -> None:
        for region in self.regions:
            region.mapping.close()
        self.regions = []

    # --- bounds-checked access ---------------------------------------------------------------

    def _locate(self, address: int, size: int) -> tuple[mmap.mmap, int]:
        if not isinstance(address, int) or not isinstance(size, int) or address < 0 or size < 0:
            raise GuestMemoryError(f"guest address {address!r} / size {size!r} must be non-negative integers")
        for region in self.regions:
            if region.range.contains(address, size):
                return region.mapping, address - region.range.start
        ram = " and ".join(str(r) for r in self.ranges) or "none (memory closed)"
        raise GuestMemoryError(
            f"guest range [{address:#x}, {address + size:#x}) ({size} bytes) is not inside RAM; "
            f"RAM is {ram}. Use an address inside one RAM range (the legacy hole [0xa0000, 0x100000) is for devices)."
        )

    def read(self, address: int, size: int) -> bytes:
        mapping, offset = self._locate(address, size)
        return mapping[offset : offset + size]

    def read_available(self, address: int, max_size: int) -> bytes:
        """Up to ``max_size`` bytes from ``address``, stopping where its RAM range ends."""
        mapping, offset = self._locate(address, 1)
        return mapping[offset : offset + max_size]

    def write(self, address: int, data: bytes) -> None:
        mapping, offset = self._locate(address, len(data))
        mapping[offset : offset + len(data)] = bytes(data)

    def fill(self, address: int, size: int, byte: int = 0) -> None:
        self.write(address, bytes([byte]) * size)

    def read_int(self, address: int, size: int) -> int:
        return int.from_bytes(self.read(address, size), "little")

    def write_int(self, address: int, size: int, value: int) -> None:
        self.write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def read_u32(self, address: int) -> int:
        return self.read_int(address, 4)

    def read_u64(self, address: int) -> int:
        return self.read_int(address, 8)

    def write_u64(self, address: int, value: int) -> None:
        self.write_int(address, 8, value)

