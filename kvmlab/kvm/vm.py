"""``VmFd``: a KVM virtual machine file descriptor and its ioctls."""

from __future__ import annotations

import ctypes

from . import constants as c
from . import structs as s
from .fd import OwnedFd
from .syscall import ioctl
from .vcpu import VcpuFd


class VmFd(OwnedFd):
    """One thin method per VM ioctl; owns the fd (``OwnedFd``). Memory and vCPU policy live
    a layer up."""

    def __init__(self, fd: int):
        super().__init__(fd, "VmFd")

    def check_extension(self, cap: int) -> int:
        """Per-VM capability check (some answers, like ``XSAVE2``'s size, are per VM)."""
        return ioctl(self.fd, c.KVM_CHECK_EXTENSION, int(cap), name="KVM_CHECK_EXTENSION")

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0) -> None:
        region = s.kvm_userspace_memory_region(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        ioctl(self.fd, c.KVM_SET_USER_MEMORY_REGION, ctypes.byref(region), name="KVM_SET_USER_MEMORY_REGION")

    def create_vcpu(self, vcpu_id: int, mmap_size: int) -> VcpuFd:
        """A new vCPU with its ``kvm_run`` page mapped (``mmap_size`` is
        ``Kvm.get_vcpu_mmap_size()``), owned by the ``VcpuFd`` from the moment the ioctl returns.

        KVM keeps the vCPU in the VM even if its fd is closed: a failed mapping closes the
        fd, but ``vcpu_id`` stays taken (EEXIST) until the VM goes.
        """
        return VcpuFd(ioctl(self.fd, c.KVM_CREATE_VCPU, vcpu_id, name="KVM_CREATE_VCPU"), mmap_size, vcpu_id)

    def set_tss_addr(self, address: int) -> None:
        """Three pages KVM needs on Intel to run real mode; must lie outside RAM and devices."""
        ioctl(self.fd, c.KVM_SET_TSS_ADDR, address, name="KVM_SET_TSS_ADDR")

    def create_irqchip(self) -> None:
        """In-kernel PIC, IOAPIC and a LAPIC per vCPU; only before the first vCPU is created."""
        ioctl(self.fd, c.KVM_CREATE_IRQCHIP, 0, name="KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        config = s.kvm_pit_config(flags=flags)
        ioctl(self.fd, c.KVM_CREATE_PIT2, ctypes.byref(config), name="KVM_CREATE_PIT2")
