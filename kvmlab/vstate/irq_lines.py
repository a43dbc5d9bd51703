"""Interrupt lines with KVM's in-kernel irqchip (issue 13, part 2): a device's line into the
IOAPIC and PIC, raised with an ioctl (``IrqLine``) or through an eventfd from any thread
without a vCPU exit (``IrqFd``), and MSIs straight to a vCPU's LAPIC.

What the kernel holds (Documentation/virt/kvm/api.rst 4.24): ``KVM_CREATE_IRQCHIP`` makes two
cascaded 8259 PICs, an IOAPIC of 24 pins and a LAPIC per vCPU, and routes GSI n to PIC input n
(n < 16) and IOAPIC pin n (all 24). What a GSI then does is the guest's choice: the PIC's and
IOAPIC's masks, the IOAPIC's redirection entries (vector, destination, edge or level). kvmlab
only drives the wire:

* ``IrqLine`` (KVM_IRQ_LINE, api.rst 4.25): ``raise_()`` asserts the line and leaves it
  asserted, what a level-triggered device does until the guest acknowledges it (the device
  then calls ``lower()``); ``pulse()`` is 1 then 0, an edge. With a level-triggered redirection
  entry the IOAPIC delivers again at every EOI while the line is still asserted: a device
  that is never acknowledged is an interrupt storm, entirely inside KVM (no exit reaches
  kvmlab; ``kvm.irq_injections`` shows it, and a kick still ends the run).
* ``IrqFd`` (KVM_IRQFD, api.rst 4.75): a write to its eventfd raises the GSI inside the
  writer's ``write(2)``, from any thread, without a vCPU exit: how kvmtool, Firecracker and
  QEMU wire virtio devices whose backends run on their own threads. An edge irqfd pulses. A
  level one (KVM_IRQFD_FLAG_RESAMPLE) asserts and stays asserted until the guest's EOI, when
  KVM deasserts it and writes the resample eventfd; it is then up to user space to trigger
  again if the device still needs service (api.rst). kvmlab's resampler thread does that:
  a device that is still asserting (``trigger()`` not followed by ``lower()``) is triggered
  again, one that was acknowledged stays quiet. QEMU's VFIO INTx does the same.
* MSIs (KVM_SIGNAL_MSI, api.rst 4.71): ``raise_irq(vector, vcpu)`` on a machine with the
  irqchip is a fixed, edge MSI to that vCPU's LAPIC (xAPIC ID = vCPU index, KVM's default).

Under kvm_pvm (measured) the LAPIC acknowledges a level-triggered interrupt to the IOAPIC as
it delivers it, not at the guest's EOI: a line still asserted then is delivered once more, so a
device lowered by its handler interrupts twice per raise (the second one spurious), and a
level irqfd's resample can come before the handler ran, when the resampler may trigger it
again. A driver that checks its device's status ignores both, as on a PC with a shared line.

One line per GSI per machine: KVM keeps one level per GSI for all of user space's
KVM_IRQ_LINE calls (one IRQ source ID), and an irqfd on the same GSI would pulse it, so a GSI
has either an ``IrqLine`` or an ``IrqFd``, and ``Machine.irq_line(4)`` returns the same object
each time. Devices that share a line share its level.

Everything here is torn down by ``IrqLines.close`` before the VM: the resampler thread is
joined, every irqfd deassigned and every eventfd closed.
"""

from __future__ import annotations

import logging
import select
import threading
from typing import TYPE_CHECKING

from ..checks import is_whole_number
from ..errors import ConfigError, InterruptRefusedError, MachineStateError
from ..kvm.constants import PIC_GSIS
from ..kvm.eventfd import EventFd
from ..metrics.lines import LineCounters, LineMetrics
from ..x86 import MSI_MAX_DESTINATION, msi_message

if TYPE_CHECKING:
    from ..engines.base import VmBackend

log = logging.getLogger("kvmlab.irq")

#: the irqchip's registers a guest programs, for error messages
LAPIC_HINT = (
    "software-enable its LAPIC (bit 8 of the spurious-interrupt vector register, 0xFEE000F0) and end each "
    "handler by writing 0 to its EOI register (0xFEE000B0)"
)
#: how long ``close`` waits for the resampler thread (it wakes at once; this is a bound)
RESAMPLER_JOIN_S = 1.0


def _check_gsi(gsi: object, count: int) -> int:
    if not is_whole_number(gsi) or not 0 <= gsi < count:
        raise ConfigError(
            f"gsi={gsi!r}: KVM's in-kernel irqchip has lines (GSIs) 0 to {count - 1}: 0-{PIC_GSIS - 1} reach both "
            f"the PIC and the IOAPIC, {PIC_GSIS}-{count - 1} only the IOAPIC"
        )
    return gsi


class IrqLine:
    """Input ``gsi`` of the in-kernel irqchip, driven with KVM_IRQ_LINE from any thread.

    ``raise_()`` asserts it and it stays asserted (``level`` is True) until ``lower()``: a
    level-triggered device raises when it needs service and lowers when the guest has
    acknowledged it (a write to one of its registers). ``pulse()`` raises and lowers at once:
    an edge, which the PIC and an edge-triggered IOAPIC entry latch. ``raise_`` and ``pulse``
    return KVM's answer where it gives one (KVM_IRQ_LINE_STATUS): above 0 delivered, 0
    coalesced with an interrupt still pending, below 0 ignored by every controller (masked).

    Counted per line (``counters``, the registry's ``irq_lines()``) and per machine (the
    ``line_*`` metrics).
    """

    def __init__(self, owner: "IrqLines", gsi: int, counters: LineCounters):
        self.gsi = gsi
        self.counters = counters
        self._owner = owner
        self._lock = threading.Lock()
        self._level = False
        #: what KVM said of the last assert (None before one, or where KVM does not say)
        self.last_status: int | None = None

    @property
    def level(self) -> bool:
        """Whether kvmlab holds the line asserted now."""
        return self._level

    def raise_(self) -> int | None:
        """Asserts the line and leaves it asserted (a level-triggered device's interrupt)."""
        with self._lock:
            status = self._set(1, "raise_()")
            self._level = True
            self.counters.raises += 1
            self._count(status)
        return status

    def lower(self) -> None:
        """Deasserts the line (the guest acknowledged the device)."""
        with self._lock:
            self._set(0, "lower()")
            self._level = False
            self.counters.lowers += 1

    def pulse(self) -> int | None:
        """An edge: asserts and deasserts the line (an edge-triggered device's interrupt).
        Returns KVM's answer for the assert."""
        with self._lock:
            status = self._set(1, "pulse()")
            self._set(0, "pulse()")
            self._level = False
            self.counters.pulses += 1
            self._count(status)
        return status

    def _set(self, level: int, what: str) -> int | None:
        backend = self._owner.usable(f"IRQ line {self.gsi}: {what}")
        return backend.irq_line(self.gsi, level)

    def _count(self, status: int | None) -> None:
        self.last_status = status
        if status is None:
            return
        if status == 0:
            self.counters.coalesced += 1
        elif status < 0:
            self.counters.masked += 1

    def __repr__(self) -> str:
        return f"<IrqLine gsi {self.gsi}, {'asserted' if self._level else 'deasserted'}>"


class IrqFd:
    """An eventfd wired to input ``gsi`` (KVM_IRQFD): ``trigger()`` raises the line from any
    thread without a vCPU exit, inside its ``write(2)``.

    Edge (``level=False``): each trigger is an edge. Level (``level=True``, with
    KVM_IRQFD_FLAG_RESAMPLE): a trigger asserts the line until the guest's EOI; the device
    calls ``lower()`` once the guest has acknowledged it (as ``IrqLine.lower``), and at each
    EOI kvmlab's resampler thread triggers again if it has not. ``fileno()`` is the eventfd,
    for code that writes it itself (KVM still injects; only kvmlab's counters miss it).
    """

    def __init__(self, owner: "IrqLines", gsi: int, level: bool, counters: LineCounters):
        self.gsi = gsi
        self.level = level
        self.counters = counters
        self._owner = owner
        self._lock = threading.Lock()
        self._asserted = False
        self._closed = False
        self._event = EventFd(f"irqfd eventfd of GSI {gsi}")
        self._resample: EventFd | None = None
        with self._event.closed_on_error():
            if level:
                self._resample = EventFd(f"irqfd resample eventfd of GSI {gsi}")

    @property
    def asserted(self) -> bool:
        """Level only: whether the device still asserts (triggered, not lowered since)."""
        return self._asserted

    def fileno(self) -> int:
        return self._event.fd

    def trigger(self) -> None:
        """Raises the line: one eventfd write, no vCPU exit. From any thread."""
        with self._lock:
            self._check(f"irqfd of GSI {self.gsi}: trigger()")
            self._asserted = self.level
            self._event.write(1)
            self.counters.triggers += 1

    def lower(self) -> None:
        """Level only: the guest acknowledged the device, which no longer asserts. KVM
        deasserts the line itself at the guest's EOI, and the resampler then stays quiet."""
        if not self.level:
            raise ConfigError(
                f"irqfd of GSI {self.gsi}: lower() is for a level-triggered irqfd (irqfd(gsi, level=True)); "
                "an edge irqfd is raised and lowered by each trigger()"
            )
        with self._lock:
            self._check(f"irqfd of GSI {self.gsi}: lower()")
            self._asserted = False
            self.counters.lowers += 1

    def _resampled(self) -> None:
        """On the resampler thread: the guest EOI'd the line and KVM deasserted it. Trigger
        again if the device still asserts (api.rst 4.75: "the user's responsibility").
        Under the lock, so ``close`` cannot take the fds away in between."""
        with self._lock:
            if self._closed or self._resample is None or not self._resample.read():
                return
            self.counters.resamples += 1
            if self._asserted:
                self._event.write(1)
                self.counters.triggers += 1
                self.counters.retriggers += 1

    def _check(self, what: str) -> None:
        if self._closed:
            self._owner.usable(what)  # says why, when the machine is stopped or closed
            raise MachineStateError(f"{what}: this irqfd was closed; make a new one with irqfd()")
        self._owner.usable(what)

    def close(self) -> None:
        """Deassigns the irqfd (KVM_IRQFD_FLAG_DEASSIGN) and closes its eventfds; the GSI is
        free again. Idempotent; ``Machine.close`` closes every irqfd."""
        self._owner.release(self)

    def _release(self, backend: "VmBackend | None") -> None:
        """Called by the owner, once: deassign (while the VM lives), then close the fds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._asserted = False
            try:
                if backend is not None:
                    try:
                        backend.irqfd_deassign(self._event.fd, self.gsi)
                    except OSError as err:  # the VM is being torn down anyway; closing it frees the irqfd
                        log.warning("irqfd of GSI %d: KVM_IRQFD deassign failed: %s", self.gsi, err)
            finally:
                self._event.close()
                if self._resample is not None:
                    self._resample.close()

    def __repr__(self) -> str:
        kind = "level, resampled" if self.level else "edge"
        state = "closed" if self._closed else ("asserted" if self._asserted else "idle")
        return f"<IrqFd gsi {self.gsi}, {kind}, {state}>"


class IrqLines:
    """A VM's interrupt lines and irqfds, its MSIs, the resampler thread and their teardown.

    Every check is made here once, for ``Machine`` and devices alike: the engine's
    capability, a VM with the irqchip, the GSI, a machine neither stopped nor closed."""

    def __init__(self, backend: "VmBackend", metrics: LineMetrics | None = None):
        self._backend = backend
        self.metrics = metrics if metrics is not None else LineMetrics()
        self._lock = threading.Lock()
        self._lines: dict[int, IrqLine] = {}
        self._irqfds: dict[int, IrqFd] = {}
        #: why nothing may be raised any more (the machine stopped, or closed); None while it may
        self._refusal: str | None = None
        self._closed = False
        self._resampler: threading.Thread | None = None
        self._wake: EventFd | None = None
        self._version = 0  # bumped when a resampling irqfd comes or goes

    # --- checks ------------------------------------------------------------------------------

    def usable(self, what: str) -> "VmBackend":
        """The backend, if lines may be driven now; else a ``MachineStateError`` saying why."""
        refusal = self._refusal
        if refusal is not None:
            raise MachineStateError(f"{what}: {refusal}")
        return self._backend

    def _need(self, what: str, capability: str, field: bool) -> "VmBackend":
        backend = self.usable(what)
        caps = backend.capabilities
        if not field:
            raise caps.refuse(what, capability, "use engine='kvm' and irqchip=True")
        if not backend.irqchip:
            raise ConfigError(
                f"{what}: this machine has no in-kernel irqchip, whose PIC and IOAPIC the lines lead to "
                "(KVM refuses lines and irqfds without one); create the Machine with irqchip=True"
            )
        return backend

    def halt(self, reason: str) -> None:
        """The machine stopped: nothing more may be raised (the vCPUs are gone), and the
        resampler thread ends. The fds stay until ``close``."""
        with self._lock:
            if self._refusal is None:
                self._refusal = reason
        self._end_resampler()

    # --- making lines --------------------------------------------------------------------------

    def line(self, gsi: int) -> IrqLine:
        """The machine's line ``gsi`` (the same object every time)."""
        backend = self._need("irq_line()", "interrupt lines (KVM_IRQ_LINE)", self._backend.capabilities.irq_lines)
        gsi = _check_gsi(gsi, backend.gsi_count)
        with self._lock:
            line = self._lines.get(gsi)
            if line is not None:
                return line
            if gsi in self._irqfds:
                raise ConfigError(f"irq_line({gsi}): GSI {gsi} is driven by {self._irqfds[gsi]!r}; one source per line (close it first)")
            line = self._lines[gsi] = IrqLine(self, gsi, self.metrics.new_line("line", gsi))
        return line

    def irqfd(self, gsi: int, level: bool = False) -> IrqFd:
        """A new irqfd on ``gsi``: edge, or ``level`` (resampled at the guest's EOI)."""
        caps = self._backend.capabilities
        what = f"irqfd({gsi!r}{', level=True' if level else ''})"
        backend = self._need(what, "irqfd (KVM_IRQFD)", caps.irqfd)
        if level is not True and level is not False:
            raise ConfigError(f"{what}: level={level!r}: True (a level-triggered device, resampled at EOI) or False (edge)")
        if level and not caps.irqfd_resample:
            raise caps.refuse(what, "resampling irqfds (KVM_IRQFD_FLAG_RESAMPLE)", "use an IrqLine (irq_line()) for a level-triggered device")
        gsi = _check_gsi(gsi, backend.gsi_count)
        with self._lock:
            self.usable(what)
            taken = self._irqfds.get(gsi) or self._lines.get(gsi)
            if taken is not None:
                raise ConfigError(f"{what}: GSI {gsi} is driven by {taken!r} already; one source per line")
            irqfd = IrqFd(self, gsi, level, self.metrics.new_line("irqfd", gsi, level))
            try:
                backend.irqfd(irqfd._event.fd, gsi, irqfd._resample.fd if irqfd._resample is not None else None)
            except BaseException:
                irqfd._release(None)
                raise
            self._irqfds[gsi] = irqfd
            if level:
                self._version += 1
        if level:
            self._start_resampler()
        return irqfd

    def release(self, irqfd: IrqFd) -> None:
        """Deassigns and closes one irqfd (``IrqFd.close``)."""
        with self._lock:
            if self._irqfds.get(irqfd.gsi) is irqfd:
                del self._irqfds[irqfd.gsi]
                self._version += 1
        irqfd._release(None if self._closed else self._backend)
        self._poke()

    # --- MSIs ----------------------------------------------------------------------------------

    def signal_msi(self, vector: int, vcpu: int) -> None:
        """``vector`` (checked by the caller) as a fixed, edge MSI to vCPU ``vcpu``'s LAPIC."""
        what = "raise_irq()"
        backend = self.usable(what)
        caps = backend.capabilities
        if not caps.msi:
            raise caps.refuse(what, "MSI delivery (KVM_SIGNAL_MSI), which raise_irq needs with the in-kernel irqchip",
                              "create the Machine with irqchip=False to inject with KVM_INTERRUPT")  # fmt: skip
        if vcpu > MSI_MAX_DESTINATION:
            raise ConfigError(f"raise_irq(vcpu={vcpu}): an xAPIC MSI reaches APIC IDs 0 to {MSI_MAX_DESTINATION}; raise at a lower vCPU")
        address, data = msi_message(vcpu, vector)
        if backend.signal_msi(address, data) <= 0:
            raise InterruptRefusedError(
                f"raise_irq({vector}, vcpu={vcpu}): vCPU {vcpu}'s LAPIC refused the MSI (KVM_SIGNAL_MSI answered 0: "
                f"the guest blocks it). With the in-kernel irqchip raise_irq sends an MSI to the vCPU's LAPIC, and the "
                f"guest must first {LAPIC_HINT} (a real-mode program cannot reach it); or create the Machine with "
                "irqchip=False to inject with KVM_INTERRUPT"
            )
        self.metrics.count_msi(vcpu)

    # --- the resampler thread ------------------------------------------------------------------

    def _start_resampler(self) -> None:
        with self._lock:
            if self._resampler is not None or self._refusal is not None:
                self._poke_locked()
                return
            self._wake = EventFd("irqfd resampler wake-up")
            self._resampler = threading.Thread(target=self._resample_loop, name="kvmlab irqfd resampler", daemon=True)
            self._resampler.start()

    def _poke(self) -> None:
        with self._lock:
            self._poke_locked()

    def _poke_locked(self) -> None:
        if self._wake is not None and not self._wake.closed:
            self._wake.write(1)

    def _resample_loop(self) -> None:
        """Waits on every resample eventfd (and the wake-up) and re-triggers what still asserts.
        Holds no Machine: only this object and its irqfds."""
        wake = self._wake
        poller = select.poll()
        poller.register(wake.fd, select.POLLIN)
        watched: dict[int, IrqFd] = {}
        version = -1
        try:
            while True:
                with self._lock:
                    if self._refusal is not None or self._closed:
                        return
                    if version != self._version:
                        version = self._version
                        current = {i._resample.fd: i for i in self._irqfds.values() if i._resample is not None and not i._closed}
                        for fd in watched.keys() - current.keys():
                            poller.unregister(fd)
                        for fd in current.keys() - watched.keys():
                            poller.register(fd, select.POLLIN)
                        watched = current
                for fd, _ in poller.poll():
                    if fd == wake.fd:
                        wake.read()
                    else:
                        irqfd = watched.get(fd)
                        if irqfd is not None:
                            irqfd._resampled()
        except Exception:  # a bug must not hang close(); level irqfds then stay quiet
            log.exception("the irqfd resampler failed; level-triggered irqfds are no longer re-triggered")

    def _end_resampler(self) -> None:
        thread = self._resampler
        if thread is None:
            return
        self._poke()
        if thread is not threading.current_thread():
            thread.join(RESAMPLER_JOIN_S)
        with self._lock:
            self._resampler = None
            wake, self._wake = self._wake, None
        if wake is not None and not thread.is_alive():
            wake.close()

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Ends the resampler, deassigns every irqfd and closes its eventfds (before the VM
        goes). Idempotent."""
        self.halt("the machine is closed; make a new Machine to raise interrupts")
        with self._lock:
            if self._closed:
                return
            irqfds = list(self._irqfds.values())
            self._irqfds.clear()
        for irqfd in irqfds:
            irqfd._release(self._backend)
        self._closed = True

    def __repr__(self) -> str:
        return f"<IrqLines lines {sorted(self._lines)}, irqfds {sorted(self._irqfds)}>"
