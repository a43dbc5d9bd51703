"""The vCPU thread: Firecracker's vCPU state machine in Python, and ``VcpuHandle``.

"Firecracker's" below means its vCPU module, ``src/vmm/src/vstate/vcpu.rs`` in the
firecracker-microvm/firecracker repository: the design this file follows, name for name.

States and transitions (a vCPU thread starts ``Paused``, as Firecracker's ``Vcpu::run``)::

              Resume                    Pause
    Paused ────────────▶ Running ──────────────▶ Paused
      │  Pause → Paused    │ Resume → Resumed
      │  SaveState         │ SaveState     → NotAllowed
      │  DumpCpuConfig     │ DumpCpuConfig → NotAllowed
      │                    │ HLT (IF=0) / SHUTDOWN / debug-exit / error
      │ Finish             ▼
      └────────▶ (end) ◀── Exited: answers Exited(code) to anything but Finish

A HLT with IF=1 does not leave Running: the guest waits for an interrupt, and so does its
thread (``halted``), blocked on its event channel, answering events as Running does, until a
raised interrupt is pending; a Pause there resumes into the wait, not past the HLT.

Teardown, as Firecracker's table (``Vcpu::exit``), so that no path waits on itself::

    +---+---------------------------+--------------------------+--------------------------+
    |   | Vmm (supervisor/Machine)  | action                   | vCPU thread              |
    +---+---------------------------+--------------------------+--------------------------+
    | 1 |                           |                          | Vcpu.exit(status)        |
    | 2 |                           |                          | exit eventfd += 1        |
    | 3 |                           | <--- exit eventfd ---    |                          |
    | 4 | Vmm.stop()                |                          |                          |
    | 5 |                           | --- Finish + kick --->   |                          |
    | 6 |                           |                          | state machine ends       |
    | 7 | VcpuHandle.join(timeout)  |                          |                          |
    | 8 | Vmm.exit_code is set; Machine.wait() returns it                                 |
    +---+---------------------------+--------------------------+--------------------------+

A vCPU-initiated teardown starts at step 1; a controller-initiated one (``Machine.stop`` /
``close``) at step 4. A vCPU whose ``VcpuHandle`` is garbage-collected gets a "disconnected"
message, the analogue of Firecracker's ``TryRecvError::Disconnected``, and exits.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import KvmlabError, VcpuError, VcpuFinishedError, VcpuTimeoutError
from ..kvm.constants import MpState
from ..kvm.run import IMMEDIATE_EXIT_U8
from ..metrics import trace as trace_kinds
from .exit_record import read_exit
from .exits import DebugExitInfo, Emulation, ExitCode, Peripherals, Stopped
from .final_state import FinalState
from .interrupts import DeliveryClock, PendingInterrupts, offer
from .protocol import (
    DumpedCpuConfig,
    Error,
    Exited,
    NotAllowed,
    Paused,
    Resumed,
    SavedState,
    ThreadEnded,
    VcpuEvent,
    VcpuResponse,
    VcpuState,
    VcpuStatus,
)

if TYPE_CHECKING:
    from ..guest.code import GuestCode

#: the Vcpu whose thread this is (``current_vcpu``)
_current = threading.local()


def current_vcpu() -> "Vcpu | None":
    """The vCPU whose thread calls this (a device handling one of its exits), else None."""
    return getattr(_current, "vcpu", None)


log = logging.getLogger("kvmlab.vcpu")

_MP_STATE_NAMES = {state.value: state.name for state in MpState}  # None (no irqchip) maps to None

#: The handle is gone (Firecracker's channel disconnection): the vCPU exits with an error.
DISCONNECTED = None


class _InterruptWake:
    """The event ``raise_irq`` sends a vCPU asleep in HLT (not a controller's event, and no
    response answers it). Any other state ignores it: one can be left over when the vCPU
    woke for something else just as the interrupt came, and the vector is pending anyway."""

    def __repr__(self) -> str:
        return "INTERRUPT_WAKE"


INTERRUPT_WAKE = _InterruptWake()


class Vcpu:
    """The vCPU thread's side: the state machine around ``backend.run_emulation``.

    ``backend`` is the engine's vCPU (``kvmlab.engines``): it owns the kvm_run page, runs the
    guest until the next exit and hands that exit to ``handle_kvm_exit``.
    """

    def __init__(self, backend, peripherals: Peripherals, exit_evt: int):
        self.index = backend.index
        self.backend = backend
        self.peripherals = peripherals
        self.exit_evt = exit_evt
        self.run_u8 = peripherals.run_u8
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.responses: queue.SimpleQueue = queue.SimpleQueue()
        self.state = VcpuState.CREATED
        #: why and how the vCPU exited (None until it does)
        self.exit_status: Stopped | None = None
        #: the last KVM_EXIT_DEBUG seen (single-step, breakpoints)
        self.last_debug: DebugExitInfo | None = None
        # kick_lock makes "is the thread still there?" and pthread_kill one step: a finished
        # (detached) thread's id must never be signalled.
        self.kick_lock = threading.Lock()
        self.kickable = False
        self.thread: threading.Thread | None = None
        #: called with this vCPU's index after each state transition (never per exit), on
        #: this vCPU's thread: it must return at once; what it raises is logged and dropped
        self.on_state_change: Callable[[int], None] | None = None
        #: reads the code at RIP from guest memory for the final state (set by whoever owns
        #: the memory and knows the guest's page tables: ``Machine``); None: no code kept
        self.read_code: Callable[[dict, dict], "GuestCode"] | None = None
        #: what this vCPU looked like when it stopped for good (its thread recorded it on
        #: exiting, or as it ended after Finish); None while it may still run
        self.final_state: FinalState | None = None
        #: interrupts raised for this vCPU and not injected yet (``raise_irq``)
        self.irqs = PendingInterrupts()
        #: when each was raised, until its handler acknowledges it (the delivery latency)
        self.delivery = DeliveryClock()
        #: in a HLT with IF=1 (``halted``), so a Pause there resumes into the wait
        self._halted = False

    # --- thread entry -------------------------------------------------------------------------

    def start_threaded(self, barrier: threading.Barrier | None = None) -> "VcpuHandle":
        """Moves the vCPU to its own thread (named ``kvmlab vcpu N``) and returns its handle."""
        if self.thread is not None:
            raise VcpuError(f"vCPU {self.index} was already started")
        self.thread = threading.Thread(target=self._thread_main, args=(barrier,), name=f"kvmlab vcpu {self.index}", daemon=True)
        self.kickable = True
        self.thread.start()
        return VcpuHandle(self)

    def _thread_main(self, barrier: threading.Barrier | None) -> None:
        _current.vcpu = self
        try:
            if barrier is not None:
                barrier.wait(timeout=10)
            self._become(VcpuState.PAUSED)
            state = self.paused
            while state is not None:
                state = state()
            self._capture_final()  # after Finish (an exited vCPU recorded it on exiting)
        except BaseException as exc:  # a bug must not leave a controller waiting forever
            log.exception("vCPU %d: state machine crashed", self.index)
            self.exit_status = Stopped(ExitCode.GENERIC_ERROR, f"vCPU thread crashed: {exc!r}", machine_wide=True)
            self._capture_final()
            self.responses.put(Exited(ExitCode.GENERIC_ERROR, self.exit_status.reason))
            self._signal_exit()
        finally:
            with self.kick_lock:
                self.kickable = False
                self.state = VcpuState.FINISHED
            self._state_changed()  # outside the kick lock: a controller's kick waits on it
            self.responses.put(ThreadEnded())

    # --- states -------------------------------------------------------------------------------

    def running(self):
        """The Running state: run the guest until something needs the state machine."""
        # The inner loop is Firecracker's optimisation: no event check while exits are handled.
        # It is run_emulation() inlined (same steps, one call level less per exit: ~5% here).
        enter = self.backend.run_emulation
        peripherals = self.peripherals
        u8 = self.run_u8
        handled = Emulation.HANDLED
        vectors = self.irqs.vectors
        try:
            while True:
                if vectors:  # the one test interrupts add per exit: a raised vector waits
                    self._offer_interrupt()
                if u8[IMMEDIATE_EXIT_U8]:
                    result = self.run_emulation()  # the short-circuit, with its bookkeeping
                else:
                    result = enter(peripherals)
                if result is handled:
                    continue
                if type(result) is Stopped:
                    return self.exit(result)
                if result is Emulation.WAIT_FOR_INTERRUPT:
                    return self.halted
                if type(result) is DebugExitInfo:
                    self.last_debug = result
                break  # INTERRUPTED, DIRTY_RING_FULL or a debug event: look at the events
        except VcpuError as err:
            if peripherals.trace is not None:
                peripherals.trace(trace_kinds.ERROR, 0, 0, 0, time.perf_counter_ns(), 0)
            return self.exit(Stopped(ExitCode.GENERIC_ERROR, str(err), machine_wide=True))

        if peripherals.coalesced is not None:  # a kick ended the run: no exit drained since
            peripherals.coalesced.drain(peripherals)
        try:
            event, seq = self.events.get_nowait()
        except queue.Empty:
            return self.running
        if not self.events.empty():
            # More is queued, and its kick may have landed while this thread was out of
            # KVM_RUN: re-arm immediate_exit so the next event is read at once (Firecracker reads
            # one event per interruption and could leave a second one waiting on a busy loop).
            self.run_u8[IMMEDIATE_EXIT_U8] = 1
        return self._answer_running(event, seq, self.running)

    def _answer_running(self, event, seq: int | None, stay):
        """Running's answer to ``event`` (Firecracker's), also given in a HLT wait: ``stay``
        is the state to go on in (``running``, or ``halted``)."""
        if event is VcpuEvent.PAUSE:
            self._become(VcpuState.PAUSED)
            self.responses.put(Paused(seq=seq))
            self._kvmclock_ctrl()
            return self.paused
        if event is VcpuEvent.RESUME:
            self.responses.put(Resumed(seq=seq))
            return stay
        if event is VcpuEvent.SAVE_STATE:
            self.responses.put(NotAllowed("save/restore unavailable while running", seq=seq))
            return stay
        if event is VcpuEvent.DUMP_CPU_CONFIG:
            self.responses.put(NotAllowed("cpu config dump is unavailable while running", seq=seq))
            return stay
        if event is VcpuEvent.FINISH:
            return None
        if event is INTERRUPT_WAKE:
            return stay
        return self._disconnected()

    def halted(self):
        """Running, in a HLT with IF=1: the guest waits for an interrupt, and so does this
        thread, blocked on its event channel (no KVM_RUN: without an in-kernel irqchip KVM
        would only return the HLT again). It leaves for ``running`` once a raised vector is
        pending, which the run loop then injects: the guest's handler runs, then the code
        after its HLT, as on a CPU woken by an interrupt. A controller's events are answered
        as in Running, so Pause, Finish and close work at once; a Pause resumes back here."""
        if not self._halted:
            self._halted = True
            self._state_changed()  # still Running, but a view shows "halted" (``status()``)
        pending = self.irqs
        if pending.sleep_unless_pending():
            event, seq = self.events.get()
            pending.awake()
            if event is INTERRUPT_WAKE:
                return self.halted  # a vector is pending: look again, and leave
            # A controller's event kicked (immediate_exit = 1), and this thread is reading
            # the events now: clear the flag, then re-arm it if more came (as paused does).
            self.run_u8[IMMEDIATE_EXIT_U8] = 0
            if not self.events.empty():
                self.run_u8[IMMEDIATE_EXIT_U8] = 1
            return self._answer_running(event, seq, self.halted)
        self._halted = False
        self._state_changed()
        self.peripherals.metrics.hlt_wakeups += 1
        return self.running

    def paused(self):
        """The Paused state: block until the next event."""
        event, seq = self.events.get()
        if event is VcpuEvent.RESUME:
            # Firecracker warns here; but every send_event kicks, so the Resume that woke a
            # paused vCPU always finds immediate_exit set: clear it. Then look at the queue:
            # an event sent since (a Finish from a machine stopping) set the flag *before*
            # this cleared it, and its one kick must not be lost. (Clearing first, then
            # looking, is the order that cannot miss one: send_event queues, then kicks.)
            self.run_u8[IMMEDIATE_EXIT_U8] = 0
            if not self.events.empty():
                self.run_u8[IMMEDIATE_EXIT_U8] = 1
            self._become(VcpuState.RUNNING)
            self.responses.put(Resumed(seq=seq))
            return self.halted if self._halted else self.running  # a HLT wait goes on waiting
        if event is VcpuEvent.PAUSE:
            self.responses.put(Paused(seq=seq))
            return self.paused
        if event is INTERRUPT_WAKE:
            return self.paused  # a left-over wake-up: the vector waits for Resume
        if event is VcpuEvent.SAVE_STATE:
            self.responses.put(self._answer(self.backend.save_state, SavedState, seq))
            return self.paused
        if event is VcpuEvent.DUMP_CPU_CONFIG:
            self.responses.put(self._answer(self.backend.dump_cpu_config, DumpedCpuConfig, seq))
            return self.paused
        if event is VcpuEvent.FINISH:
            return None
        return self._disconnected()

    def _disconnected(self):
        """The handle was dropped: exit with an error and end, as nobody can send Finish."""
        self.exit_status = Stopped(ExitCode.GENERIC_ERROR, "controller disconnected", machine_wide=True)
        self._become(VcpuState.EXITED)
        self._signal_exit()
        return None

    def exit(self, status: Stopped):
        """The Exited state: tell the VMM, then answer ``Exited`` until ``Finish`` comes.
        The final state is recorded first, so whoever hears of the exit can read it; the exit
        status and the Exited state are published together after it, so no observer sees a
        Running vCPU with an exit code while its registers are being read."""
        self._capture_final(status)
        self.exit_status = status
        self._become(VcpuState.EXITED)
        log.info("vCPU %d exited with code %d: %s", self.index, status.code, status.reason)
        self._signal_exit()
        seq = None
        answer = True
        while True:
            if answer:
                self.responses.put(Exited(status.code, status.reason, seq=seq))
            event, seq = self.events.get()
            if event is VcpuEvent.FINISH or event is DISCONNECTED:
                return None
            answer = event is not INTERRUPT_WAKE  # nobody asked: nobody is answered

    def _capture_final(self, status: Stopped | None = None) -> None:
        """Records the final state once, on this vCPU's own thread (the only one that may
        touch its registers, as in Firecracker), while the guest's memory still exists.
        Never raises: a vCPU must end whatever its engine can still read."""
        if self.final_state is not None:
            return
        status = status if status is not None else self.exit_status
        snapshot = code = last_exit = None
        problem = None
        try:
            snapshot = self.backend.save_state()
        except Exception as err:
            log.warning("vCPU %d: could not read its final registers: %s", self.index, err)
            problem = f"the engine could not read the registers as the vCPU ended: {err}"
        if snapshot is not None and self.read_code is not None:
            try:
                code = self.read_code(snapshot.regs, snapshot.sregs)
            except Exception as err:
                log.warning("vCPU %d: could not read the code at RIP: %s", self.index, err)
        try:
            last_exit = read_exit(self.peripherals, f"stopped: {status.reason}" if status is not None else "")
        except Exception:
            log.debug("vCPU %d: no last exit to record", self.index, exc_info=True)
        self.final_state = FinalState(
            self.index, int(status.code) if status is not None else None, status.reason if status is not None else None,
            snapshot, code, last_exit, problem=problem,
        )  # fmt: skip

    def _become(self, state: VcpuState) -> None:
        """A transition: the new state, then the notification (so a listener that reads the
        state on the notification sees the new one). Set before the response that answers the
        request goes out, so whoever the response wakes finds the listener already told."""
        self.state = state
        self._state_changed()

    def _state_changed(self) -> None:
        notify = self.on_state_change
        if notify is None:
            return
        try:
            notify(self.index)
        except Exception:  # a listener's bug must never stop the vCPU
            log.exception("vCPU %d: state change listener failed", self.index)

    # --- running the guest ----------------------------------------------------------------------

    def run_emulation(self):
        """Runs the guest until the next exit and handles it (Firecracker's ``run_emulation``)."""
        u8 = self.run_u8
        if u8[IMMEDIATE_EXIT_U8]:
            # A kick landed while this thread was outside KVM_RUN. Firecracker warns; here it is
            # routine (exit handling in Python is long enough to catch kicks), so debug level.
            log.debug("vCPU %d: run requested with immediate_exit set; skipped", self.index)
            u8[IMMEDIATE_EXIT_U8] = 0
            self.peripherals.metrics.interrupted += 1
            return Emulation.INTERRUPTED
        return self.backend.run_emulation(self.peripherals)

    def _offer_interrupt(self) -> None:
        """Injects the oldest pending vector if the guest can take it, else asks for the
        window (``interrupts.offer``); a refusal ends the vCPU as a failed exit does."""
        p = self.peripherals
        try:
            offer(self.irqs, self.run_u8, self.backend.inject_interrupt, p.metrics, p.trace)
        except KvmlabError as err:
            raise VcpuError(f"injecting interrupt vector {self.irqs.vectors[0]} failed: {err}") from err  # the exit names the vCPU

    def raise_irq(self, vector: int) -> None:
        """Queues interrupt ``vector`` (checked by the caller) from any thread, and gets this
        vCPU's thread to it: a wake-up on its event channel when it sleeps in HLT, else the
        kick (``kick_thread``), so a run under way returns and the loop injects before the
        next. No kick from the vCPU's own thread (a device raising during an exit): its loop
        looks at the pending vectors before its next run, which the engine is told to end
        soon (``interrupt_pending``: a no-op on KVM, whose run returns after every exit)."""
        self.delivery.raised(vector)
        if self.irqs.add(vector):
            self.events.put((INTERRUPT_WAKE, None))
        elif self.thread is None or self.thread.ident != threading.get_ident():
            self.kick()
        else:
            self.backend.interrupt_pending()

    def irq_acknowledged(self, vector: int) -> int | None:
        """On this vCPU's thread: its handler for ``vector`` started (a device said so while
        handling an exit); records the delivery latency (``DeliveryClock``)."""
        return self.delivery.acknowledged(vector, self.peripherals.metrics)

    def _answer(self, action: Callable, response_type: type, seq: int) -> VcpuResponse:
        try:
            return response_type(action(), seq=seq)
        except Exception as err:
            log.exception("vCPU %d: %s failed", self.index, getattr(action, "__name__", action))
            return Error(err, seq=seq)

    def _kvmclock_ctrl(self) -> None:
        try:
            self.backend.kvmclock_ctrl()
        except OSError as err:
            if err.errno != errno.EINVAL:  # EINVAL: the guest never enabled kvmclock
                log.warning("vCPU %d: KVM_KVMCLOCK_CTRL failed: %s", self.index, err)

    def _signal_exit(self) -> None:
        try:
            os.eventfd_write(self.exit_evt, 1)
        except OSError as err:
            self.peripherals.metrics.failures += 1
            log.error("vCPU %d: failed signaling vcpu exit event: %s", self.index, err)

    def kick(self) -> None:
        """Gets this vCPU's thread out of the guest, once: Firecracker's kick. Never signals
        a thread that has finished."""
        with self.kick_lock:
            if self.kickable and self.thread is not None:
                self.kick_thread(self.thread.ident)

    def kick_thread(self, thread_ident: int) -> None:
        """``immediate_exit = 1``, then the engine's interrupt to the thread running this
        vCPU. The flag is the contract that makes one kick enough: a run about to start
        returns at once (KVM checks it on entry; ``Vcpu.running`` before every run), and a
        run under way is stopped by the interrupt (SIGRTMIN makes KVM_RUN return EINTR; the
        emulated engine's block hook reads the flag itself). The signal's system call
        orders the flag's store before the interrupt."""
        self.run_u8[IMMEDIATE_EXIT_U8] = 1
        self.backend.interrupt(thread_ident)

    def status(self) -> VcpuStatus:
        mp_name = _MP_STATE_NAMES.get(self.backend.mp_state)
        if mp_name is None and self._halted and self.state is VcpuState.RUNNING:
            # without an in-kernel irqchip KVM tracks no MP state, but this vCPU is in what KVM
            # calls HALTED: it executed HLT and waits for an interrupt (kvmlab waits for it)
            mp_name = "HALTED"
        status = self.exit_status
        if status is None:
            return VcpuStatus(self.index, self.state, mp_state=mp_name)
        return VcpuStatus(self.index, self.state, int(status.code), status.reason, mp_state=mp_name)


class VcpuHandle:
    """The controller's side of one vCPU thread (Firecracker's ``VcpuHandle``).

    ``send_event`` queues an event and kicks; ``request`` also waits, with a timeout, for the
    response to *that* event. Requests on one handle are serialized by a lock, so two
    controllers (a notebook cell and a widget) never take each other's answers.
    """

    def __init__(self, vcpu: Vcpu):
        self._vcpu = vcpu
        self.index = vcpu.index
        self._events = vcpu.events
        self._responses = vcpu.responses
        self._thread = vcpu.thread
        self._seq = itertools.count(1)
        self._request_lock = threading.Lock()
        #: responses the vCPU sent unasked (its own ``Exited``), oldest first
        self.unsolicited: list[VcpuResponse] = []
        #: late answers to requests that had timed out, with their seq
        self.stale: list[VcpuResponse] = []
        # Dropping the handle disconnects the vCPU, as dropping Firecracker's Sender does.
        self._finalizer = weakref.finalize(self, _disconnect, vcpu)

    def release(self) -> None:
        """Forgets the disconnect finalizer once the thread has ended. It must not outlive
        the thread: the finalizer registry holds the vCPU strongly, the vCPU reaches its
        machine (the device-error hook), and the machine holds this handle, so a live
        finalizer would keep every closed machine, its memory and metrics, for ever."""
        if not self.finished:
            raise VcpuError(f"vCPU {self.index}: release() while its thread still runs; send Finish and join first")
        self._finalizer.detach()

    @property
    def vcpu(self) -> Vcpu:
        return self._vcpu

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def status(self) -> VcpuStatus:
        return self._vcpu.status()

    def send_event(self, event: VcpuEvent) -> int:
        """Queues ``event`` and kicks the vCPU; returns the event's sequence number."""
        if self.finished:
            raise VcpuFinishedError(
                f"vCPU {self.index} has finished (its thread ended after Finish or a stop); "
                f"it cannot take {event.value}. Start a new Machine to run the guest again."
            )
        seq = next(self._seq)
        self._events.put((event, seq))
        self.kick()
        return seq

    def kick(self) -> None:
        self._vcpu.kick()

    def recv(self, timeout: float) -> VcpuResponse:
        """The next response, whatever it answers (Firecracker's ``response_receiver().recv_timeout``)."""
        response = self._next(timeout, "its thread ended and will answer nothing more")
        if response is None:
            raise VcpuTimeoutError(f"vCPU {self.index} sent no response within {timeout:g} s")
        return response

    def _next(self, timeout: float, ended: str) -> VcpuResponse | None:
        """The next response within ``timeout`` (None if none came). ``ThreadEnded`` stays
        in the queue as the last word for whoever asks next, and raises, saying ``ended``."""
        try:
            response = self._responses.get(timeout=timeout)
        except queue.Empty:
            return None
        if type(response) is ThreadEnded:
            self._responses.put(response)
            raise VcpuFinishedError(f"vCPU {self.index} has finished: {ended}")
        return response

    def wait_response(self, seq: int, timeout: float, what: str = "event") -> VcpuResponse:
        """Waits for the answer to event ``seq``; unasked and late answers are set aside.

        One wait on the response queue, no polling and no second kick: the kick is reliable
        (see ``Vcpu.kick_thread``), and a thread that ends without answering says so with
        its last message (``ThreadEnded``)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self._next(max(deadline - time.monotonic(), 0), f"it ended before answering {what} (the machine stopped)")
            if response is None:
                raise VcpuTimeoutError(
                    f"vCPU {self.index} did not answer {what} within {timeout:g} s "
                    f"(its state is {self.status()}); the request was left queued"
                )
            if response.seq == seq:
                return response
            (self.unsolicited if response.seq is None else self.stale).append(response)

    def request(self, event: VcpuEvent, timeout: float) -> VcpuResponse:
        """Sends ``event`` and returns the vCPU's answer to it, or raises ``VcpuTimeoutError``."""
        return request_all([self], event, timeout)[0]

    def join(self, timeout: float) -> bool:
        """Waits for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def request_all(handles: Iterable[VcpuHandle], event: VcpuEvent, timeout: float) -> list[VcpuResponse]:
    """Sends ``event`` to every handle first (all kicks go out at once), then collects the answers.

    One shared deadline: pausing N vCPUs costs one kick round trip, not N.
    """
    handles = list(handles)
    deadline = time.monotonic() + timeout
    locked: list[VcpuHandle] = []
    try:
        for handle in handles:
            if not handle._request_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
                raise VcpuTimeoutError(f"vCPU {handle.index}: another request is still waiting for its answer")
            locked.append(handle)
        seqs = [handle.send_event(event) for handle in handles]
        return [
            handle.wait_response(seq, max(deadline - time.monotonic(), 0), event.value)
            for handle, seq in zip(handles, seqs)
        ]
    finally:
        for handle in locked:
            handle._request_lock.release()


def _disconnect(vcpu: Vcpu) -> None:
    """Finalizer of a dropped handle: tell the thread nobody is listening, and kick it."""
    vcpu.events.put((DISCONNECTED, None))
    vcpu.kick()
