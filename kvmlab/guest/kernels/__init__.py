"""Multiboot kernels that kvmlab builds itself, with its own assembler (no binutils needed, so
they boot on Binder too).

``smp_demo()`` returns an ELF32 image for ``Machine.boot``: a bootstrap processor that starts
each application processor in turn with INIT/SIPI, paced so that you can watch them stop
waiting for INIT one by one. Save it with ``Path("smp_demo.elf").write_bytes(smp_demo())`` to boot it with
``kvmlab boot``.
"""

from __future__ import annotations

from importlib import resources

from ...checks import is_whole_number
from ...devices import COM1, DEBUG_EXIT_PORT, MAILBOX_BASE
from ...devices.fw_cfg import FW_CFG_PORT
from ...devices.mailbox import COUNTERS
from ...errors import ConfigError
from ...vstate.layout import LAPIC_BASE
from ..asm import assemble
from ..elf import write_elf32

KERNEL_BASE = 0x100000  # 1 MiB, where Multiboot kernels live
TRAMPOLINE = 0x8000  # the SIPI vector is this page's number (8)
DATA = 0x110000  # the kernel's variables, in their own page (zeroed by the loader)
BSP_STACK = 0x112000
AP_STACKS = 0x112000  # 4 KiB per APIC ID above this (AP n's stack tops at + (n + 1) * 4 KiB)
MAX_APIC_ID = 255


def _source(filename: str) -> str:
    return resources.files(__name__).joinpath(filename).read_text()


def _count(name: str, value: int) -> int:
    if not is_whole_number(value) or not 1 <= value <= 0xFFFF_FFFF:
        raise ConfigError(f"{name}={value!r}: need a whole number from 1 to {0xFFFF_FFFF}")
    return value


def smp_demo(step_exits: int = 20_000, work: int = 20_000) -> bytes:
    """The SMP demo kernel as an ELF32 file. ``step_exits``: MMIO writes the BSP makes before
    starting each AP (the pace you watch: 20,000 take about 0.3 s on KVM here); ``work``: MMIO
    writes each AP makes before it halts. Ends with exit code 0."""
    defines = {
        "SERIAL": COM1,
        "DEBUG_EXIT": DEBUG_EXIT_PORT,
        "FW_CFG_SELECT": FW_CFG_PORT,
        "FW_CFG_DATA": FW_CFG_PORT + 1,
        "MAILBOX": MAILBOX_BASE,
        "MB_COUNTERS": COUNTERS,
        "LAPIC": LAPIC_BASE,
        "SIPI": 0x4600 | (TRAMPOLINE >> 12),
        "NCPUS": DATA,
        "STARTED": DATA + 4,
        "DONE": DATA + 8,
        "PRINT_LOCK": DATA + 12,
        "BSP_STACK": BSP_STACK,
        "AP_STACKS": AP_STACKS,
        "STEP_EXITS": _count("step_exits", step_exits),
        "WORK": _count("work", work),
    }
    kernel = assemble(_source("smp_demo.asm"), 32, KERNEL_BASE, defines=defines, name="smp_demo.asm")
    entry = KERNEL_BASE + 12  # right after the multiboot header
    trampoline = assemble(_source("trampoline.asm"), 16, TRAMPOLINE, defines={"ENTRY32": entry}, name="trampoline.asm")
    stacks_end = AP_STACKS + (MAX_APIC_ID + 2) * 0x1000
    return write_elf32([(TRAMPOLINE, trampoline, len(trampoline)), (KERNEL_BASE, kernel, len(kernel)), (DATA, b"", stacks_end - DATA)], entry)


__all__ = ["smp_demo"]
