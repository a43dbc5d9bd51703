"""KVM ioctl numbers and ABI constants, computed the way ``<linux/ioctl.h>`` does.

Every number here is checked against the system headers by ``tests/test_kvm_abi.py``.
"""

from __future__ import annotations

import ctypes
import enum

from . import structs as s

KVMIO = 0xAE

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iow(nr: int, struct) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _iowr(nr: int, struct) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# system ioctls (on /dev/kvm)
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, s.kvm_msr_list)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, s.kvm_cpuid2)

# VM ioctls
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, s.kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, s.kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, s.kvm_coalesced_mmio_zone)
KVM_IRQ_LINE_STATUS = _iowr(0x67, s.kvm_irq_level)
KVM_IRQFD = _iow(0x76, s.kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, s.kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, s.kvm_ioeventfd)
KVM_SIGNAL_MSI = _iow(0xA5, s.kvm_msi)

# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, s.kvm_regs)
KVM_SET_REGS = _iow(0x82, s.kvm_regs)
KVM_GET_SREGS = _ior(0x83, s.kvm_sregs)
KVM_SET_SREGS = _iow(0x84, s.kvm_sregs)
KVM_INTERRUPT = _iow(0x86, s.kvm_interrupt)
KVM_GET_MSRS = _iowr(0x88, s.kvm_msrs)
KVM_SET_MSRS = _iow(0x89, s.kvm_msrs)
KVM_GET_FPU = _ior(0x8C, s.kvm_fpu)
KVM_SET_FPU = _iow(0x8D, s.kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, s.kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, s.kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, s.kvm_cpuid2)
KVM_GET_MP_STATE = _ior(0x98, s.kvm_mp_state)
KVM_SET_GUEST_DEBUG = _iow(0x9B, s.kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _ior(0x9F, s.kvm_vcpu_events)
KVM_GET_DEBUGREGS = _ior(0xA1, s.kvm_debugregs)
KVM_GET_XSAVE = _ior(0xA4, s.kvm_xsave)
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_GET_XCRS = _ior(0xA6, s.kvm_xcrs)
KVM_KVMCLOCK_CTRL = _io(0xAD)
KVM_GET_STATS_FD = _io(0xCE)
KVM_GET_XSAVE2 = _ior(0xCF, s.kvm_xsave)

KVM_API_VERSION = 12

IOCTL_NUMBERS = {name: value for name, value in dict(globals()).items() if name.startswith("KVM_") and name != "KVM_API_VERSION"}


class ExitReason(enum.IntEnum):
    """``kvm_run.exit_reason`` values (``KVM_EXIT_*``)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    NOTIFY = 37

    @classmethod
    def name_of(cls, value: int) -> str:
        try:
            return cls(value).name
        except ValueError:
            return f"UNKNOWN_EXIT_{value}"


class IoDirection(enum.IntEnum):
    """``kvm_run.io.direction`` (``KVM_EXIT_IO_IN`` / ``KVM_EXIT_IO_OUT``)."""

    IN = 0
    OUT = 1


KVM_EXIT_IO_IN = int(IoDirection.IN)
KVM_EXIT_IO_OUT = int(IoDirection.OUT)


class InternalErrorSuberror(enum.IntEnum):
    """``kvm_run.internal.suberror`` (``KVM_INTERNAL_ERROR_*``)."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


class SystemEvent(enum.IntEnum):
    """``kvm_run.system_event.type`` (``KVM_SYSTEM_EVENT_*``)."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class MpState(enum.IntEnum):
    """``kvm_mp_state.mp_state`` (``KVM_MP_STATE_*``)."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8
    AP_RESET_HOLD = 9
    SUSPENDED = 10


class Cap(enum.IntEnum):
    """The ``KVM_CAP_*`` numbers kvmlab asks about."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    IRQFD = 32
    MP_STATE = 14
    COALESCED_MMIO = 15
    COALESCED_PIO = 162
    IOMMU = 18
    SET_GUEST_DEBUG = 23
    IOEVENTFD = 36
    IOEVENTFD_NO_LENGTH = 100
    IOEVENTFD_ANY_LENGTH = 122
    PIT2 = 33
    PIT_STATE2 = 35
    ADJUST_CLOCK = 39
    VCPU_EVENTS = 41
    DEBUGREGS = 50
    XSAVE = 55
    XCRS = 56
    GET_TSC_KHZ = 61
    TSC_DEADLINE_TIMER = 72
    MAX_VCPUS = 66
    SIGNAL_MSI = 77
    IRQFD_RESAMPLE = 82
    IMMEDIATE_EXIT = 136
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    BINARY_STATS_FD = 203
    XSAVE2 = 208
    SYSTEM_EVENT_DATA = 215


# KVM_SET_GUEST_DEBUG control bits (x86)
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000

KVM_MAX_CPUID_ENTRIES = 256

# KVM_IRQFD flags (api.rst 4.75)
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

# KVM_IOEVENTFD flags (api.rst 4.59); the C header spells them as 1 << kvm_ioeventfd_flag_nr_*
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
#: the coalesced MMIO ring's page within every vCPU's mmap (<asm/kvm.h>; KVM_CAP_COALESCED_MMIO
#: answers the same number at run time, which is what kvmlab uses)
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
#: entries in that ring: KVM_COALESCED_MMIO_MAX, (PAGE_SIZE - header) / entry (<linux/kvm.h>)
KVM_COALESCED_MMIO_MAX = (4096 - ctypes.sizeof(s.kvm_coalesced_mmio_ring)) // ctypes.sizeof(s.kvm_coalesced_mmio)

# KVM_CREATE_PIT2 flags (api.rst 4.71): answer port 0x61 (the speaker gate) in the kernel too
KVM_PIT_SPEAKER_DUMMY = 1

#: The IOAPIC's pins, and so the GSIs KVM's default routing has (KVM_CREATE_IRQCHIP, api.rst
#: 4.24): 0-15 reach both the PIC and the IOAPIC, 16-23 only the IOAPIC
KVM_IOAPIC_NUM_PINS = 24
#: GSIs below this also reach the two cascaded 8259 PICs (IRQ 0-7 master, 8-15 slave)
PIC_GSIS = 16

# The indices of the kvm_run page the exit paths use are in ``run`` (``kvmlab.kvm.run``).
