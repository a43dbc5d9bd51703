"""The x86 architecture's own bits, defined once: control registers, EFER, RFLAGS, page-table
entries and the MSRs kvmlab names. Everything that sets, tests or shows one of them imports it
from here (the mode setup, the page walk, the emulated engine, the inspector).

Each is an ``IntFlag``, so ``sregs.cr0 & Cr0.PE`` reads as the SDM does and still is a plain
int operation. References: Intel SDM Vol. 3A, section 2.5 "Control Registers" (CR0, CR4),
section 2.2.1 "Extended Feature Enable Register" (EFER), Vol. 1, section 3.4.3 "EFLAGS",
Vol. 3A, section 4.5 "4-Level Paging" (entry formats), chapter 6 "Interrupt and Exception
Handling" (vectors, gates, error codes).
"""

from __future__ import annotations

import enum


class Cr0(enum.IntFlag):
    PE = 1 << 0  # protection enable: protected mode
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4  # extension type (always 1 on modern CPUs)
    NE = 1 << 5  # native x87 error reporting
    WP = 1 << 16  # write protect, also for the kernel (kvmlab's choice in long mode, not a requirement)
    AM = 1 << 18
    NW = 1 << 29  # not write-through
    CD = 1 << 30  # cache disable
    PG = 1 << 31  # paging


class Cr4(enum.IntFlag):
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4  # 4 MiB pages in 32-bit paging
    PAE = 1 << 5  # physical address extension (needed for long mode)
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9  # the OS uses FXSAVE/FXRSTOR: SSE instructions allowed
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    CET = 1 << 23


class Efer(enum.IntFlag):
    SCE = 1 << 0
    LME = 1 << 8  # long mode enable
    LMA = 1 << 10  # long mode active: the CPU sets it when paging turns on with LME; a VMM that
    # enters long mode directly writes it itself (KVM_SET_SREGS refuses LME and PG without LMA)
    NXE = 1 << 11
    SVME = 1 << 12
    LMSLE = 1 << 13
    FFXSR = 1 << 14
    TCE = 1 << 15


class Rflags(enum.IntFlag):
    CF = 1 << 0
    RESERVED_1 = 1 << 1  # always reads as 1
    PF = 1 << 2
    AF = 1 << 4
    ZF = 1 << 6
    SF = 1 << 7
    TF = 1 << 8
    IF = 1 << 9
    DF = 1 << 10
    OF = 1 << 11
    NT = 1 << 14
    RF = 1 << 16
    VM = 1 << 17  # virtual-8086 mode
    AC = 1 << 18
    VIF = 1 << 19
    VIP = 1 << 20
    ID = 1 << 21


#: RFLAGS' I/O privilege level, two bits wide
RFLAGS_IOPL_SHIFT = 12


class Vector(enum.IntEnum):
    """The processor's own exception vectors (Intel SDM Vol. 3A, 6.3.1, Table 6-1); 32-255
    are free for interrupts."""

    DE = 0  # divide error (DIV, IDIV, AAM)
    DB = 1  # debug
    NMI = 2
    BP = 3  # breakpoint (INT3)
    OF = 4  # overflow (INTO)
    BR = 5  # BOUND range exceeded
    UD = 6  # invalid opcode (UD2, an undefined opcode)
    NM = 7  # device not available
    DF = 8  # double fault
    TS = 10  # invalid TSS
    NP = 11  # segment (or gate) not present
    SS = 12  # stack-segment fault
    GP = 13  # general protection
    PF = 14  # page fault
    MF = 16  # x87 floating-point error
    AC = 17  # alignment check
    MC = 18  # machine check
    XM = 19  # SIMD floating-point exception
    VE = 20  # virtualization exception
    CP = 21  # control protection


#: the exceptions that push an error code (SDM Vol. 3A, 6.13 and Table 6-1); an INT n with
#: one of these numbers pushes none, nor does anything in real mode
ERROR_CODE_VECTORS = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC, Vector.CP})
#: fault-class exceptions: the saved return address is the faulting instruction, which runs
#: again after the handler returns, and the pushed RFLAGS has RF set (SDM Vol. 3A, 6.5 and 17.3.1.1)
FAULT_VECTORS = frozenset({
    Vector.DE, Vector.BR, Vector.UD, Vector.NM, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF,
    Vector.MF, Vector.AC, Vector.XM, Vector.VE, Vector.CP,
})  # fmt: skip
#: the contributory exceptions of the double-fault rules (SDM Vol. 3A, Table 6-4 and 6-5)
CONTRIBUTORY_VECTORS = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})


class GateType(enum.IntEnum):
    """The type field of an IDT gate descriptor (SDM Vol. 3A, 6.11 and Table 3-2). In IA-32e
    mode only the 64-bit INTERRUPT and TRAP gates are valid."""

    TASK = 0x5
    INTERRUPT_16 = 0x6
    TRAP_16 = 0x7
    INTERRUPT = 0xE  # 32-bit (64-bit in IA-32e mode): clears IF on entry
    TRAP = 0xF  # leaves IF as it was


class PageFaultError(enum.IntFlag):
    """Bits of the error code a #PF pushes (SDM Vol. 3A, 4.7, Figure 4-12)."""

    PRESENT = 1 << 0  # 0: the page was not present; 1: a protection violation
    WRITE = 1 << 1
    USER = 1 << 2  # the access was made at CPL 3
    RESERVED = 1 << 3  # a reserved bit was set in a paging-structure entry
    FETCH = 1 << 4  # an instruction fetch (reported only with EFER.NXE or CR4.SMEP)


class SelectorError(enum.IntFlag):
    """Bits of a selector error code (#GP, #NP, #TS, #SS; SDM Vol. 3A, 6.13, Figure 6-6): the
    index sits above them (selector & ~7, or vector * 8 with IDT set)."""

    EXT = 1 << 0  # the event was external to the program (an interrupt, an earlier exception)
    IDT = 1 << 1  # the index refers to an IDT gate
    TI = 1 << 2  # (without IDT) the index refers to the LDT


class Pte(enum.IntFlag):
    """Bits of a page-table entry at any level (the ones kvmlab sets or walks)."""

    PRESENT = 1 << 0
    WRITE = 1 << 1
    HUGE = 1 << 7  # PS: this entry maps a large page (4 MiB, 2 MiB or 1 GiB)


#: The MSI address window (Intel SDM Vol. 3A, 11.11.1 "Message Address Register Format"):
#: a device's MSI is a write of its data to 0xFEE0_0000 | destination APIC ID << 12; bit 2
#: clear is physical destination mode, bit 3 clear no redirection hint
MSI_ADDRESS_BASE = 0xFEE0_0000
MSI_DESTINATION_SHIFT = 12
#: xAPIC IDs, and so MSI destinations in that format, are 8 bits
MSI_MAX_DESTINATION = 0xFF


def msi_message(apic_id: int, vector: int) -> tuple[int, int]:
    """(address, data) of a fixed, edge-triggered MSI of ``vector`` to the LAPIC whose ID is
    ``apic_id`` (SDM 11.11.2: data bits 7-0 the vector, delivery mode 000 fixed, bit 15 clear
    edge), in physical destination mode."""
    return MSI_ADDRESS_BASE | (apic_id << MSI_DESTINATION_SHIFT), vector


class Msr(enum.IntEnum):
    """Model-specific registers kvmlab reads or writes itself."""

    TSC = 0x10
    APIC_BASE = 0x1B
    SYSENTER_CS = 0x174
    SYSENTER_ESP = 0x175
    SYSENTER_EIP = 0x176
    PAT = 0x277
    EFER = 0xC0000080
    STAR = 0xC0000081
    LSTAR = 0xC0000082
    CSTAR = 0xC0000083
    SFMASK = 0xC0000084
    FS_BASE = 0xC0000100
    GS_BASE = 0xC0000101
    KERNEL_GS_BASE = 0xC0000102


#: the names of the MSRs KVM reports (KVM_GET_MSR_INDEX_LIST), for the inspector: the SDM's
#: architectural names, AMD's, and KVM's paravirtual ones (Documentation/virt/kvm/x86/msr.rst)
MSR_NAMES = {
    0x10: "IA32_TIME_STAMP_COUNTER", 0x11: "KVM_WALL_CLOCK (old)", 0x12: "KVM_SYSTEM_TIME (old)", 0x1B: "IA32_APIC_BASE",
    0x34: "MSR_SMI_COUNT", 0x3A: "IA32_FEATURE_CONTROL", 0x3B: "IA32_TSC_ADJUST", 0x8B: "IA32_BIOS_SIGN_ID",
    0xCE: "MSR_PLATFORM_INFO", 0x10A: "IA32_ARCH_CAPABILITIES", 0x140: "MSR_MISC_FEATURES_ENABLES",
    0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP", 0x176: "IA32_SYSENTER_EIP", 0x17A: "IA32_MCG_STATUS",
    0x17B: "IA32_MCG_CTL", 0x1A0: "IA32_MISC_ENABLE", 0x1D9: "IA32_DEBUGCTL", 0x1DB: "LAST_BRANCH_FROM_IP",
    0x1DC: "LAST_BRANCH_TO_IP", 0x1DD: "LAST_EXCEPTION_FROM_IP", 0x1DE: "LAST_EXCEPTION_TO_IP", 0x1FC: "MSR_POWER_CTL",
    0x277: "IA32_PAT", 0x345: "IA32_PERF_CAPABILITIES", 0x6E0: "IA32_TSC_DEADLINE", 0xC0000080: "IA32_EFER",
    0xC0000081: "STAR", 0xC0000082: "LSTAR", 0xC0000083: "CSTAR", 0xC0000084: "SFMASK", 0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE", 0xC0000102: "KERNEL_GS_BASE", 0xC0000103: "TSC_AUX", 0xC0010015: "AMD HWCR",
    0xC0010117: "AMD VM_HSAVE_PA", 0xC001011F: "AMD VIRT_SPEC_CTRL", 0x4B564D00: "KVM_WALL_CLOCK_NEW",
    0x4B564D01: "KVM_SYSTEM_TIME_NEW", 0x4B564D02: "KVM_ASYNC_PF_EN", 0x4B564D03: "KVM_STEAL_TIME",
    0x4B564D04: "KVM_PV_EOI_EN", 0x4B564D05: "KVM_POLL_CONTROL", 0x4B564D06: "KVM_ASYNC_PF_INT",
    0x4B564D07: "KVM_ASYNC_PF_ACK",
}  # fmt: skip


def bit_names(flags: type[enum.IntFlag]) -> dict[int, str]:
    """{bit number: name} of a single-bit flag class (for views that list the set bits)."""
    return {member.value.bit_length() - 1: member.name for member in flags if member.value and not member.name.startswith("RESERVED")}
