"""``Vmm``: owns a VM, its vCPU threads and the supervisor, and carries out the teardown
protocol (``kvmlab.vstate.vcpu`` has the table). ``Machine`` is the friendly face over it.

Why a separate object: the vCPU and supervisor threads need a reference to whoever tears the
machine down, and if that were the ``Machine`` a notebook user drops, it could never be garbage
collected. Threads reference the ``Vmm``; the ``Machine`` has a finalizer that closes it.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import select
import threading
import time
from typing import Callable

from .checks import is_whole_number
from .errors import ConfigError, MachineStateError, VcpuError, VcpuExitedError
from .vstate.coalesced import CoalescedMmio
from .vstate.exits import DeviceFailure, ExitCode
from .vstate.final_state import FinalState
from .vstate.interrupts import check_vector
from .vstate.doorbells import Doorbell, Doorbells
from .vstate.irq_lines import IrqFd, IrqLine, IrqLines
from .vstate.protocol import VcpuEvent, VcpuState, VcpuStatus
from .vstate.vcpu import Vcpu, VcpuHandle, current_vcpu, request_all
from .vstate.vm import Vm

log = logging.getLogger("kvmlab.vmm")

#: ``close()`` must return within 2 s even with every vCPU spinning: kicks take well under 1 ms.
JOIN_TIMEOUT = 1.5


class Phase(enum.Enum):
    CREATED = "created"  # vCPU threads not started
    STARTED = "started"  # threads running (paused or not)
    STOPPED = "stopped"  # every thread finished; the exit code is known
    CLOSED = "closed"  # file descriptors released


class MachineExit(int):
    """A machine's exit code (an int), with each vCPU's code and the reason it stopped."""

    vcpu_codes: dict[int, int | None]
    reason: str

    def __new__(cls, code: int, reason: str, vcpu_codes: dict[int, int | None]):
        value = super().__new__(cls, code)
        value.reason = reason
        value.vcpu_codes = vcpu_codes
        return value

    def __repr__(self) -> str:
        return f"MachineExit({int(self)}, reason={self.reason!r}, vcpu_codes={self.vcpu_codes})"


class Vmm:
    """vCPU threads, the exit eventfd supervisor and the teardown protocol."""

    def __init__(self, vm: Vm, timeout: float = 5.0):
        self.vm = vm
        self.timeout = timeout
        self.phase = Phase.CREATED
        self.handles: list[VcpuHandle] = []
        self.exit: MachineExit | None = None
        self.device_failures: collections.deque[DeviceFailure] = collections.deque(maxlen=1000)
        self.device_failure_count = 0
        self._stopped = threading.Event()
        self._teardown = threading.RLock()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._supervisor: threading.Thread | None = None
        #: the in-kernel irqchip's lines, irqfds and MSIs (``irq_line``, ``irqfd``, ``raise_irq``)
        self.irq_lines = IrqLines(vm.backend)
        #: the doorbells (``ioeventfd``) and the I/O thread that serves them
        self.doorbells = Doorbells(vm.backend, lambda: vm.memory.ranges, self.irq_lines.metrics, self.record_device_failure)
        #: the coalesced MMIO zones and ring (``Machine.coalesce_mmio``)
        self.coalesced = CoalescedMmio(vm)
        #: called just before the vCPUs are first resumed
        self.on_start: list[Callable[[], None]] = []
        #: called (on whichever thread stopped the machine) once every vCPU thread has ended
        self.on_stop: list[Callable[[MachineExit], None]] = []
        #: told of every change a view shows (``watch``): a vCPU's index after its state
        #: transition, None after a phase change (or a program loaded)
        self.observers: list[Callable[[int | None], None]] = []
        # What stays of the vCPUs once closed (Vm.close drops them with their fds): each
        # one's last status and final state, plain data.
        self._closed_statuses: list[VcpuStatus] | None = None
        self._closed_finals: list[FinalState | None] = []

    @property
    def vcpus(self) -> list[Vcpu]:
        return self.vm.vcpus

    def record_device_failure(self, failure: DeviceFailure) -> None:
        self.device_failure_count += 1
        self.device_failures.append(failure)

    # --- change notification ---------------------------------------------------------------------

    def watch(self, callback: Callable[[int | None], None]) -> Callable[[], None]:
        """Calls ``callback(index)`` after vCPU ``index`` changes state and ``callback(None)``
        after a phase change (start, stop, close) or a load; returns the function that stops it.

        Why a callback and not a poll: a view should change when the machine does, and only
        then. The rules, since the vCPU threads reach this list (and so whatever a callback
        holds): a callback runs on the thread that made the change, vCPU threads included, so
        it must return at once and must not hold the ``Machine`` (hold a weak reference, or
        only what it needs); what it raises is logged and dropped. Transitions only, never
        per exit: the exit loop is untouched. Phase changes (``None``) are never told on a
        vCPU thread, only on the controller's or the supervisor's, outside the teardown lock."""
        self.observers.append(callback)

        def unwatch() -> None:
            try:
                self.observers.remove(callback)
            except ValueError:
                pass

        return unwatch

    def notify(self, vcpu: int | None = None) -> None:
        """Tells every observer; one that raises is logged, and the others are still told."""
        for callback in list(self.observers):
            try:
                callback(vcpu)
            except Exception:
                log.exception("state observer %r failed", callback)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts one thread per vCPU (each starts Paused) and the supervisor, then resumes all."""
        if self.phase is not Phase.CREATED:
            raise MachineStateError(f"start(): the machine is {self.phase.value}; a machine starts once (make a new Machine to run again)")
        barrier = threading.Barrier(len(self.vcpus) + 1)
        for vcpu in self.vcpus:
            vcpu.on_state_change = self.notify
        self.handles = [vcpu.start_threaded(barrier) for vcpu in self.vcpus]
        self.phase = Phase.STARTED
        barrier.wait(timeout=self.timeout)
        self._supervisor = threading.Thread(target=self._supervise, name="kvmlab supervisor", daemon=True)
        self._supervisor.start()
        for callback in list(self.on_start):
            callback()
        request_all(self.handles, VcpuEvent.RESUME, self.timeout)
        self.notify()

    def request(self, indices: list[int], event: VcpuEvent, timeout: float | None = None):
        """Sends ``event`` to the given vCPUs at once and returns their answers."""
        self.require_started(event.value)
        return request_all([self.handles[i] for i in indices], event, self.timeout if timeout is None else timeout)

    def raise_irq(self, vector: int, vcpu: int = 0) -> None:
        """Raises interrupt ``vector`` at vCPU ``vcpu``, from any thread (a device's handler
        on a vCPU thread included). ``Machine.raise_irq`` and a device's ``raise_irq`` both
        come here, so every check is made here once (what lies above may not hold the Machine).

        Without the in-kernel irqchip: queued for that vCPU, whose own thread injects it with
        KVM_INTERRUPT as soon as the guest can take it (``kvmlab.vstate.interrupts``), exactly
        once. With it (where KVM_INTERRUPT fails, api.rst 4.16): a fixed, edge MSI to the
        vCPU's LAPIC (KVM_SIGNAL_MSI), which the guest must have software-enabled; a second
        raise of a vector still pending in its IRR merges with the first, as on hardware."""
        backend = self.vm.backend
        caps = backend.capabilities
        if not caps.interrupt_injection:
            raise caps.refuse("raise_irq()", "interrupt injection", "kvmlab's own engines have it: choose engine='kvm' or engine='emulated'")
        check_vector(vector)
        self.require_started("raise_irq()")
        vcpus = self.vcpus
        if not is_whole_number(vcpu) or not 0 <= vcpu < len(vcpus):
            raise ConfigError(f"vcpu={vcpu!r}: this machine has vCPUs 0 to {len(vcpus) - 1}")
        target = vcpus[vcpu]
        if target.state in (VcpuState.EXITED, VcpuState.FINISHED):
            raise VcpuExitedError(f"raise_irq(): vCPU {vcpu} is {target.status()}; no interrupt can reach it any more")
        if backend.irqchip:
            self.irq_lines.signal_msi(vector, vcpu)
            return
        target.raise_irq(vector)

    def irq_line(self, gsi: int) -> IrqLine:
        """Line ``gsi`` of the in-kernel irqchip (``kvmlab.vstate.irq_lines``), for the
        Machine and its devices alike."""
        return self.irq_lines.line(gsi)

    def irqfd(self, gsi: int, level: bool = False) -> IrqFd:
        """A new irqfd on ``gsi`` (``kvmlab.vstate.irq_lines``)."""
        return self.irq_lines.irqfd(gsi, level)

    def ioeventfd(self, address: int, size: int, datamatch: int | None, handler, bus: str) -> Doorbell:
        """A new doorbell (``kvmlab.vstate.doorbells``), never inside a coalesced zone."""
        if is_whole_number(address) and is_whole_number(size):
            for zone in self.coalesced.zones:
                if zone.open and zone.pio == (bus == "pio") and address < zone.end and zone.address < address + size:
                    raise ConfigError(
                        f"ioeventfd({address:#x}, size={size}): inside the coalesced zone {zone.address:#x}-{zone.end:#x}; "
                        "a write there is queued in the ring and could not also ring a doorbell: uncoalesce it first"
                    )
        return self.doorbells.register(address, size, datamatch, handler, bus)

    def coalesce(self, address: int, size: int, *, register: str = "", pio: bool = False):
        """A new coalesced zone (``kvmlab.vstate.coalesced``), never over a doorbell."""
        if is_whole_number(address) and is_whole_number(size):
            for bell in self.doorbells.doorbells:
                if (bell.bus == "pio") == pio and bell.address < address + size and address < bell.address + bell.size:
                    what = "coalesce_pio" if pio else "coalesce_mmio"
                    raise ConfigError(
                        f"{what}({address:#x}, {size}): covers the doorbell {bell!r}; its writes ring an eventfd and "
                        "cannot also be queued in the ring: close the doorbell first"
                    )
        return self.coalesced.register(address, size, register=register, pio=pio)

    def acknowledge_irq(self, vector: int) -> None:
        """A device says the guest's handler for ``vector`` started on the vCPU whose exit it
        is handling: that vCPU records the delivery latency. Called on any other thread
        (``Machine.step`` runs before any raise is possible), it has nothing to time."""
        vcpu = current_vcpu()
        if vcpu is not None and vcpu in self.vcpus:
            vcpu.irq_acknowledged(vector)

    def require_started(self, what: str) -> None:
        if self.phase is Phase.CREATED:
            raise MachineStateError(f"{what}: the machine has not started; call start() first")
        if self.phase is not Phase.STARTED:
            raise MachineStateError(f"{what}: the machine is {self.phase.value} ({self.exit_description()}); make a new Machine to run again")

    def exit_description(self) -> str:
        return f"exit code {int(self.exit)}: {self.exit.reason}" if self.exit is not None else "no exit yet"

    def statuses(self) -> list[VcpuStatus]:
        """Each vCPU's status; after close, the last ones (each vCPU's final status)."""
        if self._closed_statuses is not None:
            return list(self._closed_statuses)
        return [vcpu.status() for vcpu in self.vcpus]

    def final_state(self, index: int) -> FinalState | None:
        """vCPU ``index``'s final state once it has exited or its thread ended (None before)."""
        if self._closed_statuses is not None:
            return self._closed_finals[index]
        return self.vcpus[index].final_state

    def wait(self, timeout: float | None) -> MachineExit | None:
        """Blocks until the machine has stopped; None if ``timeout`` passed first."""
        if self.phase is Phase.CREATED:
            raise MachineStateError("wait(): the machine has not started; call start() first")
        return self.exit if self._stopped.wait(timeout) else None

    def stop(self, reason: str = "stopped by the controller", code: int = ExitCode.OK) -> MachineExit:
        """Steps 4-8 of the teardown table: Finish to every vCPU, join them, set the exit code.
        Observers hear of the stop after the teardown lock is released, on this thread."""
        exit_, stopped_here = self._stop(reason, code)
        if stopped_here:
            log.info("machine stopped: %r", exit_)
            self.notify()
        return exit_

    def _stop(self, reason: str, code: int) -> tuple[MachineExit, bool]:
        """The stop, under the teardown lock; also says whether this call was the one that stopped."""
        with self._teardown:
            if self.phase is Phase.CREATED:
                self.exit = MachineExit(code, f"{reason} (never started)", {v.index: None for v in self.vcpus})
                self.phase = Phase.STOPPED
                self._halt_lines()
                self._run_on_stop()
                self._stopped.set()
                return self.exit, True
            if self.phase is not Phase.STARTED:
                return self.exit, False
            for handle in self.handles:
                try:
                    handle.send_event(VcpuEvent.FINISH)
                except VcpuError:
                    pass  # already finished
            # One Finish and one kick each (send_event), then one join each: kicks are reliable.
            deadline = time.monotonic() + JOIN_TIMEOUT
            for handle in self.handles:
                handle.join(max(deadline - time.monotonic(), 0))
            stuck = [h.index for h in self.handles if not h.finished]
            if stuck:
                raise MachineStateError(
                    f"vCPU thread(s) {stuck} did not finish within {JOIN_TIMEOUT} s of Finish "
                    "(a device handler may be blocking); the machine is left running"
                )
            for handle in self.handles:
                handle.release()
            self.exit = MachineExit(code, reason, {v.index: (v.exit_status.code if v.exit_status else None) for v in self.vcpus})
            self.coalesced.drain()  # no vCPU runs: the writes still queued reach their devices now
            self.phase = Phase.STOPPED
            self._halt_lines()
            # Before waking wait(): whoever wait() returns to sees the final metrics sample.
            self._run_on_stop()
            self._stopped.set()
            return self.exit, True

    def _halt_lines(self) -> None:
        """No vCPU runs any more: lines, irqfds and MSIs are refused from now on."""
        reason = f"the machine is {self.phase.value} ({self.exit_description()}); make a new Machine to run again"
        self.irq_lines.halt(reason)
        self.doorbells.halt(reason)  # the I/O thread joined, what is left served

    def _run_on_stop(self) -> None:
        for callback in list(self.on_stop):
            try:
                callback(self.exit)
            except Exception:
                log.exception("on_stop callback %r failed", callback)

    def close(self) -> None:
        """Stops if needed, ends the supervisor and releases every fd. Safe to call twice."""
        if self.phase is Phase.CLOSED:
            return
        try:
            self.stop(reason="closed")
        finally:
            # Outside the teardown lock: the supervisor may be waiting for it to finish a stop.
            self._end_supervisor()
        with self._teardown:
            if self.phase is not Phase.STOPPED:
                return
            self._closed_statuses = [vcpu.status() for vcpu in self.vcpus]
            self._closed_finals = [vcpu.final_state for vcpu in self.vcpus]
            for vcpu in self.vcpus:
                vcpu.read_code = None  # it holds the guest's memory, which goes now
            self.coalesced.close()  # a last drain, then its views of the vCPUs' mappings go
            self.irq_lines.close()  # irqfds deassigned and their eventfds closed while the VM exists
            self.doorbells.close()  # likewise every ioeventfd
            self.vm.close()
            os.close(self._wake)
            self.phase = Phase.CLOSED
        self.notify()

    # --- supervisor (steps 3-4 of the teardown table) ---------------------------------------------

    def _supervise(self) -> None:
        poller = select.poll()
        poller.register(self.vm.exit_evt, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll(1000)}
            if self._wake in ready or self.phase is not Phase.STARTED:
                return
            if self.vm.exit_evt in ready:
                try:
                    os.eventfd_read(self.vm.exit_evt)
                except BlockingIOError:
                    continue
                self._on_vcpu_exit()

    def _on_vcpu_exit(self) -> None:
        """A vCPU exited. Machine-wide exits stop everything; otherwise wait for the last vCPU."""
        statuses = [vcpu.exit_status for vcpu in self.vcpus]
        for vcpu, status in zip(self.vcpus, statuses):
            if status is not None and status.machine_wide:
                self._stop_quietly(f"vCPU {vcpu.index}: {status.reason}", status.code)
                return
        if all(status is not None for status in statuses):
            codes = [status.code for status in statuses]
            code = next((c for c in codes if c), ExitCode.OK)
            self._stop_quietly("every vCPU halted", code)

    def _stop_quietly(self, reason: str, code: int) -> None:
        try:
            self.stop(reason=reason, code=code)
        except MachineStateError:
            log.exception("supervisor could not stop the machine")

    def _end_supervisor(self) -> None:
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            os.eventfd_write(self._wake, 1)
            self._supervisor.join(JOIN_TIMEOUT)

    def vcpu_state(self, index: int) -> VcpuState:
        return self.vcpus[index].state
