"""``ActionQueue``: where a click's work runs, so the notebook kernel never waits for a vCPU;
and the records of what came of it.

Clicks arrive on the kernel's main thread (ipykernel handles comm messages from the browser
there); a handler that called ``machine.pause``
there would block the kernel until the vCPU answered. Instead handlers ``submit`` a callable
and return; a worker thread runs the callables in order and hands each result (or error) to
the ``finish`` given with it.

An outcome is a record with fields, not a label to parse back: ``ActionOutcome`` for the
lab's own actions (what, on which vCPU, what it returned, what it raised) and
``CallOutcome`` for view-specific work (an export) submitted through the session.

The worker lives only while there is work: it ends after ``IDLE_EXIT`` seconds with nothing
to do and the next ``submit`` starts a new one. So no view, session or closed machine can
leave it running behind a notebook.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("kvmlab.lab")

IDLE_EXIT = 0.5

#: what a submitted job's ``finish`` is given: its result, or None and what it raised
Finish = Callable[[Any, "BaseException | None"], None]


@dataclass(frozen=True, eq=False)
class ActionOutcome:
    """What came of one lab action (``LabSession.request``). Compared by identity: each is
    an event (two pauses of vCPU 1 are two outcomes, and a trait holding the latest one
    notifies for each)."""

    action: str  # a name in ``kvmlab.lab.session.ACTIONS``
    vcpu: int | None  # None: machine-wide (all vCPUs)
    value: Any = None  # what the machine returned: a VcpuSnapshot, a CpuConfiguration, None...
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, eq=False)
class CallOutcome:
    """What came of view-specific work (``LabSession.submit``), named by its label; an
    event too, compared by identity."""

    label: str
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ActionQueue:
    def __init__(self, name: str = "kvmlab lab actions"):
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._state = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, work: Callable[[], Any], finish: Finish) -> None:
        """Queues ``work``; the worker runs it, then ``finish(result, None)`` or
        ``finish(None, error)``. Returns at once."""
        with self._state:
            self._pending += 1
            self._queue.put((work, finish))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted action has finished (False if ``timeout`` passed first)."""
        with self._state:
            return self._state.wait_for(lambda: self._pending == 0, timeout)

    def _work(self) -> None:
        while True:
            try:
                work, finish = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._state:
                    if self._queue.empty():  # nothing arrived between the timeout and now
                        self._thread = None
                        return
                continue
            try:
                result, error = work(), None
            except Exception as err:  # reported as a message by the session, never a traceback
                log.debug("lab work %r failed", work, exc_info=True)
                result, error = None, err
            try:
                finish(result, error)
            except Exception:
                log.exception("lab action callback failed")
            with self._state:
                self._pending -= 1
                self._state.notify_all()
