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

    def register_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO (api.rst 4.66): from now on guest writes to ``size``
        bytes at ``address`` (ports with ``pio``, ``KVM_CAP_COALESCED_PIO``) are appended to
        the VM's ring instead of exiting; a read there still exits."""
        zone = s.kvm_coalesced_mmio_zone(addr=address, size=size, pio=int(pio))
        ioctl(self.fd, c.KVM_REGISTER_COALESCED_MMIO, ctypes.byref(zone), name="KVM_REGISTER_COALESCED_MMIO")

    def unregister_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        """KVM_UNREGISTER_COALESCED_MMIO (api.rst 4.67): undoes the zone registered with these
        same arguments. Entries already in the ring stay there for the VMM to drain."""
        zone = s.kvm_coalesced_mmio_zone(addr=address, size=size, pio=int(pio))
        ioctl(self.fd, c.KVM_UNREGISTER_COALESCED_MMIO, ctypes.byref(zone), name="KVM_UNREGISTER_COALESCED_MMIO")

    def set_tss_addr(self, address: int) -> None:
        """Three pages KVM needs on Intel to run real mode; must lie outside RAM and devices."""
        ioctl(self.fd, c.KVM_SET_TSS_ADDR, address, name="KVM_SET_TSS_ADDR")

    def create_irqchip(self) -> None:
        """In-kernel PIC, IOAPIC and a LAPIC per vCPU; only before the first vCPU is created."""
        ioctl(self.fd, c.KVM_CREATE_IRQCHIP, 0, name="KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        """The in-kernel i8254 PIT (api.rst 4.71): ports 0x40-0x43 answered in the kernel, its
        channel 0 ticking on GSI 0. Only after ``create_irqchip``."""
        config = s.kvm_pit_config(flags=flags)
        ioctl(self.fd, c.KVM_CREATE_PIT2, ctypes.byref(config), name="KVM_CREATE_PIT2")

    def irq_line(self, gsi: int, level: int) -> None:
        """KVM_IRQ_LINE (api.rst 4.25): sets input ``gsi`` of the in-kernel irqchip to
        ``level`` (1 asserted, 0 not). An edge is 1 then 0. A VM ioctl: any thread may call it."""
        irq = s.kvm_irq_level(irq=gsi, level=level)
        ioctl(self.fd, c.KVM_IRQ_LINE, ctypes.byref(irq), name="KVM_IRQ_LINE")

    def irq_line_status(self, gsi: int, level: int) -> int:
        """KVM_IRQ_LINE_STATUS (``KVM_CAP_IRQ_INJECT_STATUS``): KVM_IRQ_LINE that also says what
        became of it: below 0 every controller ignored it (masked), 0 it coalesced with one
        still pending, above 0 it was delivered to that many CPUs (or controllers)."""
        irq = s.kvm_irq_level(irq=gsi, level=level)
        ioctl(self.fd, c.KVM_IRQ_LINE_STATUS, ctypes.byref(irq), name="KVM_IRQ_LINE_STATUS")
        return irq.status

    def irqfd(self, eventfd: int, gsi: int, resample_fd: int | None = None) -> None:
        """KVM_IRQFD (api.rst 4.75): from now on a write to ``eventfd`` injects ``gsi``, inside
        the writer's system call and without a vCPU exit. With ``resample_fd``
        (KVM_IRQFD_FLAG_RESAMPLE, ``KVM_CAP_IRQFD_RESAMPLE``) the write asserts the line and
        leaves it asserted; the guest's EOI deasserts it and writes ``resample_fd``."""
        flags = c.KVM_IRQFD_FLAG_RESAMPLE if resample_fd is not None else 0
        irqfd = s.kvm_irqfd(fd=eventfd, gsi=gsi, flags=flags, resamplefd=resample_fd if resample_fd is not None else 0)
        ioctl(self.fd, c.KVM_IRQFD, ctypes.byref(irqfd), name="KVM_IRQFD")

    def irqfd_deassign(self, eventfd: int, gsi: int) -> None:
        """KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN: ``eventfd`` no longer injects ``gsi``."""
        irqfd = s.kvm_irqfd(fd=eventfd, gsi=gsi, flags=c.KVM_IRQFD_FLAG_DEASSIGN)
        ioctl(self.fd, c.KVM_IRQFD, ctypes.byref(irqfd), name="KVM_IRQFD")

    def ioeventfd(self, eventfd: int, address: int, length: int, *, pio: bool = False, datamatch: int | None = None, deassign: bool = False) -> None:
        """KVM_IOEVENTFD (api.rst 4.59): from now on a guest write of ``length`` bytes to
        ``address`` (a port with ``pio``; ``length`` 0 is any length, MMIO only) adds 1 to
        ``eventfd`` inside KVM_RUN and the guest goes on without an exit; with ``datamatch``
        only a write of that value does, any other is an ordinary exit. ``deassign`` undoes the
        registration with the same arguments. A VM ioctl: any thread may call it."""
        flags = (c.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (c.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= c.KVM_IOEVENTFD_FLAG_DATAMATCH
        arg = s.kvm_ioeventfd(datamatch=datamatch or 0, addr=address, len=length, fd=eventfd, flags=flags)
        ioctl(self.fd, c.KVM_IOEVENTFD, ctypes.byref(arg), name="KVM_IOEVENTFD")

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI (api.rst 4.71, ``KVM_CAP_SIGNAL_MSI``): the message a device would
        write to ``address``, delivered by the in-kernel LAPICs. Returns KVM's answer: above 0
        delivered, 0 the guest blocked it (on x86: the LAPIC is software-disabled)."""
        msi = s.kvm_msi(address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data)
        return ioctl(self.fd, c.KVM_SIGNAL_MSI, ctypes.byref(msi), name="KVM_SIGNAL_MSI")
