"""Interrupt tables as the CPU reads them: the real-mode IVT and the protected and long mode IDT.

When an interrupt or an exception arrives, the CPU looks its handler up in the table IDTR
points at (Intel SDM Vol. 3A, 6.10-6.14; real mode: Vol. 3B, 20.1.4):

* real mode: 4-byte entries, offset then segment, at IDTR.base + 4 * vector;
* protected mode: 8-byte gate descriptors (offset 0-15, code segment selector, type and
  present bit, offset 16-31) at IDTR.base + 8 * vector;
* IA-32e (long) mode: 16-byte gates, the same plus offset 32-63 and a reserved dword, with an
  IST index (a stack from the TSS) in the byte protected mode leaves 0.

An entry beyond IDTR.limit, one that is not a gate or not present, or whose code segment is
no code segment, makes the CPU raise #GP or #NP instead (with the entry's index in the error
code), which it delivers through the same table; when that fails too, #DF, and then it gives
up: a triple fault. ``read_gate`` reads and checks the entry for one vector through the
guest's own paging, and raises ``UndeliverableVector`` with the reason and the exception the
CPU would raise instead. Both engines call it before an interrupt goes in, so a guest without
a handler for a raised vector stops with a message saying so, not with a silent triple fault.
``encode_gate`` writes an entry (for tests and notebooks).

The layouts are the ctypes structures below, defined once: ``read_gate`` decodes with them
and ``encode_gate`` encodes with them.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ..errors import ConfigError, GuestMemoryError, UndeliverableVector
from ..x86 import Cr0, Efer, GateType, SelectorError, Vector
from .modes import Mode
from .paging import NotMapped, read_linear

u8, u16, u32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32


class IvtEntry(ctypes.LittleEndianStructure):
    """A real-mode interrupt vector: the handler's offset, then its segment."""

    _pack_ = 1
    _fields_ = [("offset", u16), ("segment", u16)]


class GateDescriptor(ctypes.LittleEndianStructure):
    """A protected-mode gate (8 bytes), and the first half of an IA-32e one."""

    _pack_ = 1
    _fields_ = [
        ("offset_low", u16),
        ("selector", u16),
        ("ist", u8, 3),  # IA-32e: the TSS stack to switch to (0: none)
        ("zero", u8, 5),
        ("type", u8, 4),  # GateType
        ("s", u8, 1),  # 0 for every gate (1 would be a code or data segment)
        ("dpl", u8, 2),
        ("present", u8, 1),
        ("offset_middle", u16),
    ]


class GateDescriptor64(ctypes.LittleEndianStructure):
    """An IA-32e mode gate (16 bytes)."""

    _pack_ = 1
    _fields_ = [("low", GateDescriptor), ("offset_high", u32), ("reserved", u32)]


class SegmentDescriptor(ctypes.LittleEndianStructure):
    """A code or data segment descriptor in the GDT (SDM Vol. 3A, 3.4.5)."""

    _pack_ = 1
    _fields_ = [
        ("limit_low", u16),
        ("base_low", u16),
        ("base_middle", u8),
        ("type", u8, 4),
        ("s", u8, 1),  # 1: code or data
        ("dpl", u8, 2),
        ("present", u8, 1),
        ("limit_high", u8, 4),
        ("avl", u8, 1),
        ("l", u8, 1),  # 64-bit code
        ("db", u8, 1),  # 32-bit code or stack
        ("g", u8, 1),  # limit in 4 KiB units
        ("base_high", u8),
    ]


#: bytes per table entry in each CPU mode
ENTRY_SIZES = {Mode.REAL: ctypes.sizeof(IvtEntry), Mode.PROTECTED: ctypes.sizeof(GateDescriptor), Mode.LONG: ctypes.sizeof(GateDescriptor64)}
assert ENTRY_SIZES == {Mode.REAL: 4, Mode.PROTECTED: 8, Mode.LONG: 16}
#: a code segment's type field has this bit set (SDM Vol. 3A, Table 3-1)
CODE_SEGMENT = 0x8
# plain ints: an IntFlag's & or | costs 20 times an int's, and an interrupt reads a gate
_PE, _LMA, _EXT, _IDT, _TI = int(Cr0.PE), int(Efer.LMA), int(SelectorError.EXT), int(SelectorError.IDT), int(SelectorError.TI)
_GATES = {Mode.PROTECTED: frozenset(GateType), Mode.LONG: frozenset({GateType.INTERRUPT, GateType.TRAP})}
_NAMES = {GateType.TASK: "task gate", GateType.INTERRUPT_16: "16-bit interrupt gate", GateType.TRAP_16: "16-bit trap gate"}


@dataclass(frozen=True)
class Gate:
    """The table entry for ``vector``, decoded: where its handler is and how it is entered.
    In real mode ``selector`` is the handler's segment and ``type`` is None."""

    vector: int
    mode: Mode
    #: the entry's linear address
    address: int
    selector: int
    offset: int
    type: GateType | None = None
    dpl: int = 0
    present: bool = True
    ist: int = 0

    @property
    def clears_if(self) -> bool:
        """Whether entering the handler clears RFLAGS.IF: real mode and interrupt gates do,
        trap gates do not."""
        return self.type not in (GateType.TRAP, GateType.TRAP_16)

    @property
    def kind(self) -> str:
        if self.type is None:
            return "real-mode vector"
        bits = "64-bit" if self.mode is Mode.LONG else "32-bit"
        return _NAMES.get(self.type) or f"{bits} {'trap' if self.type is GateType.TRAP else 'interrupt'} gate"

    def __str__(self) -> str:
        where = f"{self.selector:04x}:{self.offset:04x}" if self.type is None else f"{self.selector:#x}:{self.offset:#x}"
        return f"vector {self.vector} ({self.vector:#x}): {self.kind} -> {where}"


@dataclass(frozen=True)
class Segment:
    """A GDT descriptor, decoded (``read_descriptor``)."""

    selector: int
    base: int
    limit: int
    type: int
    s: int
    dpl: int
    present: int
    l: int
    db: int
    g: int
    avl: int

    @property
    def is_code(self) -> bool:
        return bool(self.s and self.type & CODE_SEGMENT)


def table_mode(sregs: dict) -> Mode:
    """Which table format the CPU uses under ``sregs``: IA-32e mode (EFER.LMA) uses 16-byte
    gates even for compatibility-mode code, protected mode 8-byte ones, real mode the IVT."""
    if not sregs["cr0"] & _PE:
        return Mode.REAL
    return Mode.LONG if sregs["efer"] & _LMA else Mode.PROTECTED


def read_descriptor(memory, sregs: dict, selector: int) -> Segment:
    """The GDT descriptor ``selector`` names (linear GDT address, through paging). Raises
    ``GuestMemoryError`` (``NotMapped`` included) where the GDT cannot be read."""
    raw = SegmentDescriptor.from_buffer_copy(read_linear(memory, sregs, sregs["gdt"]["base"] + (selector & ~7), ctypes.sizeof(SegmentDescriptor)))
    limit = raw.limit_low | raw.limit_high << 16
    return Segment(
        selector=selector,
        base=raw.base_low | raw.base_middle << 16 | raw.base_high << 24,
        limit=(limit << 12) | 0xFFF if raw.g else limit,
        type=raw.type, s=raw.s, dpl=raw.dpl, present=raw.present, l=raw.l, db=raw.db, g=raw.g, avl=raw.avl,
    )  # fmt: skip


def read_gate(memory, sregs: dict, vector: int, *, external: bool = True) -> Gate:
    """The entry the CPU would use for ``vector`` under ``sregs`` (a ``kvm_sregs`` dict: the
    IDTR, GDTR, CR0/CR3/CR4 and EFER are read), read through the guest's paging.

    Raises ``UndeliverableVector`` when the CPU could not deliver through it, naming the
    vector, what is wrong, the IDTR and what to set up; its ``fault`` / ``error_code`` are
    what the CPU raises instead (the error code's EXT bit is ``external``: an interrupt or
    an exception, not an INT n). What is not checked here: the gate's DPL against the CPL
    for INT n (kvmlab guests run at CPL 0, where every gate passes), LDT selectors (refused:
    kvmlab reads no LDT), and, for a task gate, the TSS."""
    if not 0 <= vector <= 255:
        raise ConfigError(f"vector={vector!r}: x86 has vectors 0 to 255")
    mode = table_mode(sregs)
    size = ENTRY_SIZES[mode]
    base, limit = sregs["idt"]["base"], sregs["idt"]["limit"]
    address = base + vector * size
    ext = _EXT if external else 0
    own_code = vector << 3 | _IDT | ext  # the error code that names this entry

    def fail(reason: str, fault: int = Vector.GP, error_code: int = own_code, cr2: int | None = None):
        return UndeliverableVector(_message(vector, mode, base, limit, reason), vector=vector, fault=fault, error_code=error_code, cr2=cr2)

    if vector * size + size - 1 > limit:
        raise fail(f"its entry (bytes {vector * size:#x}-{vector * size + size - 1:#x} of the table) is beyond the table's limit")
    try:
        raw = read_linear(memory, sregs, address, size)
    except NotMapped as err:
        raise fail(f"its entry at {address:#x} is in a page the guest's page tables do not map", Vector.PF, 0, getattr(err, "address", address)) from err
    except GuestMemoryError as err:
        raise fail(f"its entry at {address:#x} is not in guest RAM") from err
    if mode is Mode.REAL:
        entry = IvtEntry.from_buffer_copy(raw)
        return Gate(vector, mode, address, entry.segment, entry.offset)
    if mode is Mode.LONG:
        wide = GateDescriptor64.from_buffer_copy(raw)
        low, offset_high = wide.low, wide.offset_high
    else:
        low, offset_high = GateDescriptor.from_buffer_copy(raw), 0
    offset = low.offset_low | low.offset_middle << 16 | offset_high << 32
    if low.s or low.type not in _GATES[mode]:
        valid = "a 64-bit interrupt (type 0xe) or trap (0xf) gate" if mode is Mode.LONG else "an interrupt, trap or task gate"
        raise fail(f"its entry at {address:#x} is not a gate (type {low.type:#x}{', S=1' if low.s else ''}: an empty entry reads 0), not {valid}")
    gate = Gate(vector, mode, address, low.selector, offset, GateType(low.type), low.dpl, bool(low.present), low.ist if mode is Mode.LONG else 0)
    if not gate.present:
        raise fail(f"its {gate.kind} at {address:#x} is not present (P=0)", Vector.NP)
    if gate.type is not GateType.TASK:
        _check_code_segment(memory, sregs, gate, ext, fail)
    if mode is Mode.LONG and offset >> 47 not in (0, 0x1FFFF):
        raise fail(f"its handler address {offset:#x} is not canonical", Vector.GP, 0)
    return gate


def _check_code_segment(memory, sregs: dict, gate: Gate, ext: int, fail) -> None:
    """The gate's selector must name a present code segment of DPL 0 (64-bit in IA-32e mode)."""
    selector = gate.selector
    code = (selector & ~3) | ext
    if not selector & ~3:
        raise fail(f"its {gate.kind} has a null code segment selector", Vector.GP, ext)
    if selector & _TI:
        raise fail(f"its {gate.kind} selector {selector:#x} points into the LDT, which kvmlab does not read", Vector.GP, code)
    gdt_limit = sregs["gdt"]["limit"]
    if (selector | 7) > gdt_limit:
        raise fail(f"its {gate.kind} selector {selector:#x} is beyond the GDT limit {gdt_limit:#x}", Vector.GP, code)
    try:
        segment = read_descriptor(memory, sregs, selector)
    except GuestMemoryError as err:
        raise fail(f"its {gate.kind} selector {selector:#x} names a GDT entry that cannot be read ({err})", Vector.GP, code) from err
    if not segment.is_code:
        raise fail(f"its {gate.kind} selector {selector:#x} is not a code segment (type {segment.type:#x}, S={segment.s})", Vector.GP, code)
    if segment.dpl != 0:
        raise fail(f"its {gate.kind} selector {selector:#x} is a code segment of DPL {segment.dpl}, above CPL 0", Vector.GP, code)
    if gate.mode is Mode.LONG and not (segment.l and not segment.db):
        raise fail(f"its {gate.kind} selector {selector:#x} is not a 64-bit code segment (L={segment.l}, D={segment.db})", Vector.GP, code)
    if not segment.present:
        raise fail(f"its {gate.kind} selector {selector:#x} is a code segment that is not present", Vector.NP, code)


def _message(vector: int, mode: Mode, base: int, limit: int, reason: str) -> str:
    size = ENTRY_SIZES[mode]
    if mode is Mode.REAL:
        advice = (
            f"give it a handler: write the handler's offset and segment at {base + size * vector:#x} "
            f"(IDTR.base + 4 * {vector}), or lidt a table that has one"
        )
    else:
        gate = "a 64-bit interrupt or trap gate to a 64-bit code segment" if mode is Mode.LONG else "a 32-bit interrupt or trap gate to a code segment"
        advice = (
            f"set up an IDT first: lidt a table whose entry {vector} (at IDTR.base + {size} * {vector}) is a present "
            f"{gate.removeprefix('a ')} (kvmlab.guest.idt.encode_gate writes one)"
        )
    return (
        f"interrupt vector {vector} ({vector:#x}) cannot be delivered: {reason}; IDTR base {base:#x}, limit {limit:#x} "
        f"({mode.label} mode, {size}-byte entries). A CPU would raise an exception instead and, without a handler "
        f"for that either, triple-fault. To take it, {advice}"
    )


def encode_gate(
    offset: int, selector: int = 0, *, mode: Mode | str = Mode.PROTECTED, type: GateType = GateType.INTERRUPT,
    dpl: int = 0, present: bool = True, ist: int = 0,
) -> bytes:  # fmt: skip
    """One table entry as the CPU reads it: in real mode the vector (``offset`` and the
    segment ``selector``), else a gate of ``type`` to ``selector``:``offset`` (8 bytes in
    protected mode, 16 in long mode). Write it at IDTR.base + entry size * vector."""
    mode = Mode.parse(mode)
    if mode is Mode.REAL:
        return bytes(IvtEntry(offset & 0xFFFF, selector & 0xFFFF))
    low = GateDescriptor(
        offset_low=offset & 0xFFFF, selector=selector, ist=ist, type=int(type), s=0, dpl=dpl, present=int(present),
        offset_middle=offset >> 16 & 0xFFFF,
    )  # fmt: skip
    if mode is Mode.PROTECTED:
        return bytes(low)
    return bytes(GateDescriptor64(low=low, offset_high=offset >> 32 & 0xFFFF_FFFF))
