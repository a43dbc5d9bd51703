"""The session's one thread, and the signal the vCPU threads wake it with.

Why a thread at all, when views follow traits: a vCPU thread must not run view code (it
would render HTML and send comm messages between two guest exits, and a view that asked the
vCPU anything there would wait on itself). So a vCPU's transition only ``Signal.set()``s,
a lock held for a few instructions, and the updater turns it into trait changes at once.
The same thread keeps the clock of what changes continuously (the plot's rates, the console
text, the absent-hardware counts, KVM's MP state), which has no event to follow.

It lives only while it has something to follow (the session decides: views attached and a
machine running) and it holds its session weakly between passes, so neither an idle machine
nor a dropped Lab keeps it, or anything, alive.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import LabSession

log = logging.getLogger("kvmlab.lab")


class Signal:
    """"Something changed" (``changed``) or "draw now" (``tick``), for the updater to take."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._changed = False
        self._tick = False

    def set(self, *, tick: bool = False) -> None:
        """Never blocks for longer than the updater takes to read two flags: safe on a vCPU thread."""
        with self._cond:
            if tick:
                self._tick = True
            else:
                self._changed = True
            self._cond.notify()

    def take(self, timeout: float) -> tuple[bool, bool]:
        """Waits up to ``timeout`` s for a signal; returns (changed, tick) and clears both."""
        with self._cond:
            self._cond.wait_for(lambda: self._changed or self._tick, max(timeout, 0.0))
            taken = self._changed, self._tick
            self._changed = self._tick = False
            return taken


def start(session: "LabSession", signal: Signal) -> threading.Thread:
    thread = threading.Thread(target=_run, args=(weakref.ref(session), signal), name="kvmlab lab updater", daemon=True)
    thread.start()
    return thread


def _run(ref: "weakref.ref[LabSession]", signal: Signal) -> None:
    changed, tick = True, True  # the first pass syncs and draws
    while True:
        session = ref()
        if session is None:
            return
        try:
            timeout = session._update(changed, tick)
        except BaseException:  # a bug must not leave a session that thinks it has an updater
            log.exception("the lab updater failed")
            session._updater_ended()
            return
        del session  # nothing held while waiting
        if timeout is None:
            return
        changed, tick = signal.take(timeout)
