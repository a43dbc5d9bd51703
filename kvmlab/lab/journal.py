"""``Journal``: what the Lab's log says about what the machine did by itself.

Why: the log used to hold only the answers to the Lab's own clicks, so a vCPU that
triple-faulted, a machine stopped or closed from a notebook cell, left no line in it: the
student saw a state change (or none) and no reason. The journal compares what the session
reads from the machine with what it has already told, and says each thing once: every vCPU
exit with its reason and code, the machine's stop with its exit code, its close.
"""

from __future__ import annotations

from typing import Sequence

from ..vstate.protocol import VcpuStatus

#: (level, text) for the session's log: "info", "warning" or "error"
News = tuple[str, str]


def _level(code: int) -> str:
    return "error" if code else "info"


class Journal:
    """Remembers what it told (one line per vCPU exit, one per stop, one per close)."""

    def __init__(self) -> None:
        self._exits_told: set[int] = set()
        self._stop_told = False
        self._close_told = False

    def news(self, phase: str, exit_, states: Sequence[VcpuStatus]) -> list[News]:
        """The lines to log now: exits first (they come before the stop they cause), then
        the stop, then the close. ``exit_`` is the machine's ``MachineExit`` or None."""
        out: list[News] = []
        for status in states:
            if status.exit_code is None or status.index in self._exits_told:
                continue
            self._exits_told.add(status.index)
            out.append((_level(status.exit_code), f"vCPU {status.index} exited: {status.reason} — exit code {status.exit_code}"))
        if phase in ("stopped", "closed") and exit_ is not None and not self._stop_told:
            self._stop_told = True
            out.append((_level(int(exit_)), f"machine stopped: {exit_.reason} — exit code {int(exit_)}"))
        if phase == "closed" and not self._close_told:
            self._close_told = True
            out.append(("info", "machine closed: its fds and memory are released; the vCPUs' final states stay readable"))
        return out
