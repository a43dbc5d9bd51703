"""``VcpuFd``: a KVM vCPU file descriptor, its shared ``kvm_run`` page and its ioctls.

The ``kvm_run`` page is exposed three ways: ``run_struct`` (a ctypes view, for readable slow
paths), and ``run_u8``/``run_u16``/``run_u32``/``run_u64`` (typed memoryviews over the same
bytes, for the exit hot path, where a ctypes attribute access would cost more than the index).
"""

from __future__ import annotations

import ctypes
import mmap

from . import constants as c
from . import run as r
from . import structs as s
from .fd import OwnedFd
from .stats import KvmStats
from .syscall import KvmIoctlError, get_errno, ioctl, kvm_run_ioctl


class VcpuFd(OwnedFd):
    """One thin method per vCPU ioctl; owns the fd (``OwnedFd``) and the mmap of its ``kvm_run``.

    The fd is owned before the mmap is tried: a failed mapping (or view) closes it again
    instead of leaving a bare int behind in a dead frame.
    """

    def __init__(self, fd: int, mmap_size: int, index: int):
        super().__init__(fd, f"VcpuFd of vCPU {index}")
        self.index = index
        self.mmap_size = mmap_size
        with self.closed_on_error():
            self._mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.run_u8 = memoryview(self._mmap)
            self.run_u16 = self.run_u8.cast("H")
            self.run_u32 = self.run_u8.cast("I")
            self.run_u64 = self.run_u8.cast("Q")
            self.run_struct = s.kvm_run.from_buffer(self._mmap)

    def _release(self) -> None:
        """Unmaps ``kvm_run`` (``close`` then closes the fd). The vCPU thread must have been
        joined first. Copes with a construction that stopped before any of these existed."""
        self.run_struct = None
        for name in ("run_u64", "run_u32", "run_u16", "run_u8"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()
        mapping = getattr(self, "_mmap", None)
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # someone still holds a ctypes view of kvm_run; the mapping goes with it

    # --- KVM_RUN and the immediate_exit byte ----------------------------------------------

    def run(self) -> int:
        """One ``KVM_RUN``. Returns 0 after an exit (read ``exit_reason``), or the errno.

        Returning the errno instead of raising keeps EINTR (a kick) off the exception path.
        """
        if kvm_run_ioctl(self.fd, c.KVM_RUN, 0) < 0:
            return get_errno()
        return 0

    @property
    def immediate_exit(self) -> int:
        return self.run_u8[r.IMMEDIATE_EXIT_U8]

    def set_kvm_immediate_exit(self, value: int) -> None:
        self.run_u8[r.IMMEDIATE_EXIT_U8] = value

    @property
    def exit_reason(self) -> int:
        return self.run_u32[r.EXIT_REASON_U32]

    def io_data(self, data_offset: int, length: int) -> memoryview:
        """The port I/O data KVM placed (or expects) at ``data_offset`` inside the run page."""
        return self.run_u8[data_offset : data_offset + length]

    # --- registers ------------------------------------------------------------------------

    def get_regs(self) -> s.kvm_regs:
        return self._get(c.KVM_GET_REGS, s.kvm_regs, "KVM_GET_REGS")

    def set_regs(self, regs: s.kvm_regs) -> None:
        ioctl(self.fd, c.KVM_SET_REGS, ctypes.byref(regs), name="KVM_SET_REGS")

    def get_sregs(self) -> s.kvm_sregs:
        return self._get(c.KVM_GET_SREGS, s.kvm_sregs, "KVM_GET_SREGS")

    def set_sregs(self, sregs: s.kvm_sregs) -> None:
        ioctl(self.fd, c.KVM_SET_SREGS, ctypes.byref(sregs), name="KVM_SET_SREGS")

    def get_fpu(self) -> s.kvm_fpu:
        return self._get(c.KVM_GET_FPU, s.kvm_fpu, "KVM_GET_FPU")

    def set_fpu(self, fpu: s.kvm_fpu) -> None:
        ioctl(self.fd, c.KVM_SET_FPU, ctypes.byref(fpu), name="KVM_SET_FPU")

    def get_msrs(self, indices: list[int]) -> list[tuple[int, int]]:
        """Reads MSRs in order; KVM stops at the first it cannot read, so fewer may come back."""
        msrs = s.msrs_with(indices)
        count = ioctl(self.fd, c.KVM_GET_MSRS, ctypes.byref(msrs), name="KVM_GET_MSRS")
        return [(msrs.entries[i].index, msrs.entries[i].data) for i in range(count)]

    def set_msrs(self, entries: list[tuple[int, int]]) -> int:
        """Writes MSRs in order; returns how many KVM accepted (it stops at the first refusal)."""
        msrs = s.msrs_with([i for i, _ in entries], [v for _, v in entries])
        return ioctl(self.fd, c.KVM_SET_MSRS, ctypes.byref(msrs), name="KVM_SET_MSRS")

    def get_cpuid2(self, capacity: int = c.KVM_MAX_CPUID_ENTRIES) -> list[s.kvm_cpuid_entry2]:
        cpuid = s.cpuid2_with(capacity)
        ioctl(self.fd, c.KVM_GET_CPUID2, ctypes.byref(cpuid), name="KVM_GET_CPUID2")
        return [s.copy_struct(e) for e in cpuid.entries[: cpuid.nent]]

    def set_cpuid2(self, entries: list[s.kvm_cpuid_entry2]) -> None:
        cpuid = s.cpuid2_with(len(entries))
        for i, entry in enumerate(entries):
            cpuid.entries[i] = entry
        ioctl(self.fd, c.KVM_SET_CPUID2, ctypes.byref(cpuid), name="KVM_SET_CPUID2")

    def get_lapic(self) -> s.kvm_lapic_state:
        """Needs an in-kernel irqchip; without one KVM answers ENXIO."""
        return self._get(c.KVM_GET_LAPIC, s.kvm_lapic_state, "KVM_GET_LAPIC")

    def get_xsave(self) -> bytes:
        """The legacy 4 KiB XSAVE area."""
        return bytes(self._get(c.KVM_GET_XSAVE, s.kvm_xsave, "KVM_GET_XSAVE"))

    def get_xsave2(self, size: int) -> bytes:
        """The XSAVE area at the size ``KVM_CAP_XSAVE2`` reported for this VM (>= 4096)."""
        buffer = ctypes.create_string_buffer(max(size, ctypes.sizeof(s.kvm_xsave)))
        ioctl(self.fd, c.KVM_GET_XSAVE2, ctypes.byref(buffer), name="KVM_GET_XSAVE2")
        return buffer.raw

    def get_xcrs(self) -> s.kvm_xcrs:
        return self._get(c.KVM_GET_XCRS, s.kvm_xcrs, "KVM_GET_XCRS")

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        return self._get(c.KVM_GET_VCPU_EVENTS, s.kvm_vcpu_events, "KVM_GET_VCPU_EVENTS")

    def get_mp_state(self) -> int:
        return self._get(c.KVM_GET_MP_STATE, s.kvm_mp_state, "KVM_GET_MP_STATE").mp_state

    def get_debugregs(self) -> s.kvm_debugregs:
        return self._get(c.KVM_GET_DEBUGREGS, s.kvm_debugregs, "KVM_GET_DEBUGREGS")

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        debug = s.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg or []):
            debug.arch.debugreg[i] = value
        ioctl(self.fd, c.KVM_SET_GUEST_DEBUG, ctypes.byref(debug), name="KVM_SET_GUEST_DEBUG")

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT (api.rst 4.16): queues hardware interrupt ``vector`` for injection
        at the next KVM_RUN. Without an in-kernel irqchip KVM keeps one such vector and a
        second call before the guest took the first replaces it, so callers inject only
        when ``kvm_run.ready_for_interrupt_injection`` says so; with the in-kernel PIC it
        fails with ENXIO. Not an asynchronous ioctl on x86: this vCPU's own thread calls it."""
        irq = s.kvm_interrupt(irq=vector)
        ioctl(self.fd, c.KVM_INTERRUPT, ctypes.byref(irq), name="KVM_INTERRUPT")

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ (``KVM_CAP_GET_TSC_KHZ``): the frequency of this vCPU's time stamp
        counter as the guest's RDTSC sees it, in kHz."""
        return ioctl(self.fd, c.KVM_GET_TSC_KHZ, 0, name="KVM_GET_TSC_KHZ")

    def kvmclock_ctrl(self) -> None:
        """Tells the guest's kvmclock it was paused. EINVAL when the guest never enabled kvmclock."""
        ioctl(self.fd, c.KVM_KVMCLOCK_CTRL, 0, name="KVM_KVMCLOCK_CTRL")

    def get_stats_fd(self) -> KvmStats:
        """This vCPU's binary statistics, owned by the ``KvmStats`` from the moment the ioctl
        returns its read-only fd."""
        return KvmStats(ioctl(self.fd, c.KVM_GET_STATS_FD, 0, name="KVM_GET_STATS_FD"))

    def _get(self, request: int, struct_type, name: str):
        value = struct_type()
        ioctl(self.fd, request, ctypes.byref(value), name=name)
        return value


__all__ = ["VcpuFd", "KvmIoctlError"]
