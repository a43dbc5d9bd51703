"""``UnhandledWarnings``: what one machine does about accesses no device claims, and which
of them it has logged.

Absent hardware is normal: firmware and kernels probe for devices and expect a PC's answer
(all ones, writes dropped), so by default each distinct access is one *info* line, which
``kvmlab boot --verbose`` shows and nothing else prints (a warning would reach stderr, and
QEMU-style test runners count any stderr line without "warning" as a VMM failure). A
``strict`` machine stops the vCPU instead (``Notice.STRICT``), with ``strict_reason`` as its
exit reason: a stop, not an exception, because the emulated engine handles exits inside
Unicorn's hooks, and an exception raised through a hook that must return the value read
is reported by ctypes on stderr ("Exception ignored on converting result").

A guest chooses the addresses it touches, so what remembers them must be bounded and must die
with the machine: a module-level set grew with every address a sweeping guest touched and
outlived the machine, so a second machine never warned about the same address again. Each
``Vm`` owns one of these, shared by its vCPUs; past ``WARNED_LIMIT`` distinct accesses it
tells the caller, once, to say that it stops logging them. The exits are still counted in
full by the metrics (``absent_*``, the per-address tables): only the log goes quiet.
This module decides; the exit handling writes the log lines.
"""

from __future__ import annotations

import enum
import threading

#: The kinds of access exit handling reports ("port in", "port out", "MMIO read", "MMIO
#: write") that read: a PC answers them with all ones; the others are writes, dropped.
READS = ("port in", "MMIO read")

#: Distinct (kind, address) pairs a machine logs. Each is one log line: a few hundred already
#: show a guest probing or sweeping, and beyond that the log is only noise.
WARNED_LIMIT = 256


class Notice(enum.Enum):
    """What to do about an unhandled access."""

    FIRST = "first access of this kind at this address: log it"
    REPEAT = "logged before, or no longer logging: nothing"
    LIMIT = "the limit is reached just now: say no more lines follow"
    STRICT = "the machine is strict: stop the vCPU with an error"


class UnhandledWarnings:
    """The (kind, address) pairs one machine has logged, at most ``limit`` of them; with
    ``strict``, none: every unhandled access is an error."""

    __slots__ = ("limit", "strict", "_warned", "_lock", "quiet")

    def __init__(self, limit: int = WARNED_LIMIT, *, strict: bool = False):
        self.limit = limit
        self.strict = strict
        self._warned: set[tuple[str, int]] = set()
        self._lock = threading.Lock()  # the vCPU threads share it; taken only for a new pair
        #: True once the limit is reached: no pair is logged any more
        self.quiet = False

    def __len__(self) -> int:
        return len(self._warned)

    def note(self, kind: str, address: int) -> Notice:
        """An unhandled ``kind`` access at ``address``: whether to log it, or stop."""
        if self.strict:
            return Notice.STRICT
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


def describe(kind: str, address: int, size: int) -> str:
    """An access in words, as the log line and a strict stop say it."""
    port = kind.startswith("port")
    direction = f" ({'read' if kind in READS else 'write'})" if port else ""
    return f"{kind}{direction} of {size} byte{'s' if size != 1 else ''} at {'port ' if port else ''}{address:#x}"


def outcome(kind: str) -> str:
    """What a PC, and kvmlab without strict, makes of an access that reaches no device."""
    return "it reads all ones" if kind in READS else "the write is dropped"


def strict_reason(kind: str, address: int, size: int) -> str:
    """Why a strict machine's vCPU stopped (its exit reason; the machine adds "vCPU n: ")."""
    return (f"{describe(kind, address, size)} reached no device, and the machine is strict "
            f"(Machine(strict=True)); without strict {outcome(kind)}, as on a PC")  # fmt: skip
