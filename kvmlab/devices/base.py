"""``Device``: a convenient base for bus devices (the bus itself only needs ``read``/``write``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import MachineStateError

if TYPE_CHECKING:
    from ..vstate.irq_lines import IrqFd, IrqLine


class Device:
    """A bus device with a name, a window size and named registers.

    Subclasses override ``read(offset, size) -> int`` and ``write(offset, size, value)``.
    ``registers`` maps offsets to names so metrics and traces can say *which register* a
    guest hammers, not just which address. Both methods run on the vCPU thread that took the
    exit; several vCPUs can call them at once, so keep shared state consistent (one attribute
    store is atomic under the GIL; use a lock for anything longer).
    """

    name: str = "device"
    #: bytes (MMIO) or ports (PIO) the device decodes
    size: int = 1
    registers: dict[int, str] = {}
    #: how this device raises interrupts (``raise_irq``): set by ``Machine.add_device``
    irq_raiser: Callable[[int, int], None] | None = None
    #: where its interrupt lines come from (``irq_line``, ``irqfd``): set by ``Machine.add_device``
    irq_line_source: "Callable[[int], IrqLine] | None" = None
    irqfd_source: "Callable[[int, bool], IrqFd] | None" = None
    #: how it reports that a handler started (``irq_acknowledged``): set with ``irq_raiser``
    irq_acknowledger: Callable[[int], None] | None = None
    #: the vector ``raise_irq()`` raises when given none (a device whose guest programs it
    #: overrides this, as the mailbox's IRQ_VECTOR register does)
    irq_vector: int | None = None
    #: how a vector comes to be, said when ``raise_irq()`` has none to raise
    irq_vector_hint = "pass one: raise_irq(vector, vcpu)"

    #: offsets of the registers whose write only stores its value (plain storage), which
    #: ``Machine.coalesce_mmio`` may coalesce: their writes can wait in a ring and arrive later,
    #: in order. A write with an immediate effect (an interrupt, a hand-over) must not wait.
    coalescible: frozenset[int] = frozenset()
    #: why a register is not coalescible, for the refusal (offset -> reason)
    side_effects: dict[int, str] = {}
    #: the width of a register in bytes (a zone is checked register by register)
    register_width: int = 4

    def coalesce_refusal(self, offset: int, size: int) -> str | None:
        """Why writes to ``size`` bytes at ``offset`` may not be coalesced, or None if they may."""
        if offset < 0 or offset + size > self.size:
            return f"{offset:#x}+{size} leaves the device's {self.size:#x}-byte window"
        width = self.register_width
        for reg in range(offset - offset % width, offset + size, width):
            if reg in self.coalescible:
                continue
            name = self.registers.get(reg, f"offset {reg:#x}")
            reason = self.side_effects.get(reg)
            return f"{name}: {reason}" if reason else f"{name} is not declared plain storage (Device.coalescible)"
        return None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def raise_irq(self, vector: int | None = None, vcpu: int = 0) -> None:
        """Raises interrupt ``vector`` (by default the device's ``irq_vector``) at vCPU
        ``vcpu`` of the machine this device was added to, with ``Machine.raise_irq``'s rules
        and checks; from any thread, this device's own ``read``/``write`` included (the vCPU
        injects it before its next run)."""
        if self.irq_raiser is None:
            raise MachineStateError(f"{self!r} raise_irq(): the device is on no machine; map it with Machine.add_device() first")
        if vector is None:
            vector = self.irq_vector
            if vector is None:
                raise MachineStateError(f"the {self.name} has no interrupt vector yet: {self.irq_vector_hint}")
        self.irq_raiser(vector, vcpu)

    def irq_line(self, gsi: int) -> "IrqLine":
        """Line ``gsi`` of the in-kernel irqchip of the machine this device was added to (the
        same object ``Machine.irq_line(gsi)`` returns): ``raise_()`` when the device needs
        service, ``lower()`` once the guest has acknowledged it (a level-triggered device),
        or ``pulse()`` (an edge). From any thread, this device's own ``read``/``write``
        included. Needs a machine created with ``irqchip=True``."""
        if self.irq_line_source is None:
            raise MachineStateError(f"{self!r} irq_line(): the device is on no machine; map it with Machine.add_device() first")
        return self.irq_line_source(gsi)

    def irqfd(self, gsi: int, level: bool = False) -> "IrqFd":
        """An irqfd on line ``gsi`` of this device's machine (``Machine.irqfd``): its
        ``trigger()`` raises the line from any thread (a device's own worker thread) without a
        vCPU exit. ``level=True`` for a level-triggered device, which calls the irqfd's
        ``lower()`` once the guest has acknowledged it."""
        if self.irqfd_source is None:
            raise MachineStateError(f"{self!r} irqfd(): the device is on no machine; map it with Machine.add_device() first")
        return self.irqfd_source(gsi, level)

    def irq_acknowledged(self, vector: int) -> None:
        """Tells kvmlab that the guest's handler for ``vector`` has started on the vCPU whose
        exit is being handled (call it from ``read``/``write``): the delivery latency of the
        oldest raise of ``vector`` at that vCPU is recorded (``MetricsRegistry.interrupt_latencies``)."""
        if self.irq_acknowledger is None:
            raise MachineStateError(f"{self!r} irq_acknowledged(): the device is on no machine; map it with Machine.add_device() first")
        self.irq_acknowledger(vector)
