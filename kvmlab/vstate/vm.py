"""``Vm``: guest memory, the two buses and the vCPUs of one machine, over an engine backend.

The engine (``kvmlab.engines``) supplies the hardware side through a small protocol
(``VmBackend``/``VcpuBackend``); everything here is shared by every engine.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol

from ..errors import ConfigError, MachineStateError
from .bus import Bus
from .cpu_state import CpuConfiguration, VcpuSnapshot
from .exits import DeviceFailure, Peripherals
from .layout import IRQCHIP_PAGES, RESERVED, Range
from .memory import GuestMemory
from .unhandled import UnhandledWarnings
from .vcpu import Vcpu

#: Guest physical addresses are at most 52 bits on x86_64.
MAX_PHYS_ADDR = 1 << 52
PIO_SPACE = 0x10000


class VcpuBackend(Protocol):
    """An engine's vCPU: runs the guest until the next exit and reports its state."""

    index: int
    run_views: tuple[memoryview, memoryview, memoryview, memoryview]
    #: KVM's MP state as last seen by the vCPU's own thread (None without an in-kernel irqchip)
    mp_state: int | None

    def run_emulation(self, peripherals: Peripherals): ...
    def interrupt(self, thread_ident: int) -> None: ...
    def stepping(self): ...  # a context manager: run_emulation returns after one exit
    def get_regs(self): ...
    def set_regs(self, regs) -> None: ...
    def get_sregs(self): ...
    def set_sregs(self, sregs) -> None: ...
    def save_state(self) -> VcpuSnapshot: ...
    def dump_cpu_config(self) -> CpuConfiguration: ...
    def kvmclock_ctrl(self) -> None: ...
    def close(self) -> None: ...


class VmBackend(Protocol):
    """An engine's VM: memory slots and vCPU creation."""

    name: str
    max_vcpus: int
    #: whether KVM's in-kernel interrupt controllers exist (never for the emulated engine)
    irqchip: bool

    def map_memory(self, memory: GuestMemory) -> None: ...
    def create_vcpu(self, index: int, count: int) -> VcpuBackend: ...
    def close(self) -> None: ...


class Engine(Protocol):
    """Where VMs come from (``kvmlab.engines``): opened once per Machine, closed once its VM
    exists. ``check_config`` refuses what the engine cannot do before anything is built."""

    name: str

    def max_vcpus(self) -> int: ...
    def check_config(self, *, irqchip: bool = False, cpuid_mask=None) -> None: ...
    def create_vm(self, *, irqchip: bool = False, cpuid_mask=None) -> VmBackend: ...
    def close(self) -> None: ...


class Vm:
    """Memory + MMIO bus + port-I/O bus + vCPUs, and the exit eventfd they share."""

    def __init__(self, backend: VmBackend, memory_size: int, *, strict: bool = False):
        """``strict``: an access that reaches no device stops the vCPU (``UnhandledWarnings``)."""
        self.backend = backend
        self.memory = GuestMemory(memory_size)
        try:
            backend.map_memory(self.memory)
        except BaseException:
            self.memory.close()
            raise
        forbidden = tuple((rng, "RAM") for rng in self.memory.ranges) + tuple((rng, "KVM's TSS pages") for rng in RESERVED)
        if backend.irqchip:  # KVM answers these itself: a device there would never be called
            forbidden += tuple((rng, "KVM's in-kernel IOAPIC/LAPIC") for rng in IRQCHIP_PAGES)
        self.mmio_bus = Bus("mmio", MAX_PHYS_ADDR, forbidden)
        self.pio_bus = Bus("pio", PIO_SPACE)
        #: every vCPU writes here when it exits (Firecracker's ``exit_evt``)
        self.exit_evt = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.vcpus: list[Vcpu] = []
        #: what to do about accesses that reach no device, and which were logged (its vCPUs share it)
        self.unhandled = UnhandledWarnings(strict=strict)

    def create_vcpus(self, count: int, on_device_error: Callable[[DeviceFailure], None] | None = None) -> list[Vcpu]:
        """Creates all vCPUs before any runs (SMP guests expect every CPU to exist)."""
        if self.vcpus:
            raise MachineStateError("this VM already has its vCPUs")
        limit = self.backend.max_vcpus
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= limit:
            raise ConfigError(f"vcpus={count!r}: need a whole number from 1 to {limit} ({self.backend.name}'s maximum)")
        for index in range(count):
            backend = self.backend.create_vcpu(index, count)
            peripherals = Peripherals(index, backend.run_views, self.mmio_bus, self.pio_bus, on_device_error=on_device_error, unhandled=self.unhandled)
            self.vcpus.append(Vcpu(backend, peripherals, self.exit_evt))
        return self.vcpus

    def close(self) -> None:
        """Releases vCPUs, the VM and memory, in that order. Threads must be joined first."""
        for vcpu in self.vcpus:
            vcpu.backend.close()
        self.vcpus = []
        self.backend.close()
        self.memory.close()
        if self.exit_evt >= 0:
            os.close(self.exit_evt)
            self.exit_evt = -1
