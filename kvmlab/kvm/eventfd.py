"""``EventFd``: an eventfd(2) counter owned from birth, the file KVM_IRQFD takes.

An eventfd is a 64-bit counter in the kernel: a write adds to it, a read returns it and resets
it to 0. KVM hangs a wait-queue entry on one handed to ``KVM_IRQFD`` and injects the GSI when
anything is written, inside the writer's system call; and it writes the resample eventfd
itself when the guest acknowledges a level-triggered one. Owned like every other fd kvmlab's
bindings create (``OwnedFd``): closed on ``close()``, on error, or by the collector.
"""

from __future__ import annotations

import os

from .fd import OwnedFd


class EventFd(OwnedFd):
    """A non-blocking, close-on-exec eventfd."""

    def __init__(self, what: str = "eventfd"):
        super().__init__(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK), what)

    def write(self, value: int = 1) -> None:
        """Adds ``value`` to the counter (wakes whoever waits on it: KVM, a poll)."""
        os.eventfd_write(self.fd, value)

    def read(self) -> int:
        """The counter, reset to 0; 0 when nothing was written since the last read."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0
