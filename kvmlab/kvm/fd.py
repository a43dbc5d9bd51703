"""``OwnedFd``: the one owner of every file descriptor kvmlab's KVM bindings open.

Why from birth: rust-vmm's ``kvm-ioctls`` wraps the number an fd-creating ioctl returns in a
``File`` before the next step that can fail, so an error in that step drops (closes) it. In
Python the same gap is an exception between the ioctl and the wrap (an mmap that fails, a
header read that fails, a follow-up ioctl that fails), and the bare int in a dead frame is
never closed. So each fd-creating call here hands its number straight to a subclass of
``OwnedFd``, whose construction closes it again if any later step of that construction fails
(``closed_on_error``).

Why one class: ``Kvm``, ``VmFd``, ``VcpuFd`` and ``KvmStats`` used to write their own
``close``/``__del__`` pairs, and one of them (``VcpuFd``'s, on a failed mmap) leaked. Here
``close`` is idempotent, a ``weakref.finalize`` closes an fd its owner forgot (and never twice:
calling the finalizer detaches it), and after ``close`` the ``fd`` raises ``FdClosedError``
instead of handing out -1, or worse a number the kernel has since given to another file.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from typing import TypeVar

from ..errors import FdClosedError

_Owner = TypeVar("_Owner", bound="OwnedFd")

#: what ``fd`` holds once closed (never a valid descriptor)
CLOSED = -1


class OwnedFd:
    """Owns one fd from the moment it is passed in: closes it on ``close()``, on leaving a
    ``with`` block, or when the owner is garbage-collected, whichever comes first.

    Subclasses that hold more than the fd (a mapping, views of it) release it in
    ``_release``, which ``close`` calls before closing the fd; it must cope with a
    construction that stopped half-way, since a failed construction closes too.
    """

    def __init__(self, fd: int, what: str):
        """``what`` names the handle in errors and reprs ("VmFd", "VcpuFd of vCPU 1")."""
        self._fd = fd
        self._what = what
        # os.close and the number, not a bound method: the finalizer must not keep self alive.
        self._finalizer = weakref.finalize(self, os.close, fd)
        # Not at interpreter exit: finalizers run newest first there, so this would close a vCPU's
        # fd under the Machine whose (older) finalizer still tears it down in order. The OS closes
        # every fd when the process ends anyway.
        self._finalizer.atexit = False

    @property
    def fd(self) -> int:
        """The raw descriptor, for ioctls. Hot loops read it once and keep the int."""
        fd = self._fd
        if fd < 0:
            raise FdClosedError(self._what)
        return fd

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Releases what the subclass holds, then closes the fd. A second call does nothing."""
        if self._fd < 0:
            return
        self._fd = CLOSED
        try:
            self._release()
        finally:
            self._finalizer()  # closes the fd now and detaches: the GC will not close it again

    def _release(self) -> None:
        """What a subclass holds besides the fd (called once, by ``close``)."""

    @contextlib.contextmanager
    def closed_on_error(self: _Owner) -> Iterator[_Owner]:
        """Closes this owner if the block raises: the rest of a construction, or a caller's
        follow-up step that must not leave a half-made object holding an fd."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    def __enter__(self: _Owner) -> _Owner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<{self._what} {state}>"
