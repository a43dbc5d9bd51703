"""The bytes at a vCPU's RIP, read from guest memory as the CPU would fetch them.

Why here and not in the inspector: a vCPU's final state must carry its code (the instruction
that killed it), and that code has to be read while the guest's memory still exists, on the
vCPU's own thread as it ends. The inspector (``kvmlab.lab.inspect``) only disassembles bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GuestMemoryError
from ..x86 import Cr0, Efer
from .paging import translate

#: the longest x86 instruction, in bytes
MAX_INSTRUCTION = 15
#: bytes read at RIP: 8 of the longest instructions
CODE_BYTES = MAX_INSTRUCTION * 8


@dataclass(frozen=True)
class GuestCode:
    """Plain bytes at RIP (no memory, no fd): what a finished vCPU's inspector disassembles."""

    bits: int  # 16, 32 or 64: how to decode them
    rip: int
    linear: int  # CS base + RIP (RIP itself in 64-bit mode)
    physical: int | None  # None: not readable (``problem`` says why)
    data: bytes = field(default=b"", repr=False)
    problem: str | None = None


def code_bits(sregs: dict) -> int:
    """16, 32 or 64: the width the CPU decodes instructions with, from CR0, EFER and CS."""
    cr0, efer, cs = sregs["cr0"], sregs["efer"], sregs["cs"]
    if efer & Efer.LMA and cs["l"]:
        return 64
    if cr0 & Cr0.PE and cs["db"]:
        return 32
    return 16


def code_at(memory, regs: dict, sregs: dict, length: int = CODE_BYTES) -> GuestCode:
    """Reads up to ``length`` bytes at CS:RIP (CS base added, the guest's page tables walked)."""
    bits = code_bits(sregs)
    rip = regs["rip"]
    linear = rip if bits == 64 else (sregs["cs"]["base"] + rip) & 0xFFFF_FFFF
    try:
        physical = translate(memory, sregs, linear)
        return GuestCode(bits, rip, linear, physical, bytes(memory.read_available(physical, length)))
    except GuestMemoryError as err:
        return GuestCode(bits, rip, linear, None, problem=f"no code to show at RIP {rip:#x} (linear {linear:#x}): {err}")
