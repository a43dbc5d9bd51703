"""``Vm``: guest memory, the two buses and the vCPUs of one machine, over an engine backend.

The engine (``kvmlab.engines``) supplies the hardware side through its abstract
``VmBackend``/``VcpuBackend`` (``kvmlab.engines.base``); everything here is shared by every engine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import MachineStateError
from .bus import Bus
from .exits import DeviceFailure, Peripherals
from .layout import IRQCHIP_PAGES, RESERVED, Range
from .memory import GuestMemory
from .unhandled import UnhandledWarnings
from .vcpu import Vcpu

if TYPE_CHECKING:
    from ..engines.base import VmBackend
    from ..metrics.counters import VcpuMetrics

#: Guest physical addresses are at most 52 bits on x86_64.
MAX_PHYS_ADDR = 1 << 52
PIO_SPACE = 0x10000
#: what owns IRQCHIP_PAGES when the VM has the in-kernel irqchip (KVM answers them itself: a
#: device mapped there would never be called)
IRQCHIP_OWNER = "KVM's in-kernel IOAPIC/LAPIC"


class Vm:
    """Memory + MMIO bus + port-I/O bus + vCPUs, and the exit eventfd they share."""

    def __init__(self, backend: "VmBackend", memory_size: int, *, strict: bool = False):
        """``strict``: an access that reaches no device stops the vCPU (``UnhandledWarnings``)."""
        self.backend = backend
        self.memory = GuestMemory(memory_size)
        try:
            backend.map_memory(self.memory)
        except BaseException:
            self.memory.close()
            raise
        forbidden = tuple((rng, "RAM") for rng in self.memory.ranges) + tuple((rng, "KVM's TSS pages") for rng in RESERVED)
        if backend.irqchip:
            forbidden += tuple((rng, IRQCHIP_OWNER) for rng in IRQCHIP_PAGES)
        self.mmio_bus = Bus("mmio", MAX_PHYS_ADDR, forbidden)
        self.pio_bus = Bus("pio", PIO_SPACE)
        #: every vCPU writes here when it exits (Firecracker's ``exit_evt``)
        self.exit_evt = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.vcpus: list[Vcpu] = []
        #: what to do about accesses that reach no device, and which were logged (its vCPUs share it)
        self.unhandled = UnhandledWarnings(strict=strict)

    def enable_irqchip(self) -> None:
        """Asks the engine for its in-kernel interrupt controllers (before any vCPU exists, as
        KVM_CREATE_IRQCHIP requires) and keeps devices off the pages they answer."""
        if self.vcpus:
            raise MachineStateError("the in-kernel irqchip can only be created before the vCPUs (KVM_CREATE_IRQCHIP)")
        for rng in IRQCHIP_PAGES:  # every page checked before anything changes: a refusal leaves no irqchip
            self.mmio_bus.check_free(rng, IRQCHIP_OWNER)
        self.backend.create_irqchip()
        for rng in IRQCHIP_PAGES:
            self.mmio_bus.forbid(rng, IRQCHIP_OWNER)

    def create_vcpus(
        self,
        count: int,
        on_device_error: Callable[[DeviceFailure], None] | None = None,
        metrics: "Sequence[VcpuMetrics] | None" = None,
    ) -> list[Vcpu]:
        """Creates all vCPUs before any runs (SMP guests expect every CPU to exist). ``count``
        was checked against the engine's limit once, where the user gave it (``MachineConfig``);
        ``metrics``: the counters each vCPU writes (a registry's), else new ones."""
        if self.vcpus:
            raise MachineStateError("this VM already has its vCPUs")
        for index in range(count):
            backend = self.backend.create_vcpu(index, count)
            try:
                vcpu = self._wrap_vcpu(backend, index, on_device_error, metrics)
            except BaseException:
                backend.close()  # not in self.vcpus yet: close() would never see it
                raise
            self.vcpus.append(vcpu)
        return self.vcpus

    def _wrap_vcpu(self, backend, index: int, on_device_error, metrics) -> Vcpu:
        """The shared vCPU (state machine, exit handling) around an engine's vCPU."""
        peripherals = Peripherals(
            index, backend.run_views, self.mmio_bus, self.pio_bus, metrics=metrics[index] if metrics else None,
            on_device_error=on_device_error, unhandled=self.unhandled,
        )  # fmt: skip
        return Vcpu(backend, peripherals, self.exit_evt)

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
