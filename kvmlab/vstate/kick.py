"""The kick: how a controller gets a vCPU thread out of ``KVM_RUN`` (Firecracker's
``register_kick_signal_handler`` + ``VcpuHandle::send_event``).

1. The controller sets ``kvm_run.immediate_exit = 1``. A KVM_RUN entered after this returns
   EINTR at once, so a kick that lands while the thread is in Python is not lost.
2. It sends SIGRTMIN to the vCPU's thread (``pthread_kill``). A KVM_RUN in progress returns
   EINTR. The signal needs a handler that does nothing: the default action kills the process
   and SIG_IGN would not interrupt the ioctl. Python only lets the main thread install signal
   handlers, so ``install_kick_handler`` runs there once, before any vCPU thread starts.
3. The vCPU clears ``immediate_exit`` and reads its event queue.
"""

from __future__ import annotations

import signal
import threading

from ..errors import KickUnavailableError

KICK_SIGNAL = signal.SIGRTMIN + 0  # Firecracker's sigrtmin() + VCPU_RTSIG_OFFSET


def _on_kick(signum, frame) -> None:
    """Nothing to do: the point of the signal is to make KVM_RUN return EINTR."""


def install_kick_handler() -> None:
    """Installs the no-op handler for ``KICK_SIGNAL``; idempotent."""
    current = signal.getsignal(KICK_SIGNAL)
    if current is _on_kick:
        return
    if threading.current_thread() is not threading.main_thread():
        raise KickUnavailableError(
            "the vCPU kick signal handler (SIGRTMIN) must be installed from the main thread, and this is "
            f"{threading.current_thread().name!r}; create the first Machine on the main thread "
            "(or call kvmlab.vstate.kick.install_kick_handler() there once)"
        )
    signal.signal(KICK_SIGNAL, _on_kick)


def signal_thread(thread_ident: int) -> None:
    signal.pthread_kill(thread_ident, KICK_SIGNAL)
