"""``LabSession``: the model every view of one machine shares, as traits views observe.

Views (``kvmlab.widgets``) hold no logic: they ``observe`` (or ``dlink``) the session's traits
and render when one changes, ask the session what is allowed, and hand it clicks. One session
per machine (``LabSession.of``), so a second ``Lab`` on the same machine shows the same
messages, the same saved states and the same pending actions instead of fighting the first
one for the vCPUs.

Where each trait comes from, and so on which thread its observers run:

- ``phase``, ``exit``, ``program``, ``states``: from the machine. A phase change (start, stop,
  close, load) is synced on the thread that made it, so after ``m.stop()`` or ``m.close()``
  returns the views already show it; a vCPU's transition (``Machine.watch``) only wakes the
  updater thread (``kvmlab.lab.updater``), which syncs at once. Never polled for transitions.
  After close the machine still reports each vCPU's final status, and ``finals`` holds each
  stopped vCPU's final state (registers, code at RIP, last exits) for the inspector.
- ``messages``: the answers to actions, and what the machine did by itself (each vCPU exit,
  the stop, the close: ``kvmlab.lab.journal``), told once each.
- ``messages`` (the answers), ``pending``, ``snapshots``, ``configs``, ``outcome``: set by ``request`` (the
  kernel's thread) and by the action worker when an action finishes.
- ``absent``: the absent-hardware summary. Counters change on every exit and have no event,
  so it follows the clock (``REFRESH_HZ``, on the updater), like the views that ``attach`` a
  clock callback (the plot, the console). The clock also re-syncs ``states``: KVM's MP state
  ("waiting for INIT") changes inside KVM_RUN with no transition to tell of it.

Threads: the updater lives only while a view is attached and the machine is started (for a
plot of a bare registry: until its metrics stop); it draws a final frame when the machine
stops, and holds the session weakly, so an idle or closed machine has no lab thread at all.
Clicks only ``request()`` work, which runs on the ``ActionQueue`` worker. Trait changes and
every render happen under ``lock``, so two threads never render at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any as AnyType
from typing import Callable

from traitlets import Any, Dict, HasTraits, Tuple, Unicode

from ..errors import MachineStateError, UnknownActionError, VcpuExitedError, VcpuNotAllowedError
from ..vstate.protocol import VcpuState
from . import updater
from .absent import absent_summary
from .actions import ActionOutcome, ActionQueue, CallOutcome
from .journal import Journal

log = logging.getLogger("kvmlab.lab")

REFRESH_HZ = 4.0  # the clock of what changes continuously (read at every wait)
HISTORY = 20  # saved states / dumps kept per vCPU (for diffs)
MESSAGES = 200  # messages kept

#: action name -> (what the machine does, past tense for the message)
ACTIONS: dict[str, tuple[Callable, str]] = {
    "start": (lambda m, v: m.start(), "started"),
    "pause": (lambda m, v: m.pause(v), "paused"),
    "resume": (lambda m, v: m.resume(v), "resumed"),
    "stop": (lambda m, v: m.stop(), "stopped"),
    "save_state": (lambda m, v: m.save_state(v), "state saved"),
    "dump_cpu_config": (lambda m, v: m.dump_cpu_config(v), "CPU config dumped"),
    # the mailbox's vector, as its doorbell would raise it (the guest programs the vector)
    "raise_irq": (lambda m, v: m.mailbox.raise_irq(vcpu=v), "mailbox interrupt raised"),
}


@dataclass(frozen=True)
class Message:
    time: dt.datetime
    level: str  # "info", "warning" or "error"
    text: str
    #: the action this message reports, if it reports one
    outcome: ActionOutcome | None = None

    def __str__(self) -> str:
        return f"{self.time:%H:%M:%S} {self.text}"


def _listener(ref: "weakref.ref[LabSession]", signal: updater.Signal) -> Callable[[int | None], None]:
    """What the machine's vCPU threads hold of a session: its signal and a weak reference,
    so a dropped Lab lets its machine be finalized. A vCPU's transition only sets the signal
    (the vCPU thread returns at once); a phase change (never told on a vCPU thread) syncs."""

    def changed(vcpu: int | None) -> None:
        if vcpu is not None:
            signal.set()
            return
        session = ref()
        if session is not None:
            session._on_machine_event()

    return changed


class LabSession(HasTraits):
    #: the machine's phase: "created", "started", "stopped" or "closed"
    phase = Unicode("created")
    #: the machine's ``MachineExit`` once it stopped, else None
    exit = Any(None)
    #: the loaded program's name ("" while nothing is loaded)
    program = Unicode("")
    #: each vCPU's ``VcpuStatus``, by index; the last known ones after close
    states = Tuple()
    #: ``Message`` records, oldest first (the last ``MESSAGES``)
    messages = Tuple()
    #: vCPU (None: machine-wide) -> the actions requested and not finished yet
    pending = Dict()
    #: vCPU -> its saved states (``VcpuSnapshot``), oldest first (the last ``HISTORY``)
    snapshots = Dict()
    #: vCPU -> its dumped CPU configurations, oldest first
    configs = Dict()
    #: vCPU -> its ``FinalState`` once it exited or its thread ended (``Machine.final_state``)
    finals = Dict()
    #: "absent hardware: 12 port reads, ..." or "" (follows the clock)
    absent = Unicode("")
    #: the vector the guest programmed into the mailbox (its IRQ_VECTOR register), or None:
    #: what Raise IRQ raises, and whether it can (follows the clock: a guest write, no event)
    irq_vector = Any(None)
    #: the latest ``ActionOutcome`` or ``CallOutcome`` (every one notifies: records compare by identity)
    outcome = Any(None)

    _sessions: "weakref.WeakValueDictionary[int, LabSession]" = weakref.WeakValueDictionary()
    _sessions_lock = threading.Lock()

    @classmethod
    def of(cls, target) -> "LabSession":
        """The session of a ``Machine`` (or of a bare ``MetricsRegistry``, for a plot alone)."""
        machine = target if hasattr(target, "metrics") and hasattr(target, "states") else None
        registry = machine.metrics if machine is not None else target
        with cls._sessions_lock:
            session = cls._sessions.get(id(registry))
            if session is None or session.registry is not registry:
                session = cls(registry, machine)
                cls._sessions[id(registry)] = session
            elif machine is not None and session.machine is None:
                session._bind(machine)
            return session

    def __init__(self, registry, machine=None):
        super().__init__()
        self.registry = registry
        self.machine = None
        #: held while traits change and views render
        self.lock = threading.RLock()
        self._actions = ActionQueue()
        self._views: dict[int, Callable[[], None] | None] = {}  # token -> clock callback
        self._next_token = 0
        self._signal = updater.Signal()
        self._updater: threading.Thread | None = None
        self._next_tick = 0.0
        self._unwatch: Callable[[], None] | None = None
        self._journal = Journal()
        if machine is not None:
            self._bind(machine)
        self._count_absent()

    def _bind(self, machine) -> None:
        self.machine = machine
        self._unwatch = machine.watch(_listener(weakref.ref(self), self._signal))
        self.sync()

    # --- the model -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The machine is closed (or, for a plot alone, its metrics will never change again)."""
        if self.machine is not None:
            return self.machine.closed
        return self.registry.start_perf_ns is not None and (self.registry.sampler is None or not self.registry.sampler.running)

    @property
    def running(self) -> bool:
        """Whether the machine runs (as the traits say; a plot alone: whether its metrics
        still change). A machine that does not run makes no exits: its rates read zero."""
        if self.machine is not None:
            return self.phase == "started"
        return not self.closed

    def sync(self) -> None:
        """Reads the machine into the traits; observers run (once each) for what changed."""
        m = self.machine
        if m is None:
            return
        with self.lock, self.hold_trait_notifications():
            phase = m.phase
            try:  # after close, each vCPU's final status (the machine keeps them)
                self.states = tuple(m.states)
            except Exception:
                log.debug("could not read the vCPU states", exc_info=True)
            self.exit = m.exit
            self.program = m.program.program.name if m.program is not None else ""
            self.phase = phase
            self._collect_finals()
            for level, text in self._journal.news(phase, self.exit, self.states):
                self.post(level, text)

    def _collect_finals(self) -> None:
        """Keeps the final state of every vCPU that stopped for good (``Machine.final_state``),
        once: the inspector shows it for a vCPU that can no longer be paused and saved."""
        ended = (VcpuState.EXITED, VcpuState.FINISHED)
        new = {}
        for status in self.states:
            if status.state in ended and status.index not in self.finals:
                try:
                    new[status.index] = self.machine.final_state(status.index)
                except Exception:  # a vCPU that never ran has none
                    log.debug("no final state for vCPU %d", status.index, exc_info=True)
        if new:
            self.finals = {**self.finals, **new}

    def post(self, level: str, text: str, outcome: ActionOutcome | None = None) -> None:
        with self.lock:
            self.messages = (*self.messages[-(MESSAGES - 1) :], Message(dt.datetime.now(), level, text, outcome))

    def machine_actions(self) -> set[str]:
        """What the 'all vCPUs' row may do now (as the traits say)."""
        if self.machine is None:
            return set()
        phase = self.phase
        if phase == "created":
            return {"start"} if self.program else set()
        if phase != "started":
            return set()
        states = {s.state for s in self.states}
        allowed = {"stop"}
        if VcpuState.RUNNING in states:
            allowed.add("pause")
        if VcpuState.PAUSED in states:
            allowed.add("resume")
        return allowed

    def vcpu_actions(self, index: int) -> set[str]:
        """What one vCPU's row may do now: Firecracker's NotAllowed rules, minus no-ops
        (Pause only while running, Resume / Save state / Dump only while paused), and
        raising the mailbox's interrupt at a running or paused vCPU once the guest chose its
        vector, where the engine can inject one (a paused vCPU takes it when resumed)."""
        if self.machine is None or self.phase != "started" or self.pending.get(index) or self.pending.get(None):
            return set()
        if index >= len(self.states):
            return set()
        state = self.states[index].state
        can_raise = self.irq_vector is not None and self.machine.capabilities.interrupt_injection
        raising = {"raise_irq"} if can_raise else set()
        if state is VcpuState.RUNNING:
            return {"pause"} | raising
        if state is VcpuState.PAUSED:
            return {"resume", "save_state", "dump_cpu_config"} | raising
        return set()

    # --- actions -------------------------------------------------------------------------------

    def request(self, action: str, vcpu: int | None = None) -> None:
        """Queues ``action`` ("start", "pause", "resume", "stop", "save_state",
        "dump_cpu_config", "raise_irq") for one vCPU or all; returns at once. The outcome becomes an
        ``ActionOutcome`` (the ``outcome`` trait), a message and, for save_state /
        dump_cpu_config, an entry the inspector shows."""
        if action not in ACTIONS:
            raise UnknownActionError(f"no lab action {action!r}; valid actions: {', '.join(ACTIONS)}")
        if self.machine is None:
            raise MachineStateError("this view has metrics but no machine to control")
        if self.machine.closed:
            self.post("warning", "the machine is closed; create a new Machine to run again")
            return
        with self.lock:
            self.pending = {**self.pending, vcpu: [*self.pending.get(vcpu, []), action]}
        run, _ = ACTIONS[action]
        machine = self.machine
        self._actions.submit(
            lambda: run(machine, vcpu),
            lambda value, error: self._finished(ActionOutcome(action, vcpu, value, error)),
        )

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Waits for every requested action to finish (tests and notebook cells use it)."""
        return self._actions.wait_idle(timeout)

    def _finished(self, outcome: ActionOutcome) -> None:
        action, vcpu = outcome.action, outcome.vcpu
        who = "all vCPUs" if vcpu is None else f"vCPU {vcpu}"
        with self.lock, self.hold_trait_notifications():
            if outcome.ok:
                if action == "save_state":
                    self.snapshots = self._remembered(self.snapshots, vcpu, outcome.value)
                elif action == "dump_cpu_config":
                    self.configs = self._remembered(self.configs, vcpu, outcome.value)
                self.post("info", f"{who}: {ACTIONS[action][1]}", outcome)
            else:
                err = outcome.error
                level = "warning" if isinstance(err, (VcpuNotAllowedError, VcpuExitedError)) else "error"
                self.post(level, f"{who}: {action.replace('_', ' ')} failed: {err}", outcome)
            left = list(self.pending.get(vcpu, []))
            if action in left:
                left.remove(action)
            self.pending = {k: v for k, v in {**self.pending, vcpu: left}.items() if v}
            self.outcome = outcome

    def submit(self, label: str, work: Callable[[], AnyType], done: Callable[[AnyType, BaseException | None], None]) -> None:
        """Runs ``work`` on the action worker, then ``done(result, error)`` there too (for
        view-specific work such as an export); returns at once. The ``outcome`` trait then
        holds a ``CallOutcome`` named ``label``."""

        def finish(value, error) -> None:
            try:
                done(value, error)
            finally:
                with self.lock:
                    self.outcome = CallOutcome(label, value, error)

        self._actions.submit(work, finish)

    def add_snapshot(self, state) -> None:
        """Keeps a saved state taken outside the session (``machine.save_state``) for the inspector."""
        with self.lock:
            self.snapshots = self._remembered(self.snapshots, state.vcpu, state)

    def add_config(self, config) -> None:
        with self.lock:
            self.configs = self._remembered(self.configs, config.vcpu, config)

    @staticmethod
    def _remembered(history: dict, vcpu: int, item) -> dict:
        """A new dict (so the trait notifies) with ``item`` last in ``vcpu``'s history."""
        return {**history, vcpu: (*history.get(vcpu, ())[-(HISTORY - 1) :], item)}

    # --- views and the clock -------------------------------------------------------------------

    def attach(self, refresh: Callable[[], None] | None = None) -> int:
        """Registers a view; ``refresh`` (if given) runs on the clock, for what changes
        continuously. Starts the updater if the machine runs."""
        with self.lock:
            token = self._next_token
            self._next_token += 1
            self._views[token] = refresh
            self._ensure_updater()
        return token

    def detach(self, token: int) -> None:
        with self.lock:
            self._views.pop(token, None)
        self._signal.set(tick=True)  # the updater looks, and ends if it is not needed

    def poke(self) -> None:
        """Asks the clock for a frame now rather than at the next tick."""
        self._signal.set(tick=True)

    @property
    def refreshing(self) -> bool:
        """Whether the updater (change delivery and the clock) is running."""
        thread = self._updater
        return thread is not None and thread.is_alive()

    def refresh_now(self) -> None:
        """Renders now, on the calling thread: syncs the model (observers render what
        changed) and runs one clock frame. For notebook cells and tests that want the views
        current at once rather than a moment later."""
        self._tick()

    def _tick(self) -> None:
        """One clock frame: what has no event (the MP state, the absent-hardware counts, the
        views' clock callbacks)."""
        with self.lock:
            self.sync()
            self._count_absent()
            self._read_irq_vector()
            for refresh in [r for r in self._views.values() if r is not None]:
                try:
                    refresh()
                except Exception:
                    log.exception("a lab view failed to refresh")

    def _read_irq_vector(self) -> None:
        machine = self.machine
        if machine is not None and not machine.closed:
            self.irq_vector = machine.mailbox.irq_vector

    def _count_absent(self) -> None:
        try:
            self.absent = absent_summary(self.registry)
        except Exception:
            log.exception("could not count the absent-hardware accesses")

    def _live(self) -> bool:
        """Whether anything can still change: the machine runs (a plot alone: its metrics do)."""
        if self.machine is not None:
            return self.machine.phase == "started"
        return not self.closed

    def _ensure_updater(self) -> None:
        with self.lock:
            if self._views and self._live() and self._updater is None:
                self._next_tick = 0.0
                self._updater = updater.start(self, self._signal)

    def _on_machine_event(self) -> None:
        """Start, stop, close or load, told on the thread that made it (never a vCPU's)."""
        self.sync()
        self._ensure_updater()
        self._signal.set(tick=True)  # a stop's final frame

    def _update(self, changed: bool, tick: bool) -> float | None:
        """One pass of the updater: returns how long to wait for the next, or None to end
        (after a final frame when the machine stopped)."""
        if changed:
            self.sync()
        now = time.monotonic()
        ticked = tick or now >= self._next_tick
        if ticked:
            self._tick()
            self._next_tick = now + 1.0 / REFRESH_HZ
        with self.lock:
            if self._views and self._live():
                return max(self._next_tick - now, 0.0)
            if self._views and not ticked:  # the machine stopped: one final frame
                self._tick()
            self._updater = None
            return None

    def _updater_ended(self) -> None:
        with self.lock:
            self._updater = None

    def close(self) -> None:
        """Detaches every view, stops following the machine and ends the updater."""
        with self.lock:
            self._views.clear()
            thread = self._updater
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self._signal.set(tick=True)
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
