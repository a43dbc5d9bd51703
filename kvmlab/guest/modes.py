"""CPU modes for small guest programs: real, 32-bit flat protected, 64-bit long mode.

A VMM enters a guest in whatever mode it likes by writing the segment caches and control
registers directly (``KVM_SET_SREGS``): no boot code has to switch modes. What each mode needs:

* **real**: segment bases = selector * 16, 64 KiB limits, CR0.PE = 0. Code runs at CS:IP
  with CS = 0, so labels are plain addresses below 64 KiB.
* **protected**: a GDT in guest memory (null, 32-bit code 0x08, data 0x10), CR0.PE = 1, all
  data segments flat 4 GiB.
* **long**: the same GDT plus a 64-bit code segment (0x18, L = 1), identity-mapped page tables
  (4 GiB in 2 MiB pages), CR4.PAE, EFER.LME|LMA, CR0.PG.

Each vCPU gets its own 4 KiB stack at the top of low RAM (vCPU 0 highest) and its index in
DI / EDI / RDI, as the first argument of a C function would be.

Guest memory map of a program (below 64 KiB, so real mode reaches all of it)::

    0x0500  results area: 16 bytes per vCPU that bundled programs fill with what they counted
    0x1000  GDT
    0x2000  page tables (PML4, PDPT, 4 page directories)
    0x8000  program (``LOAD_ADDRESS``)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ConfigError
from ..vstate.layout import LOW_RAM_END
from ..vstate.memory import GuestMemory
from ..x86 import Cr0, Cr4, Efer, Pte, Rflags
from .multiboot import BOOTLOADER_MAGIC

RESULTS_ADDRESS = 0x0500
RESULTS_STRIDE = 16
GDT_ADDRESS = 0x1000
PML4_ADDRESS = 0x2000
PDPT_ADDRESS = 0x3000
PD_ADDRESS = 0x4000  # four page directories: 0x4000..0x7fff
LOAD_ADDRESS = 0x8000
STACK_SIZE = 0x1000
MAX_RESULTS_VCPUS = (GDT_ADDRESS - RESULTS_ADDRESS) // RESULTS_STRIDE

CODE32_SELECTOR = 0x08
DATA_SELECTOR = 0x10
CODE64_SELECTOR = 0x18



class Mode(enum.Enum):
    """A CPU mode and its code width."""

    REAL = ("real", 16)
    PROTECTED = ("protected", 32)
    LONG = ("long", 64)

    def __init__(self, label: str, bits: int):
        self.label = label
        self.bits = bits

    def __repr__(self) -> str:
        return f"Mode.{self.name}"

    @classmethod
    def parse(cls, mode: "Mode | str") -> "Mode":
        if isinstance(mode, Mode):
            return mode
        for candidate in cls:
            if candidate.label == mode:
                return candidate
        raise ConfigError(f"mode={mode!r}: choose 'real', 'protected' or 'long'")


# GDT descriptors: base 0, limit 0xfffff pages (4 GiB), present, DPL 0.
GDT_ENTRIES = (
    0x0000000000000000,  # null
    0x00CF9A000000FFFF,  # 0x08: 32-bit code, execute/read
    0x00CF92000000FFFF,  # 0x10: data, read/write
    0x00AF9A000000FFFF,  # 0x18: 64-bit code (L = 1, D = 0)
)


def stack_top(memory: GuestMemory, index: int) -> int:
    """The initial stack pointer (linear) of vCPU ``index``: 4 KiB stacks below low RAM's end."""
    return min(memory.size, LOW_RAM_END) - index * STACK_SIZE


def check_fits(memory: GuestMemory, image_start: int, image_end: int, vcpus: int) -> None:
    """Raises ``ConfigError`` if the program's image [start, end) would overlap the vCPUs'
    stacks at the top of low RAM (a program loaded above 1 MiB is clear of them)."""
    low_end = min(memory.size, LOW_RAM_END)
    lowest_stack = stack_top(memory, vcpus - 1) - STACK_SIZE
    if image_start < low_end and image_end > lowest_stack:
        raise ConfigError(
            f"the program ends at {image_end:#x} but {vcpus} vCPU stacks of {STACK_SIZE // 1024} KiB need "
            f"[{lowest_stack:#x}, {low_end:#x}); low RAM ends at {low_end:#x}. "
            "Use fewer vCPUs, a smaller program or more memory (low RAM grows up to 640 KiB)."
        )


def write_tables(memory: GuestMemory, mode: Mode) -> None:
    """Writes the GDT (protected, long) and page tables (long) into guest memory."""
    if mode is Mode.REAL:
        return
    memory.write(GDT_ADDRESS, b"".join(d.to_bytes(8, "little") for d in GDT_ENTRIES))
    if mode is Mode.LONG:
        memory.write_u64(PML4_ADDRESS, PDPT_ADDRESS | Pte.PRESENT | Pte.WRITE)
        for gib in range(4):
            directory = PD_ADDRESS + gib * 0x1000
            memory.write_u64(PDPT_ADDRESS + 8 * gib, directory | Pte.PRESENT | Pte.WRITE)
            entries = b"".join(
                (((gib * 512 + j) << 21) | Pte.PRESENT | Pte.WRITE | Pte.HUGE).to_bytes(8, "little") for j in range(512)
            )
            memory.write(directory, entries)


def _flat(segment, selector: int, type_: int, *, code64: bool = False) -> None:
    segment.base = 0
    segment.limit = 0xFFFFFFFF
    segment.selector = selector
    segment.type = type_
    segment.present = 1
    segment.dpl = 0
    segment.db = 0 if code64 else 1
    segment.s = 1
    segment.l = 1 if code64 else 0
    segment.g = 1
    segment.avl = 0
    segment.unusable = 0


@dataclass(frozen=True)
class EntryPoint:
    mode: Mode
    address: int

    def __repr__(self) -> str:
        return f"EntryPoint({self.mode.label}, {self.address:#x})"


def setup_vcpu(backend, memory: GuestMemory, entry: EntryPoint, index: int) -> None:
    """Puts vCPU ``index`` at ``entry`` in its mode, with its own stack and its index in DI."""
    mode = entry.mode
    top = stack_top(memory, index)
    sregs = backend.get_sregs()
    if mode is Mode.REAL:
        for name in ("cs", "ds", "es", "fs", "gs"):
            segment = getattr(sregs, name)
            segment.base, segment.selector, segment.limit = 0, 0, 0xFFFF
        stack_segment = (top - STACK_SIZE) >> 4
        sregs.ss.base, sregs.ss.selector, sregs.ss.limit = stack_segment << 4, stack_segment, 0xFFFF
        sregs.cr0 &= ~Cr0.PE
        stack_pointer = STACK_SIZE
    else:
        code_selector, code64 = (CODE64_SELECTOR, True) if mode is Mode.LONG else (CODE32_SELECTOR, False)
        _flat(sregs.cs, code_selector, 0xB, code64=code64)
        for name in ("ds", "es", "fs", "gs", "ss"):
            _flat(getattr(sregs, name), DATA_SELECTOR, 0x3)
        sregs.gdt.base, sregs.gdt.limit = GDT_ADDRESS, 8 * len(GDT_ENTRIES) - 1
        sregs.cr0 = (sregs.cr0 | Cr0.PE | Cr0.ET | Cr0.NE) & ~(Cr0.CD | Cr0.NW)
        sregs.cr4 |= Cr4.OSFXSR | Cr4.OSXMMEXCPT
        if mode is Mode.LONG:
            sregs.cr3 = PML4_ADDRESS
            sregs.cr4 |= Cr4.PAE
            sregs.efer |= Efer.LME | Efer.LMA
            sregs.cr0 |= Cr0.PG | Cr0.WP
        stack_pointer = top
    backend.set_sregs(sregs)
    regs = backend.get_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rip = entry.address
    regs.rflags = Rflags.RESERVED_1
    regs.rsp = stack_pointer
    regs.rdi = index
    backend.set_regs(regs)


def setup_multiboot_entry(backend, memory: GuestMemory, entry: int, info_address: int, gdt_address: int) -> None:
    """The state Multiboot promises a kernel: 32-bit protected mode, paging off, flat 4 GiB
    segments (CS 0x08, the rest 0x10, from a GDT at ``gdt_address``), interrupts off,
    EAX = BOOTLOADER_MAGIC (0x2BADB002), EBX = the information structure. ESP is undefined by the spec: 0."""
    memory.write(gdt_address, b"".join(d.to_bytes(8, "little") for d in GDT_ENTRIES[:3]))
    sregs = backend.get_sregs()
    _flat(sregs.cs, CODE32_SELECTOR, 0xB)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _flat(getattr(sregs, name), DATA_SELECTOR, 0x3)
    sregs.gdt.base, sregs.gdt.limit = gdt_address, 8 * 3 - 1
    sregs.cr0 = (sregs.cr0 | Cr0.PE | Cr0.ET) & ~(Cr0.CD | Cr0.NW | Cr0.PG)
    backend.set_sregs(sregs)
    regs = backend.get_regs()
    for name in ("rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rax, regs.rbx = BOOTLOADER_MAGIC, info_address
    regs.rip, regs.rflags = entry, Rflags.RESERVED_1
    backend.set_regs(regs)


def results_address(index: int) -> int:
    return RESULTS_ADDRESS + index * RESULTS_STRIDE
