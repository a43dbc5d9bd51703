"""ctypes mirrors of the ``<linux/kvm.h>`` / ``<asm/kvm.h>`` structures kvmlab uses (x86_64).

Kept apart from the ioctl wrappers, as rust-vmm keeps ``kvm-bindings`` apart from ``kvm-ioctls``:
these are plain data layouts with no behaviour. ``tests/test_kvm_abi.py`` compiles a C program
against the system headers and checks every size and field offset declared here, so a typo
cannot silently corrupt a vCPU's state.

Variable-length structures (``kvm_msrs``, ``kvm_cpuid2``, ``kvm_msr_list``) are built by the
``*_with`` helpers, which append a fixed-size entry array after the header exactly as the C
flexible array member does.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int32, c_uint8, c_uint16, c_uint32, c_uint64

u8, u16, u32, u64 = c_uint8, c_uint16, c_uint32, c_uint64


class Struct(ctypes.Structure):
    """A C struct with a readable repr and a ``to_dict`` for saved state and notebooks."""

    def to_dict(self) -> dict:
        return {name: _plain(getattr(self, name)) for name, *_ in self._fields_ if not name.startswith("pad")}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"


def _plain(value):
    """Turns ctypes values into plain Python values (ints, lists, dicts, bytes)."""
    if isinstance(value, Struct):
        return value.to_dict()
    if isinstance(value, ctypes.Array):
        if value._type_ in (c_char, u8):
            return bytes(value)
        return [_plain(v) for v in value]
    return value


def copy_struct(struct):
    """A detached copy of a ctypes struct that lives inside a larger buffer (an entries array)."""
    clone = type(struct)()
    ctypes.memmove(ctypes.byref(clone), ctypes.byref(struct), ctypes.sizeof(struct))
    return clone


# --- system and VM -----------------------------------------------------------------------------


class kvm_userspace_memory_region(Struct):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_coalesced_mmio_zone(Struct):
    """KVM_(UN)REGISTER_COALESCED_MMIO's argument (api.rst 4.66/4.67): writes to ``size``
    bytes at ``addr`` go to the ring instead of exiting; ``pio`` 1 for a port range
    (``KVM_CAP_COALESCED_PIO``). In C ``pio`` shares a union with ``pad``."""

    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(Struct):
    """One entry of the coalesced MMIO ring: a guest write of ``len`` bytes (``data``)."""

    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(Struct):
    """The ring's header, at page ``KVM_CAP_COALESCED_MMIO``'s answer of every vCPU's mmap:
    KVM writes at ``last``, the VMM consumes from ``first``; the entries follow."""

    _fields_ = [("first", u32), ("last", u32)]


class kvm_pit_config(Struct):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class _irq_level_u(ctypes.Union):
    _fields_ = [("irq", u32), ("status", c_int32)]


class kvm_irq_level(Struct):
    """KVM_IRQ_LINE's argument (api.rst 4.25): ``irq`` is a GSI, an input of the in-kernel
    irqchip, not a vector; ``level`` 1 asserts it, 0 deasserts it. KVM_IRQ_LINE_STATUS writes
    its answer over ``irq`` (the same bytes, as ``status``: below 0 every controller ignored
    it (masked), 0 coalesced with one still pending, above 0 delivered to that many)."""

    _anonymous_ = ("u",)
    _fields_ = [("u", _irq_level_u), ("level", u32)]


class kvm_irqfd(Struct):
    """KVM_IRQFD's argument (api.rst 4.75): an eventfd that injects ``gsi`` when written;
    with KVM_IRQFD_FLAG_RESAMPLE, ``resamplefd`` is signalled when the guest EOIs it."""

    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(Struct):
    """KVM_IOEVENTFD's argument (api.rst 4.59): a guest write of ``len`` bytes (0: any length,
    MMIO only) to ``addr`` (a port with KVM_IOEVENTFD_FLAG_PIO) signals eventfd ``fd`` instead
    of exiting; with KVM_IOEVENTFD_FLAG_DATAMATCH only a write of the value ``datamatch``."""

    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", c_int32), ("flags", u32), ("pad", u8 * 36)]


class kvm_msi(Struct):
    """KVM_SIGNAL_MSI's argument (api.rst 4.71): the address/data pair a device would write."""

    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32), ("pad", u8 * 12)]


class kvm_msr_list(Struct):
    """Header of the MSR index list; ``msr_list_with(n)`` appends room for n indices."""

    _fields_ = [("nmsrs", u32)]


def msr_list_with(capacity: int) -> ctypes.Structure:
    class kvm_msr_list_n(Struct):
        _fields_ = [("nmsrs", u32), ("indices", u32 * capacity)]

    return kvm_msr_list_n(nmsrs=capacity)


# --- registers -----------------------------------------------------------------------------------

GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)  # fmt: skip


class kvm_regs(Struct):
    _fields_ = [(name, u64) for name in GENERAL_REGISTERS]


class kvm_segment(Struct):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(Struct):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


SEGMENT_REGISTERS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
KVM_NR_INTERRUPTS = 256


class kvm_sregs(Struct):
    _fields_ = [(name, kvm_segment) for name in SEGMENT_REGISTERS] + [
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(Struct):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_msr_entry(Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(Struct):
    """Header of ``struct kvm_msrs``; ``msrs_with(indices)`` builds one with its entries."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


def msrs_with(indices, values=None) -> ctypes.Structure:
    count = len(indices)

    class kvm_msrs_n(Struct):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * count)]

    msrs = kvm_msrs_n(nmsrs=count)
    for i, index in enumerate(indices):
        msrs.entries[i].index = index
        if values is not None:
            msrs.entries[i].data = values[i]
    return msrs


class kvm_cpuid_entry2(Struct):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(Struct):
    """Header of ``struct kvm_cpuid2``; ``cpuid2_with(n)`` appends room for n entries."""

    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2_with(capacity: int) -> ctypes.Structure:
    class kvm_cpuid2_n(Struct):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * capacity)]

    return kvm_cpuid2_n(nent=capacity)


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(Struct):
    # u8 rather than c_char: ctypes cuts a c_char array at its first NUL when read
    _fields_ = [("regs", u8 * KVM_APIC_REG_SIZE)]


class kvm_xsave(Struct):
    """The legacy 4 KiB XSAVE area (``KVM_GET_XSAVE``); larger areas come from ``KVM_GET_XSAVE2``."""

    _fields_ = [("region", u32 * 1024)]


KVM_MAX_XCRS = 16


class kvm_xcr(Struct):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(Struct):
    _fields_ = [
        ("nr_xcrs", u32),
        ("flags", u32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", u64 * 16),
    ]


class _events_exception(Struct):
    _fields_ = [
        ("injected", u8),
        ("nr", u8),
        ("has_error_code", u8),
        ("pending", u8),
        ("error_code", u32),
    ]


class _events_interrupt(Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _events_triple_fault(Struct):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(Struct):
    _fields_ = [
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", _events_smi),
        ("triple_fault", _events_triple_fault),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_mp_state(Struct):
    _fields_ = [("mp_state", u32)]


class kvm_interrupt(Struct):
    """KVM_INTERRUPT's argument: an interrupt *vector* (0-255), not a pin or line (api.rst 4.16)."""

    _fields_ = [("irq", u32)]


class kvm_debugregs(Struct):
    _fields_ = [
        ("db", u64 * 4),
        ("dr6", u64),
        ("dr7", u64),
        ("flags", u64),
        ("reserved", u64 * 9),
    ]


class kvm_guest_debug_arch(Struct):
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(Struct):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


# --- kvm_run and its exit union --------------------------------------------------------------


class kvm_run_hw(Struct):
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_fail_entry(Struct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(Struct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_io(Struct):
    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    ]


class kvm_debug_exit_arch(Struct):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_run_debug(Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class kvm_run_mmio(Struct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_internal(Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_system_event(Struct):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit_union(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", u8 * 256),
    ]


class kvm_run(Struct):
    """The shared page KVM fills on every exit. The hot path reads it through typed views at
    indices derived from this struct (``kvmlab.kvm.run``: ``RUN``, a ``KvmRunLayout``, and
    the same as plain ints); the struct itself is for tests, notebooks and slow paths."""

    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", kvm_run_exit_union),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
    ]


# --- binary statistics ----------------------------------------------------------------------


class kvm_stats_header(Struct):
    _fields_ = [
        ("flags", u32),
        ("name_size", u32),
        ("num_desc", u32),
        ("id_offset", u32),
        ("desc_offset", u32),
        ("data_offset", u32),
    ]


class kvm_stats_desc(Struct):
    """Fixed part of a stats descriptor; ``name_size`` bytes of name follow it."""

    _fields_ = [
        ("flags", u32),
        ("exponent", ctypes.c_int16),
        ("size", u16),
        ("offset", u32),
        ("bucket_size", u32),
    ]


# For the ABI test: (python struct, C struct name). Fields are checked recursively by name.
ABI_STRUCTS = {
    "kvm_userspace_memory_region": kvm_userspace_memory_region,
    "kvm_coalesced_mmio_zone": kvm_coalesced_mmio_zone,
    "kvm_coalesced_mmio": kvm_coalesced_mmio,
    "kvm_coalesced_mmio_ring": kvm_coalesced_mmio_ring,
    "kvm_pit_config": kvm_pit_config,
    "kvm_irq_level": kvm_irq_level,
    "kvm_irqfd": kvm_irqfd,
    "kvm_ioeventfd": kvm_ioeventfd,
    "kvm_msi": kvm_msi,
    "kvm_msr_list": kvm_msr_list,
    "kvm_regs": kvm_regs,
    "kvm_segment": kvm_segment,
    "kvm_dtable": kvm_dtable,
    "kvm_sregs": kvm_sregs,
    "kvm_fpu": kvm_fpu,
    "kvm_msr_entry": kvm_msr_entry,
    "kvm_msrs": kvm_msrs,
    "kvm_cpuid_entry2": kvm_cpuid_entry2,
    "kvm_cpuid2": kvm_cpuid2,
    "kvm_lapic_state": kvm_lapic_state,
    "kvm_xsave": kvm_xsave,
    "kvm_xcr": kvm_xcr,
    "kvm_xcrs": kvm_xcrs,
    "kvm_vcpu_events": kvm_vcpu_events,
    "kvm_mp_state": kvm_mp_state,
    "kvm_interrupt": kvm_interrupt,
    "kvm_debugregs": kvm_debugregs,
    "kvm_guest_debug": kvm_guest_debug,
    "kvm_guest_debug_arch": kvm_guest_debug_arch,
    "kvm_debug_exit_arch": kvm_debug_exit_arch,
    "kvm_run": kvm_run,
    "kvm_stats_header": kvm_stats_header,
    "kvm_stats_desc": kvm_stats_desc,
}

__all__ = [name for name in globals() if name.startswith("kvm_")] + [
    "msrs_with",
    "msr_list_with",
    "cpuid2_with",
    "copy_struct",
    "GENERAL_REGISTERS",
    "SEGMENT_REGISTERS",
    "ABI_STRUCTS",
    "c_int32",
]
