"""The KVM engine: real ``/dev/kvm`` VMs and vCPUs behind the engine protocol.

``run_emulation`` is the hot path of the whole project: one ctypes ``KVM_RUN`` (the GIL is
released for its whole duration), an errno test, and the shared ``handle_kvm_exit``.
"""

from __future__ import annotations

import contextlib
import errno
from time import perf_counter_ns

from ..errors import ConfigError
from ..guest.idt import read_gate
from ..kvm import Cap, Kvm, KvmStats, VcpuFd, kvm_unavailable_reason
from ..kvm.system import kvm_flavour
from ..metrics import trace as trace_kinds
from ..kvm import constants as kc
from ..kvm.run import IMMEDIATE_EXIT_U8
from ..kvm.syscall import get_errno, kvm_run_ioctl
from ..vstate.cpu_state import CpuConfiguration, CpuidEntry, VcpuSnapshot
from ..vstate.exits import Emulation, Peripherals, handle_kvm_exit
from ..vstate.kick import signal_thread
from ..vstate.layout import TSS_ADDRESS
from ..vstate.memory import GuestMemory
from .base import Capabilities, Engine, VcpuBackend, VmBackend
from .cpuid import check_mask_against, cpuid_for_vcpu

KVM_RUN = kc.KVM_RUN
EINTR = errno.EINTR
EAGAIN = errno.EAGAIN
INTERRUPTED = Emulation.INTERRUPTED


class KvmEngine(Engine):
    """Opens ``/dev/kvm`` (raising ``KvmUnavailableError`` with the reason) and makes VMs."""

    name = "kvm"
    label = "KVM"
    #: offered to a user whose choice cannot run here
    offer = "runs on the real KVM, the fastest and most faithful engine"

    def __init__(self, kvm_path: str | None = None):
        self.kvm = kvm = Kvm(kvm_path)
        try:
            self._capabilities = Capabilities(
                name=self.name,
                label=self.label,
                note=self.note(),
                max_vcpus=kvm.max_vcpus(),
                irqchip=bool(kvm.check_extension(Cap.IRQCHIP)),
                cpuid_mask=True,
                kernel_stats=bool(kvm.check_extension(Cap.BINARY_STATS_FD)),
                mp_state=bool(kvm.check_extension(Cap.MP_STATE)),  # tracked when the VM has an irqchip
                single_step=bool(kvm.check_extension(Cap.SET_GUEST_DEBUG)),
                interrupt_injection=True,  # KVM_INTERRUPT is basic (api.rst 4.16), on every x86 KVM
                irq_lines=bool(kvm.check_extension(Cap.IRQCHIP)),  # KVM_IRQ_LINE comes with the irqchip
                irqfd=bool(kvm.check_extension(Cap.IRQFD)),
                irqfd_resample=bool(kvm.check_extension(Cap.IRQFD_RESAMPLE)),
                msi=bool(kvm.check_extension(Cap.SIGNAL_MSI)),
                pit=bool(kvm.check_extension(Cap.PIT2)),
                tsc_khz=bool(kvm.check_extension(Cap.GET_TSC_KHZ)),
                ioeventfd=bool(kvm.check_extension(Cap.IOEVENTFD)),
                coalesced_mmio=bool(kvm.check_extension(Cap.COALESCED_MMIO)),
                coalesced_pio=bool(kvm.check_extension(Cap.COALESCED_MMIO) and kvm.check_extension(Cap.COALESCED_PIO)),
            )
        except BaseException:
            kvm.close()
            raise

    @classmethod
    def unavailable_reason(cls, kvm_path: str | None = None) -> str | None:
        return kvm_unavailable_reason(kvm_path)

    @classmethod
    def status(cls, kvm_path: str | None = None) -> str:
        return kvm_flavour()

    @classmethod
    def note(cls) -> str:
        return f"real KVM ({kvm_flavour()}): every exit is a KVM_RUN returning to kvmlab; KVM's own statistics (kvm.*) are shown"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def check_config(self, *, irqchip: bool = False, cpuid_mask=None) -> None:
        """Also refuses a CPUID mask for leaves KVM does not offer, before anything is built."""
        super().check_config(irqchip=irqchip, cpuid_mask=cpuid_mask)
        check_mask_against(cpuid_mask, self.kvm.get_supported_cpuid())

    def create_vm(self, *, irqchip: bool = False, cpuid_mask=None) -> "KvmVmBackend":
        return KvmVmBackend(self.kvm, self._capabilities, irqchip=irqchip, cpuid_mask=cpuid_mask)

    def close(self) -> None:
        self.kvm.close()

    def describe(self) -> dict:
        """Facts for ``kvmlab info``."""
        kvm = self.kvm
        return {
            "api_version": kvm.get_api_version(),
            "max_vcpus": kvm.max_vcpus(),
            "recommended_vcpus": kvm.recommended_vcpus(),
            "vcpu_mmap_size": kvm.get_vcpu_mmap_size(),
            "capabilities": {cap.name: kvm.check_extension(cap) for cap in Cap},
        }

    def describe_lines(self):
        facts = self.describe()
        yield (f"KVM API version {facts['api_version']}, up to {facts['max_vcpus']} vCPUs per VM "
               f"({facts['recommended_vcpus']} recommended), kvm_run mmap {facts['vcpu_mmap_size']} bytes")  # fmt: skip
        present = [name for name, value in facts["capabilities"].items() if value]
        absent = [name for name, value in facts["capabilities"].items() if not value]
        yield f"capabilities: {', '.join(present)}"
        if absent:
            yield f"absent: {', '.join(absent)}"


class KvmVmBackend(VmBackend):
    """One KVM VM: memory slots, vCPU creation, optional in-kernel irqchip."""

    #: the guest's RAM, once mapped
    memory: GuestMemory | None = None

    def __init__(self, kvm: Kvm, capabilities: Capabilities, *, irqchip: bool, cpuid_mask=None):
        self.capabilities = capabilities
        self.vm = kvm.create_vm()
        with self.vm.closed_on_error():
            # Intel needs three pages for real mode; harmless elsewhere (kvmtool does the same).
            self.vm.set_tss_addr(TSS_ADDRESS)
            self.irqchip = False
            self.pit = False
            self.gsi_count = 0
            self._has_pit2 = bool(kvm.check_extension(Cap.PIT2))
            # KVM_IRQ_LINE_STATUS says what became of each assert (delivered, coalesced, masked)
            self._line_status = bool(kvm.check_extension(Cap.IRQ_INJECT_STATUS))
            if irqchip:
                self.create_irqchip()
            self._mmap_size = kvm.get_vcpu_mmap_size()
            #: the coalesced MMIO ring's page in every vCPU's mmap (KVM_CAP_COALESCED_MMIO's answer; 0: none)
            self._ring_page = kvm.check_extension(Cap.COALESCED_MMIO)
            self._vcpus: list[KvmVcpuBackend] = []
            self._supported_cpuid = kvm.get_supported_cpuid()
            check_mask_against(cpuid_mask, self._supported_cpuid)
            self._cpuid_mask = cpuid_mask
            self._msr_indices = kvm.get_msr_index_list()
            self._xsave_size = self.vm.check_extension(Cap.XSAVE2) or (4096 if kvm.check_extension(Cap.XSAVE) else 0)

    def create_irqchip(self) -> None:
        """KVM's PIC, IOAPIC and a LAPIC per vCPU (KVM_CREATE_IRQCHIP, only before the first
        vCPU), with KVM's default routing: GSIs 0-15 to both the PIC and the IOAPIC, 16-23 to
        the IOAPIC (api.rst 4.24); and its PIT where KVM offers one (KVM_CREATE_PIT2).

        Why the PIT comes with the irqchip, as QEMU creates its in-kernel PIT (``kvm-pit``,
        hw/i386/kvm/i8254.c) whenever the irqchip is in the kernel: the PIT's channel 0 is a
        PC's timer interrupt, on GSI 0 of these very controllers. In the kernel it ticks from
        a kernel timer straight into the PIC/IOAPIC; a PIT in user space would need a thread
        of its own and a KVM_IRQ_LINE per tick, and its ports 0x40-0x43 would exit on every
        access. KVM only creates a PIT once the irqchip exists (api.rst 4.71)."""
        if not self.capabilities.irqchip:
            raise ConfigError("irqchip: this KVM has no in-kernel interrupt controllers (KVM_CAP_IRQCHIP); use irqchip=False and one vCPU")
        self.vm.create_irqchip()
        self.irqchip = True
        self.gsi_count = kc.KVM_IOAPIC_NUM_PINS
        if self._has_pit2:
            self.vm.create_pit2()
            self.pit = True

    def irq_line(self, gsi: int, level: int) -> int | None:
        """KVM_IRQ_LINE_STATUS where KVM has it (the assert's fate), else KVM_IRQ_LINE."""
        if self._line_status:
            return self.vm.irq_line_status(gsi, level)
        self.vm.irq_line(gsi, level)
        return None

    def irqfd(self, eventfd: int, gsi: int, resample_fd: int | None = None) -> None:
        self.vm.irqfd(eventfd, gsi, resample_fd)

    def irqfd_deassign(self, eventfd: int, gsi: int) -> None:
        self.vm.irqfd_deassign(eventfd, gsi)

    def signal_msi(self, address: int, data: int) -> int:
        return self.vm.signal_msi(address, data)

    def ioeventfd(self, eventfd: int, address: int, size: int, pio: bool, datamatch: int | None) -> None:
        """KVM_IOEVENTFD: KVM matches the write inside KVM_RUN (its io bus, under SRCU, so a
        registration may come while vCPUs run) and the vCPU never exits for it."""
        self.vm.ioeventfd(eventfd, address, size, pio=pio, datamatch=datamatch)

    def ioeventfd_deassign(self, eventfd: int, address: int, size: int, pio: bool, datamatch: int | None) -> None:
        """KVM_IOEVENTFD with DEASSIGN; once it returns KVM signals the eventfd no more."""
        self.vm.ioeventfd(eventfd, address, size, pio=pio, datamatch=datamatch, deassign=True)

    def coalesced_ring(self) -> memoryview:
        """The ring page of vCPU 0's mmap (the ring is the VM's: every vCPU maps the same page)."""
        page = self._ring_page
        if not page or not self._vcpus or (page + 1) * 4096 > self._mmap_size:
            return super().coalesced_ring()
        return self._vcpus[0].run_views[0][page * 4096 : (page + 1) * 4096]

    def register_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        self.vm.register_coalesced_mmio(address, size, pio)

    def unregister_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        self.vm.unregister_coalesced_mmio(address, size, pio)

    def map_memory(self, memory: GuestMemory) -> None:
        """One KVM memory slot per RAM range (the memory is kept: an interrupt's gate is
        read from it before it goes in)."""
        self.memory = memory
        for region in memory.regions:
            self.vm.set_user_memory_region(region.slot, region.guest_phys_addr, region.size, region.host_address)

    def create_vcpu(self, index: int, count: int) -> "KvmVcpuBackend":
        fd = self.vm.create_vcpu(index, self._mmap_size)
        with fd.closed_on_error():  # a refused CPUID (or MP state read) must not leak the vCPU fd
            fd.set_cpuid2(cpuid_for_vcpu(self._supported_cpuid, index, count, self._cpuid_mask))
            vcpu = KvmVcpuBackend(fd, self)
        self._vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        self.vm.close()


class KvmVcpuBackend(VcpuBackend):
    """A KVM vCPU behind the engine boundary."""

    def __init__(self, fd: VcpuFd, vm: KvmVmBackend):
        self.capabilities = vm.capabilities
        self.fd = fd
        self.index = fd.index
        self.vm = vm
        self.run_views = (fd.run_u8, fd.run_u16, fd.run_u32, fd.run_u64)
        self._raw_fd = fd.fd
        self._stats: KvmStats | None = None
        # Read once, here, on the thread that created the vCPU (vCPU ioctls belong to it): it
        # does not change while the vCPU lives.
        self._tsc_khz = fd.get_tsc_khz() if vm.capabilities.tsc_khz else None
        #: the MP state as last read on this vCPU's own thread (KVM_GET_MP_STATE would block
        #: on a vCPU sitting in KVM_RUN, so nobody else asks): refreshed when KVM_RUN returns
        #: EAGAIN (an AP that received INIT, and maybe its SIPI) or EINTR (a kick), and at the
        #: first exit after any state other than RUNNABLE
        self.mp_state: int | None = fd.get_mp_state() if vm.irqchip else None

    # --- the hot path -------------------------------------------------------------------------

    def run_emulation(self, p: Peripherals):
        """One KVM_RUN and the handling of its exit."""
        if kvm_run_ioctl(self._raw_fd, KVM_RUN, 0) < 0:
            err = get_errno()
            if err == EINTR:
                self.run_views[0][IMMEDIATE_EXIT_U8] = 0
                p.metrics.interrupted += 1
                if p.trace is not None:
                    p.trace(trace_kinds.INTERRUPTED, 0, 0, 0, perf_counter_ns(), 0)
                if self.vm.irqchip:
                    self.mp_state = self.fd.get_mp_state()
                return INTERRUPTED
            if err == EAGAIN and self.vm.irqchip:
                self.mp_state = self.fd.get_mp_state()  # an AP out of UNINITIALIZED: INIT_RECEIVED or RUNNABLE
            return handle_kvm_exit(p, err)
        if self.mp_state:  # not None (no irqchip) nor RUNNABLE (0): KVM may have moved it on
            self.mp_state = self.fd.get_mp_state()  # inside KVM_RUN (INIT_RECEIVED -> RUNNABLE at the SIPI)
        return handle_kvm_exit(p, 0)

    # --- registers, for guest setup and inspection -----------------------------------------------

    def get_regs(self):
        return self.fd.get_regs()

    def set_regs(self, regs) -> None:
        self.fd.set_regs(regs)

    def get_sregs(self):
        return self.fd.get_sregs()

    def set_sregs(self, sregs) -> None:
        self.fd.set_sregs(sregs)

    def kvmclock_ctrl(self) -> None:
        self.fd.kvmclock_ctrl()

    def set_single_step(self, enabled: bool) -> None:
        """KVM_SET_GUEST_DEBUG with SINGLESTEP: every KVM_RUN then returns after one guest
        instruction with KVM_EXIT_DEBUG (exception 1, #DB; Documentation/virt/kvm/api.rst)."""
        self.fd.set_guest_debug(kc.KVM_GUESTDBG_ENABLE | kc.KVM_GUESTDBG_SINGLESTEP if enabled else 0)

    def inject_interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT. Only without the in-kernel irqchip: with KVM's PIC the ioctl fails
        (ENXIO, api.rst 4.16) and interrupts go in through its lines (``irq_line``, ``irqfd``)
        or as an MSI to the LAPIC (``signal_msi``, what ``raise_irq`` does there).

        First, the guest's table must be able to deliver the vector (``idt.read_gate``, on
        KVM_GET_SREGS and guest memory: one ioctl per interrupt, nowhere near the exit
        path): where it cannot, the CPU would take #GP and most likely triple-fault, and
        the vCPU ends instead with an ``UndeliverableVector`` that names the vector, the
        IDTR and what to set up, the same message as on the emulated engine."""
        if self.vm.irqchip:
            raise ConfigError(
                "inject_interrupt(): this VM has KVM's in-kernel irqchip, whose PIC/IOAPIC/LAPIC take interrupts "
                "on their lines (irq_line(), irqfd()) or as MSIs (raise_irq()), not through KVM_INTERRUPT"
            )
        sregs = self.fd.get_sregs()
        tables = {  # what read_gate reads: a whole to_dict() costs ~80 us more (measured)
            "cr0": sregs.cr0, "cr3": sregs.cr3, "cr4": sregs.cr4, "efer": sregs.efer,
            "idt": {"base": sregs.idt.base, "limit": sregs.idt.limit}, "gdt": {"base": sregs.gdt.base, "limit": sregs.gdt.limit},
        }  # fmt: skip
        read_gate(self.vm.memory, tables, vector)
        self.fd.interrupt(vector)

    def tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ, as read when the vCPU was created."""
        if self._tsc_khz is None:
            return super().tsc_khz()
        return self._tsc_khz

    def interrupt(self, thread_ident: int) -> None:
        """The second half of the kick: SIGRTMIN makes a KVM_RUN in progress return EINTR."""
        signal_thread(thread_ident)

    @contextlib.contextmanager
    def stepping(self):
        """KVM_RUN already returns at every exit: nothing to change for single exits."""
        yield

    # --- SaveState / DumpCpuConfig ---------------------------------------------------------------

    def read_msrs(self, indices: list[int]) -> tuple[dict[int, int], list[int]]:
        """Reads every MSR it can; KVM stops at the first refusal, so step over refusals."""
        values: dict[int, int] = {}
        unreadable: list[int] = []
        remaining = list(indices)
        while remaining:
            got = self.fd.get_msrs(remaining)
            values.update(got)
            if len(got) == len(remaining):
                break
            unreadable.append(remaining[len(got)])
            remaining = remaining[len(got) + 1 :]
        return values, unreadable

    def save_state(self) -> VcpuSnapshot:
        fd = self.fd
        msrs, _ = self.read_msrs(self.vm._msr_indices)
        xsave = None
        if self.vm._xsave_size > 4096:
            xsave = fd.get_xsave2(self.vm._xsave_size)
        elif self.vm._xsave_size:
            xsave = fd.get_xsave()
        xcrs = fd.get_xcrs()
        return VcpuSnapshot(
            vcpu=self.index,
            regs=fd.get_regs().to_dict(),
            sregs=fd.get_sregs().to_dict(),
            fpu=fd.get_fpu().to_dict(),
            msrs=msrs,
            lapic=bytes(fd.get_lapic().regs) if self.vm.irqchip else None,
            xsave=xsave,
            xcrs={xcrs.xcrs[i].xcr: xcrs.xcrs[i].value for i in range(xcrs.nr_xcrs)},
            vcpu_events=fd.get_vcpu_events().to_dict(),
            mp_state=fd.get_mp_state(),
            debug_regs=fd.get_debugregs().to_dict(),
        )

    def dump_cpu_config(self) -> CpuConfiguration:
        cpuid = [
            CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in self.fd.get_cpuid2()
        ]
        msrs, unreadable = self.read_msrs(self.vm._msr_indices)
        return CpuConfiguration(vcpu=self.index, cpuid=cpuid, msrs=msrs, unreadable_msrs=unreadable)

    # --- kernel statistics ------------------------------------------------------------------------

    def kernel_stats(self) -> KvmStats | None:
        """This vCPU's KVM binary stats (opened on first use), or None without the capability."""
        if self._stats is None and self.capabilities.kernel_stats:
            self._stats = self.fd.get_stats_fd()
        return self._stats

    def close(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        self._raw_fd = -1  # a KVM_RUN after close fails with EBADF, never on a reused number
        self.fd.close()
