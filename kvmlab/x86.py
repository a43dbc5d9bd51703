"""The x86 architecture's own bits, defined once: control registers, EFER, RFLAGS, page-table
entries and the MSRs kvmlab names. Everything that sets, tests or shows one of them imports it
from here (the mode setup, the page walk, the emulated engine, the inspector).

Each is an ``IntFlag``, so ``sregs.cr0 & Cr0.PE`` reads as the SDM does and still is a plain
int operation. References: Intel SDM Vol. 3A, section 2.5 "Control Registers" (CR0, CR4),
section 2.2.1 "Extended Feature Enable Register" (EFER), Vol. 1, section 3.4.3 "EFLAGS",
Vol. 3A, section 4.5 "4-Level Paging" (entry formats).
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
