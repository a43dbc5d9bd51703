"""``LabSession``: the state every view of one machine shares, and the one thread that
refreshes them.

Views (``kvmlab.widgets``) hold no logic: they ask the session what is allowed, hand it
clicks, and render what it knows. One session per machine (``LabSession.of``), so a second
``Lab`` on the same machine shows the same messages, the same saved states and the same
pending actions instead of fighting the first one for the vCPUs.

Threads: clicks arrive on the kernel's main thread and only ``request()`` work, which runs on
the ``ActionQueue`` worker. A single refresher thread calls every view's ``refresh`` a few
times a second; it ends when the last view detaches or the machine is closed (after one
final refresh), so nothing keeps running behind a closed notebook.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

from ..errors import MachineStateError, UnknownActionError, VcpuExitedError, VcpuNotAllowedError
from ..vstate.protocol import VcpuState
from .actions import ActionQueue, Outcome

log = logging.getLogger("kvmlab.lab")

REFRESH_HZ = 4.0
HISTORY = 20  # saved states / dumps kept per vCPU (for diffs)

#: action name -> (what the machine does, past tense for the message)
ACTIONS: dict[str, tuple[Callable, str]] = {
    "start": (lambda m, v: m.start(), "started"),
    "pause": (lambda m, v: m.pause(v), "paused"),
    "resume": (lambda m, v: m.resume(v), "resumed"),
    "stop": (lambda m, v: m.stop(), "stopped"),
    "save_state": (lambda m, v: m.save_state(v), "state saved"),
    "dump_cpu_config": (lambda m, v: m.dump_cpu_config(v), "CPU config dumped"),
}


@dataclass(frozen=True)
class Message:
    time: dt.datetime
    level: str  # "info", "warning" or "error"
    text: str

    def __str__(self) -> str:
        return f"{self.time:%H:%M:%S} {self.text}"


class LabSession:
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
                session.machine = machine
            return session

    def __init__(self, registry, machine=None):
        self.registry = registry
        self.machine = machine
        self.messages: collections.deque[Message] = collections.deque(maxlen=200)
        self.message_version = 0
        self.snapshots: dict[int, list] = collections.defaultdict(list)
        self.configs: dict[int, list] = collections.defaultdict(list)
        self.inspect_version = 0
        #: vCPU (or None for machine-wide) -> actions submitted and not finished yet
        self.pending: dict[int | None, list[str]] = collections.defaultdict(list)
        self._actions = ActionQueue(self._finished)
        self._refreshers: dict[int, Callable[[], None]] = {}
        self._next_token = 0
        self._lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._wake = threading.Event()

    # --- state ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The machine is closed (or, for a plot alone, its metrics will never change again)."""
        if self.machine is not None:
            return self.machine.closed
        return self.registry.start_perf_ns is not None and (self.registry.sampler is None or not self.registry.sampler.running)

    def post(self, level: str, text: str) -> None:
        with self._lock:
            self.messages.append(Message(dt.datetime.now(), level, text))
            self.message_version += 1

    def machine_actions(self) -> set[str]:
        """What the 'all vCPUs' row may do now."""
        m = self.machine
        if m is None or m.closed:
            return set()
        phase = m.phase
        if phase == "created":
            return {"start"} if m.program is not None else set()
        if phase != "started":
            return set()
        states = {s.state for s in m.states}
        allowed = {"stop"}
        if VcpuState.RUNNING in states:
            allowed.add("pause")
        if VcpuState.PAUSED in states:
            allowed.add("resume")
        return allowed

    def vcpu_actions(self, index: int) -> set[str]:
        """What one vCPU's row may do now: Firecracker's NotAllowed rules, minus no-ops
        (Pause only while running, Resume / Save state / Dump only while paused)."""
        m = self.machine
        if m is None or m.closed or m.phase != "started" or self.pending.get(index) or self.pending.get(None):
            return set()
        state = m.states[index].state
        if state is VcpuState.RUNNING:
            return {"pause"}
        if state is VcpuState.PAUSED:
            return {"resume", "save_state", "dump_cpu_config"}
        return set()

    # --- actions -------------------------------------------------------------------------------

    def request(self, action: str, vcpu: int | None = None) -> None:
        """Queues ``action`` ("start", "pause", "resume", "stop", "save_state",
        "dump_cpu_config") for one vCPU or all; returns at once. The outcome becomes a message
        (and, for save_state / dump_cpu_config, an entry the inspector shows)."""
        if action not in ACTIONS:
            raise UnknownActionError(f"no lab action {action!r}; valid actions: {', '.join(ACTIONS)}")
        if self.machine is None:
            raise MachineStateError("this view has metrics but no machine to control")
        if self.machine.closed:
            self.post("warning", "the machine is closed; create a new Machine to run again")
            return
        with self._lock:
            self.pending[vcpu].append(action)
        run, _ = ACTIONS[action]
        machine = self.machine
        self._actions.submit(f"{action}:{vcpu}", lambda: (action, vcpu, run(machine, vcpu)))
        self._wake.set()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Waits for every requested action to finish (tests and notebook cells use it)."""
        return self._actions.wait_idle(timeout)

    def _finished(self, outcome: Outcome) -> None:
        action, _, raw = outcome.label.partition(":")
        if action == "call":
            self._wake.set()
            return
        vcpu = None if raw == "None" else int(raw)
        who = "all vCPUs" if vcpu is None else f"vCPU {vcpu}"
        if outcome.error is None:
            _, done = ACTIONS[action]
            result = outcome.value[2]
            with self._lock:
                if action == "save_state":
                    self._remember(self.snapshots[vcpu], result)
                elif action == "dump_cpu_config":
                    self._remember(self.configs[vcpu], result)
            self.post("info", f"{who}: {done}")
        else:
            err = outcome.error
            level = "warning" if isinstance(err, (VcpuNotAllowedError, VcpuExitedError)) else "error"
            self.post(level, f"{who}: {action.replace('_', ' ')} failed: {err}")
        with self._lock:
            pending = self.pending[vcpu]
            if action in pending:
                pending.remove(action)
        self._wake.set()

    def submit(self, label: str, work: Callable[[], object], done: Callable[[object, BaseException | None], None]) -> None:
        """Runs ``work`` on the action worker, then ``done(result, error)`` there too (for
        view-specific work such as an export); returns at once."""

        def run():
            try:
                result = work()
            except Exception as err:
                done(None, err)
            else:
                done(result, None)

        self._actions.submit(f"call:{label}", run)

    def add_snapshot(self, state) -> None:
        """Keeps a saved state taken outside the session (``machine.save_state``) for the inspector."""
        with self._lock:
            self._remember(self.snapshots[state.vcpu], state)

    def add_config(self, config) -> None:
        with self._lock:
            self._remember(self.configs[config.vcpu], config)

    def _remember(self, history: list, item) -> None:
        history.append(item)
        del history[:-HISTORY]
        self.inspect_version += 1

    # --- refreshing ----------------------------------------------------------------------------

    def attach(self, refresh: Callable[[], None]) -> int:
        """Registers a view's refresh; starts the refresher thread if needed."""
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._refreshers[token] = refresh
            if self._ticker is None or not self._ticker.is_alive():
                self._ticker = threading.Thread(target=self._tick, name="kvmlab lab refresher", daemon=True)
                self._ticker.start()
        return token

    def detach(self, token: int) -> None:
        with self._lock:
            self._refreshers.pop(token, None)
        self._wake.set()

    def poke(self) -> None:
        """Asks the refresher for a refresh now rather than at the next tick."""
        self._wake.set()

    @property
    def refreshing(self) -> bool:
        return self._ticker is not None and self._ticker.is_alive()

    def refresh_now(self) -> None:
        """Runs every view's refresh on the calling thread (never two refreshes at once:
        the refresher thread and a notebook cell may both ask)."""
        with self._lock:
            refreshers = list(self._refreshers.values())
        with self._refresh_lock:
            for refresh in refreshers:
                try:
                    refresh()
                except Exception:
                    log.exception("a lab view failed to refresh")

    def _tick(self) -> None:
        period = 1.0 / REFRESH_HZ
        while True:
            self._wake.wait(period)
            self._wake.clear()
            with self._lock:
                if not self._refreshers:
                    return
            finished = self.closed
            self.refresh_now()
            if finished:  # that was the final frame
                return

    def close(self) -> None:
        """Stops the refresher and the action worker (views call it when the last one closes)."""
        with self._lock:
            self._refreshers.clear()
        self._wake.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(2.0)
