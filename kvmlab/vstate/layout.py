"""The guest physical address map: a PC-like layout every kvmlab machine shares.

::

    0x0000_0000 ┬ RAM (low)       real-mode IVT, results area, GDT, page tables, programs, stacks
    0x000A_0000 ┼ legacy hole      no RAM: the teaching devices' MMIO windows live here, where
                │                  real-mode code can reach them (segment 0xA000)
    0x0010_0000 ┼ RAM (high)       up to the machine's memory size (kernels load at 1 MiB)
                ┆
    0xC000_0000 ┴ 32-bit device space (TSS pages for KVM, room for more MMIO)

Memory sizes name the top of RAM, as ``qemu -m`` does: a 2 MiB machine has RAM at
[0, 0xA0000) and [0x100000, 0x200000); the hole in between is not RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SIZE = 0x1000
KIB = 1024
MIB = 1024 * KIB

LOW_RAM_END = 0xA0000
HIGH_RAM_START = 0x100000
LEGACY_HOLE = (LOW_RAM_END, HIGH_RAM_START)

#: RAM must end below this: the space above belongs to devices and KVM's TSS pages.
RAM_CEILING = 0xC000_0000
#: Three pages KVM needs for real-mode emulation on Intel (``KVM_SET_TSS_ADDR``), as kvmtool uses.
TSS_ADDRESS = 0xFFFB_D000
TSS_SIZE = 3 * PAGE_SIZE


@dataclass(frozen=True)
class Range:
    """A half-open guest physical range [start, end)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    def contains(self, address: int, size: int = 1) -> bool:
        return self.start <= address and address + size <= self.end

    def overlaps(self, other: "Range") -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.end:#x})"

    def __repr__(self) -> str:
        return f"Range({self.start:#x}, {self.end:#x})"


def ram_ranges(memory_size: int) -> list[Range]:
    """The RAM ranges of a machine whose RAM tops out at ``memory_size``."""
    ranges = [Range(0, min(memory_size, LOW_RAM_END))]
    if memory_size > HIGH_RAM_START:
        ranges.append(Range(HIGH_RAM_START, memory_size))
    return ranges


RESERVED = (Range(TSS_ADDRESS, TSS_ADDRESS + TSS_SIZE),)
#: Where KVM's in-kernel irqchip answers MMIO (the architectural defaults): an OS's memory map
#: must show these pages reserved when the irqchip is on.
IOAPIC_BASE = 0xFEC0_0000
LAPIC_BASE = 0xFEE0_0000
IRQCHIP_PAGES = (Range(IOAPIC_BASE, IOAPIC_BASE + PAGE_SIZE), Range(LAPIC_BASE, LAPIC_BASE + PAGE_SIZE))
