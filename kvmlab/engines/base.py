"""The engine boundary: what an engine, its VMs and its vCPUs must do, and what each can.

Everything above ``kvmlab.engines`` (the VM, the vCPU state machine, ``Machine``, the CLI, the
Lab) talks to an engine only through these three abstract classes and asks its
``Capabilities`` what it can do; nothing up there tests an engine's name. That is the shape of
CPython's ``selectors``: one small documented base, backends defined where they can work, and
one default chosen by availability (``kvmlab.engines.select``).

A new capability (interrupt injection, ioeventfd, snapshots, ...) is one field here, one
method here with a default that refuses it clearly, and one implementation per engine that
has it. Callers check ``capabilities`` first, or call and let the refusal explain itself.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

from ..errors import ConfigError, EngineCapabilityError

if TYPE_CHECKING:
    from ..kvm.stats import KvmStats
    from ..vstate.cpu_state import CpuConfiguration, VcpuSnapshot
    from ..vstate.exits import Peripherals
    from ..vstate.memory import GuestMemory


@dataclass(frozen=True)
class Capabilities:
    """What one engine can do here. Read it, don't compare engine names.

    ``max_vcpus`` is the engine's limit on vCPUs per VM (for KVM, what this kernel reports);
    ``label`` names the engine in sentences ("up to 710 (KVM's maximum)"); ``note`` says in one
    line what the engine means for what a user sees.
    """

    #: the word ``Machine(engine=...)`` takes for this engine
    name: str
    #: the engine as a sentence names it: "KVM", "the emulated engine"
    label: str
    #: one line on what this engine means for what you see (the notebooks print it)
    note: str
    max_vcpus: int
    #: KVM's in-kernel PIC, IOAPIC and LAPICs (``KVM_CREATE_IRQCHIP``): needed for SMP boot
    irqchip: bool
    #: CPUID leaves can be masked before the vCPUs run (``KVM_SET_CPUID2``)
    cpuid_mask: bool
    #: the kernel's own per-vCPU statistics (``KVM_GET_STATS_FD``), shown as ``kvm.*`` metrics
    kernel_stats: bool
    #: KVM's MP state (RUNNABLE, UNINITIALIZED, ...) is tracked per vCPU
    mp_state: bool
    #: single-step the guest one instruction per exit (``KVM_SET_GUEST_DEBUG``)
    single_step: bool
    # Declared now so every engine answers them; the issues that build them turn them on.
    #: inject an interrupt from user space into a VM without an in-kernel irqchip
    #: (``KVM_INTERRUPT`` and the interrupt window, api.rst 4.16 and 5): ``Machine.raise_irq``
    interrupt_injection: bool = False
    #: raise and lower the in-kernel irqchip's input lines (GSIs) from user space
    #: (``KVM_IRQ_LINE``, api.rst 4.25): ``Machine.irq_line``, on a VM with the irqchip
    irq_lines: bool = False
    #: an eventfd that raises a GSI from any thread without a vCPU exit (``KVM_IRQFD``, api.rst
    #: 4.75): ``Machine.irqfd``, on a VM with the irqchip
    irqfd: bool = False
    #: an irqfd for a level-triggered line, deasserted at the guest's EOI and reported on a
    #: resample eventfd (``KVM_IRQFD_FLAG_RESAMPLE``): ``Machine.irqfd(gsi, level=True)``
    irqfd_resample: bool = False
    #: an MSI to one vCPU's LAPIC (``KVM_SIGNAL_MSI``, api.rst 4.71): ``raise_irq`` on a VM
    #: with the irqchip
    msi: bool = False
    #: the i8254 PIT in the kernel beside the irqchip (``KVM_CREATE_PIT2``): ports 0x40-0x43
    #: answered without an exit, ticks on GSI 0
    pit: bool = False
    #: the frequency of the guest's time stamp counter (``KVM_GET_TSC_KHZ``): what turns the
    #: cycles a guest counts with RDTSC into time
    tsc_khz: bool = False
    #: a doorbell: a guest write to an MMIO address or a port (of one value, with datamatch)
    #: signals an eventfd instead of reaching a device (``KVM_IOEVENTFD``, api.rst 4.59), served
    #: by the machine's I/O thread: ``Machine.ioeventfd``
    ioeventfd: bool = False
    #: MMIO writes queued in a ring instead of exiting (``KVM_REGISTER_COALESCED_MMIO``)
    coalesced_mmio: bool = False
    #: port writes (OUT) queued in the same ring (``KVM_CAP_COALESCED_PIO``)
    coalesced_pio: bool = False
    #: a whole machine written down and brought back
    snapshots: bool = False
    #: breakpoints and watchpoints (``KVM_GUESTDBG_USE_SW_BP`` / ``USE_HW_BP``)
    guest_debug: bool = False

    def refuse(self, what: str, capability: str, instead: str = "") -> EngineCapabilityError:
        """The error for asking this engine for ``capability`` it does not have."""
        hint = f"; {instead}" if instead else ""
        return EngineCapabilityError(f"{what}: {self.label} has no {capability}{hint}")


class VcpuBackend(ABC):
    """An engine's vCPU: runs the guest until the next exit and reads and writes its state.

    Every method runs on the vCPU's own thread, or while that thread is not running (before
    start, paused, after stop): a vCPU is never touched from two threads at once.
    """

    index: int
    #: the ``kvm_run`` page as (u8, u16, u32, u64) memoryviews: KVM's own mapping, or the
    #: emulated engine's copy in the same layout (``kvmlab.kvm.run``)
    run_views: tuple[memoryview, memoryview, memoryview, memoryview]
    #: KVM's MP state as last seen by the vCPU's own thread (None where not tracked)
    mp_state: int | None

    @abstractmethod
    def run_emulation(self, peripherals: "Peripherals"):
        """Runs the guest until an exit and handles it (``handle_kvm_exit``); returns its
        result, or ``Emulation.INTERRUPTED`` after a kick."""

    @abstractmethod
    def interrupt(self, thread_ident: int) -> None:
        """The second half of the kick (the caller has set ``immediate_exit``): make a run in
        progress on ``thread_ident`` return soon. Must never lose a kick."""

    @abstractmethod
    def stepping(self) -> contextlib.AbstractContextManager:
        """A context in which ``run_emulation`` returns after one exit (``Machine.step``)."""

    @abstractmethod
    def get_regs(self): ...

    @abstractmethod
    def set_regs(self, regs) -> None: ...

    @abstractmethod
    def get_sregs(self): ...

    @abstractmethod
    def set_sregs(self, sregs) -> None: ...

    @abstractmethod
    def save_state(self) -> "VcpuSnapshot":
        """Everything the engine can read of this vCPU (Firecracker's SaveState)."""

    @abstractmethod
    def dump_cpu_config(self) -> "CpuConfiguration":
        """The CPUID and MSRs this vCPU was given (Firecracker's DumpCpuConfig)."""

    @abstractmethod
    def kvmclock_ctrl(self) -> None:
        """Tells the guest it was paused (KVM_KVMCLOCK_CTRL), where that means anything."""

    @abstractmethod
    def close(self) -> None: ...

    # --- optional: the defaults say "this engine has none" -------------------------------------

    def kernel_stats(self) -> "KvmStats | None":
        """The kernel's statistics for this vCPU, or None where the engine has none."""
        return None

    def set_single_step(self, enabled: bool) -> None:
        """Makes every run return after one instruction with a debug exit (or stops that)."""
        raise self.capabilities.refuse("set_single_step()", "single-stepping", "run on KVM")

    def inject_interrupt(self, vector: int) -> None:
        """Queues ``vector`` for delivery at the next run, on the vCPU's own thread, when the
        last exit said the guest can take it (``kvmlab.vstate.interrupts.offer`` decides)."""
        raise self.capabilities.refuse("inject_interrupt()", "interrupt injection", "run on KVM")

    def tsc_khz(self) -> int:
        """The frequency of this vCPU's time stamp counter, in kHz (what RDTSC counts)."""
        raise self.capabilities.refuse("tsc_khz()", "TSC frequency (KVM_GET_TSC_KHZ)", "use engine='kvm'")

    def interrupt_pending(self) -> None:
        """A vector was raised for this vCPU by its own thread, during an exit (a device's
        handler). The default does nothing: an engine whose run returns after every exit
        (KVM) offers it before the next run anyway. One that handles exits inside its run
        (the emulated engine) returns from it soon, so the vector is offered."""

    #: set by the VM backend that creates the vCPU
    capabilities: Capabilities


class VmBackend(ABC):
    """An engine's VM: memory slots and vCPU creation."""

    capabilities: Capabilities
    #: whether this VM has KVM's in-kernel interrupt controllers
    irqchip: bool
    #: how many input lines (GSIs) its irqchip has (0 without one)
    gsi_count: int = 0

    @abstractmethod
    def map_memory(self, memory: "GuestMemory") -> None: ...

    @abstractmethod
    def create_vcpu(self, index: int, count: int) -> VcpuBackend: ...

    def create_irqchip(self) -> None:
        """Creates the in-kernel interrupt controllers (before any vCPU exists)."""
        raise self.capabilities.refuse("irqchip", "in-kernel interrupt controllers", "use engine='kvm'")

    # The irqchip's inputs. Any thread may call these (they are VM-wide, not a vCPU's); the
    # caller has checked the GSI and that this VM has its irqchip (``kvmlab.vstate.irq_lines``).

    def irq_line(self, gsi: int, level: int) -> int | None:
        """Sets line ``gsi`` to ``level`` (1 asserted, 0 not); returns what became of an
        assert where the engine says (below 0 masked, 0 coalesced, above 0 delivered), else None."""
        raise self.capabilities.refuse("irq_line()", "interrupt lines (KVM_IRQ_LINE)", "use engine='kvm' and irqchip=True")

    def irqfd(self, eventfd: int, gsi: int, resample_fd: int | None = None) -> None:
        """Makes a write to ``eventfd`` raise ``gsi`` without a vCPU exit; with ``resample_fd``
        the line stays asserted until the guest's EOI, which writes ``resample_fd``."""
        raise self.capabilities.refuse("irqfd()", "irqfd (KVM_IRQFD)", "use engine='kvm' and irqchip=True")

    def irqfd_deassign(self, eventfd: int, gsi: int) -> None:
        """Undoes ``irqfd``: ``eventfd`` no longer raises ``gsi``."""
        raise self.capabilities.refuse("irqfd_deassign()", "irqfd (KVM_IRQFD)", "use engine='kvm' and irqchip=True")

    # Doorbells (KVM_IOEVENTFD). Any thread may call these, the vCPUs running or not; the
    # caller has checked the address, size and datamatch and that no registration collides
    # (``kvmlab.vstate.doorbells``).

    def ioeventfd(self, eventfd: int, address: int, size: int, pio: bool, datamatch: int | None) -> None:
        """From now on a guest write of ``size`` bytes to ``address`` (a port if ``pio``), of the
        value ``datamatch`` unless it is None, adds 1 to ``eventfd`` and reaches no device; any
        other write exits as before. The write completes in the guest at once."""
        raise self.capabilities.refuse("ioeventfd()", "ioeventfd (KVM_IOEVENTFD)", "use engine='kvm'")

    def ioeventfd_deassign(self, eventfd: int, address: int, size: int, pio: bool, datamatch: int | None) -> None:
        """Undoes ``ioeventfd`` (the same arguments): those writes exit again."""
        raise self.capabilities.refuse("ioeventfd_deassign()", "ioeventfd (KVM_IOEVENTFD)", "use engine='kvm'")

    def signal_msi(self, address: int, data: int) -> int:
        """Delivers the MSI a device would write (``data`` to ``address``) through the
        in-kernel LAPICs; returns above 0 when delivered, 0 when the guest blocked it."""
        raise self.capabilities.refuse("signal_msi()", "MSI delivery (KVM_SIGNAL_MSI)", "use engine='kvm' and irqchip=True")

    # Coalesced MMIO (``kvmlab.vstate.coalesced`` checks the zone and drains the ring).

    def coalesced_ring(self) -> memoryview:
        """The page of the VM's coalesced MMIO ring (``kvm_coalesced_mmio_ring``'s layout), once
        the vCPUs exist."""
        raise self.capabilities.refuse("coalesced_ring()", "coalesced MMIO (KVM_REGISTER_COALESCED_MMIO)", "use engine='kvm'")

    def register_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        """Guest writes to ``size`` bytes at ``address`` (ports with ``pio``) go to the ring
        instead of exiting."""
        raise self.capabilities.refuse("register_coalesced_mmio()", "coalesced MMIO (KVM_REGISTER_COALESCED_MMIO)", "use engine='kvm'")

    def unregister_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        """Undoes ``register_coalesced_mmio`` with the same arguments."""
        raise self.capabilities.refuse("unregister_coalesced_mmio()", "coalesced MMIO (KVM_REGISTER_COALESCED_MMIO)", "use engine='kvm'")

    @abstractmethod
    def close(self) -> None: ...


class Engine(ABC):
    """Where VMs come from: opened once per Machine, closed once its VM exists.

    Subclasses set ``name`` and implement ``available``; ``kvmlab.engines.select`` lists them
    in order of preference and ``engine="auto"`` takes the first one that is available.
    """

    #: the word ``Machine(engine=...)`` takes
    name: ClassVar[str]
    #: the engine as a sentence names it
    label: ClassVar[str]
    #: what it offers to a user whose choice of engine cannot run here
    offer: ClassVar[str]

    @classmethod
    @abstractmethod
    def unavailable_reason(cls, kvm_path: str | None = None) -> str | None:
        """Why this engine cannot run here (said to the user), or None when it can."""

    @classmethod
    @abstractmethod
    def note(cls) -> str:
        """One line on what this engine means for what a user sees (``Capabilities.note``)."""

    @classmethod
    @abstractmethod
    def status(cls, kvm_path: str | None = None) -> str:
        """What this engine is here, when it works (``kvmlab info``): "Unicorn 2.1.1", ..."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def check_config(self, *, irqchip: bool = False, cpuid_mask=None) -> None:
        """Refuses, before anything is built, what this engine cannot do."""
        caps = self.capabilities
        if irqchip and not caps.irqchip:
            raise ConfigError(f"irqchip=True: {caps.label} has no in-kernel interrupt controllers; use engine='kvm'")
        if cpuid_mask and not caps.cpuid_mask:
            raise ConfigError(f"cpuid_mask: {caps.label}'s CPUID cannot be masked; use engine='kvm'")

    @abstractmethod
    def create_vm(self, *, irqchip: bool = False, cpuid_mask=None) -> VmBackend: ...

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> dict:
        """Facts about this engine here, for ``kvmlab info`` and bug reports."""
        return {"max_vcpus": self.capabilities.max_vcpus}

    def describe_lines(self) -> Iterator[str]:
        """``describe()`` as lines a person reads (``kvmlab info`` prints them indented)."""
        for key, value in self.describe().items():
            yield f"{key.replace('_', ' ')}: {value}"
