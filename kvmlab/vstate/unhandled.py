"""``UnhandledWarnings``: which accesses no device claims one machine has warned about.

A guest chooses the addresses it touches, so what remembers them must be bounded and must die
with the machine: a module-level set grew with every address a sweeping guest touched and
outlived the machine, so a second machine never warned about the same address again. Each
``Vm`` owns one of these, shared by its vCPUs; past ``WARNED_LIMIT`` distinct accesses it
tells the caller, once, to say that it stops warning. The exits are still counted in full by
the metrics (``unhandled_accesses``, the per-address tables): only the log goes quiet.
This module decides; the exit handling writes the log lines.
"""

from __future__ import annotations

import enum
import threading

#: Distinct (kind, address) pairs a machine warns about. Each is one log line: a few hundred
#: already show a guest probing or sweeping, and beyond that the log is only noise.
WARNED_LIMIT = 256


class Notice(enum.Enum):
    """What to log for an unhandled access."""

    FIRST = "first access of this kind at this address: warn"
    REPEAT = "warned before, or no longer warning: nothing"
    LIMIT = "the limit is reached just now: say no more warnings follow"


class UnhandledWarnings:
    """The (kind, address) pairs one machine has warned about, at most ``limit`` of them."""

    __slots__ = ("limit", "_warned", "_lock", "quiet")

    def __init__(self, limit: int = WARNED_LIMIT):
        self.limit = limit
        self._warned: set[tuple[str, int]] = set()
        self._lock = threading.Lock()  # the vCPU threads share it; taken only for a new pair
        #: True once the limit is reached: no pair is warned about any more
        self.quiet = False

    def __len__(self) -> int:
        return len(self._warned)

    def note(self, kind: str, address: int) -> Notice:
        """An unhandled ``kind`` access at ``address``: whether to warn about it."""
        key = (kind, address)
        if self.quiet or key in self._warned:
            return Notice.REPEAT
        with self._lock:
            if self.quiet or key in self._warned:
                return Notice.REPEAT
            if len(self._warned) < self.limit:
                self._warned.add(key)
                return Notice.FIRST
            self.quiet = True
            return Notice.LIMIT
