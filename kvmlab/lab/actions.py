"""``ActionQueue``: where a click's work runs, so the notebook kernel never waits for a vCPU.

Clicks arrive on the kernel's main thread (ipykernel handles comm messages from the browser
there); a handler that called ``machine.pause``
there would block the kernel until the vCPU answered. Instead handlers ``submit`` a callable
and return; a worker thread runs the callables in order and reports each outcome.

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


@dataclass
class Outcome:
    label: str
    value: Any = None
    error: BaseException | None = None


class ActionQueue:
    def __init__(self, on_done: Callable[[Outcome], None], name: str = "kvmlab lab actions"):
        self._on_done = on_done
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._state = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, label: str, action: Callable[[], Any]) -> None:
        with self._state:
            self._pending += 1
            self._queue.put((label, action))
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
                label, action = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._state:
                    if self._queue.empty():  # nothing arrived between the timeout and now
                        self._thread = None
                        return
                continue
            try:
                outcome = Outcome(label, action())
            except Exception as err:  # reported as a message by the session, never a traceback
                log.debug("lab action %s failed", label, exc_info=True)
                outcome = Outcome(label, error=err)
            try:
                self._on_done(outcome)
            except Exception:
                log.exception("lab action callback failed")
            with self._state:
                self._pending -= 1
                self._state.notify_all()
