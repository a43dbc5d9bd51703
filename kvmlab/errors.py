"""Exception classes. Every message says what was wrong and what to do about it.

They live in one small module (imported by every layer) so that a notebook can catch
``kvmlab.KvmlabError`` for anything kvmlab raises on purpose.
"""

from __future__ import annotations

import errno
import os


class KvmlabError(Exception):
    """Base class of every error kvmlab raises on purpose."""


class ConfigError(KvmlabError, ValueError):
    """A machine, memory or program parameter is out of range."""


class GuestMemoryError(KvmlabError, ValueError):
    """A guest physical address range is not (entirely) RAM."""


class DeviceOverlapError(KvmlabError, ValueError):
    """A device window overlaps RAM or another device."""


class AssemblyError(KvmlabError, ValueError):
    """The assembler rejected a program; ``line`` is 1-based in the program's own text."""

    def __init__(self, message: str, *, line: int | None = None, text: str | None = None, program: str | None = None):
        where = f"{program}: " if program else ""
        at = f"line {line}: " if line is not None else ""
        quoted = f"\n    {text.strip()}" if text else ""
        super().__init__(f"{where}{at}{message}{quoted}")
        self.message = message
        self.line = line
        self.text = text
        self.program = program


class EngineUnavailableError(ConfigError):
    """The chosen engine cannot run here; the message says why and what to install."""


class EngineCapabilityError(ConfigError):
    """The engine running this machine cannot do what was asked (its ``Capabilities`` say
    so); the message names the capability and what to use instead."""


class BenchmarkError(KvmlabError, RuntimeError):
    """A benchmark could not measure: its reference cannot be built, or its guest failed."""


class KickUnavailableError(KvmlabError, RuntimeError):
    """The vCPU kick signal handler cannot be installed (not on the main thread)."""


class VcpuError(KvmlabError):
    """Base of errors about a vCPU (mirrors Firecracker's ``VcpuError``)."""


class FaultyKvmExit(VcpuError):
    """KVM reported an exit that means the vCPU cannot go on (Firecracker's ``FaultyKvmExit``)."""


class UnhandledKvmExit(VcpuError):
    """An exit reason this VMM does not handle (Firecracker's ``UnhandledKvmExit``)."""

    def __str__(self) -> str:
        return f"Unexpected kvm exit received: {self.args[0]}"


class UndeliverableVector(VcpuError):
    """The guest's interrupt table (the IDT; the IVT in real mode) cannot deliver ``vector``:
    the entry is beyond the table's limit, not present, not a gate, or not in memory. A CPU
    would raise ``fault`` instead (``x86.Vector``: #GP, #NP or #PF, with ``error_code``, and
    ``cr2`` for a #PF), and with no handler for that either it ends in a triple fault. The
    message names the vector, the IDTR and what to set up (``kvmlab.guest.idt`` writes it)."""

    def __init__(self, message: str, *, vector: int, fault: int, error_code: int = 0, cr2: int | None = None):
        super().__init__(message)
        self.vector = vector
        self.fault = fault
        self.error_code = error_code
        self.cr2 = cr2

    def __reduce__(self):
        return (_rebuild_undeliverable, (self.args[0], self.vector, self.fault, self.error_code, self.cr2))


def _rebuild_undeliverable(message, vector, fault, error_code, cr2):
    return UndeliverableVector(message, vector=vector, fault=fault, error_code=error_code, cr2=cr2)


class VcpuResponseError(VcpuError):
    """Saving state or dumping the CPU configuration failed on the vCPU thread."""


class VcpuFinishedError(VcpuError):
    """An event was sent to a vCPU whose thread has finished; nothing can answer it."""


class VcpuTimeoutError(VcpuError, TimeoutError):
    """A vCPU did not answer in time. The kernel never hangs: the wait gave up instead."""


class VcpuNotAllowedError(VcpuError):
    """The vCPU answered NotAllowed (e.g. save state while running)."""


class VcpuExitedError(VcpuError):
    """The vCPU has exited (halted, shut down or failed) and can no longer do what was asked."""


class NotFoundError(KvmlabError, KeyError):
    """A name or index that is not there (a metric, a vCPU, a CPUID leaf, a lab action).
    A ``KeyError`` too, for callers that look things up; its text is the message itself,
    not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownMetricError(NotFoundError):
    """No metric of that name in this registry; the message lists the valid ones."""


class UnknownVcpuError(NotFoundError):
    """No vCPU of that index in this machine; the message lists the valid ones."""


class UnknownCpuidLeafError(NotFoundError):
    """The CPUID leaf / subleaf is not in a vCPU's saved CPUID."""


class UnknownActionError(NotFoundError):
    """No lab action of that name; the message lists the valid ones."""


class KvmUnavailableError(KvmlabError, RuntimeError):
    """``/dev/kvm`` cannot be used here; the message says why and what to do."""


class KvmIoctlError(KvmlabError, OSError):
    """An ioctl on a KVM file descriptor failed; carries ``errno`` and the ioctl's name.
    An ``OSError`` too, so callers that test ``err.errno`` (EINTR, EAGAIN, ...) still work."""

    def __init__(self, err: int, ioctl_name: str, what: str = ""):
        detail = f" ({what})" if what else ""
        super().__init__(err, f"{ioctl_name} failed: {os.strerror(err)} [{errno.errorcode.get(err, err)}]{detail}")
        self.ioctl_name = ioctl_name
        self.what = what

    def __reduce__(self):
        # OSError's own would call __init__(errno, strerror): rebuild from our own arguments.
        return (type(self), (self.errno, self.ioctl_name, self.what))


class FdClosedError(KvmlabError, ValueError):
    """A KVM handle (``Kvm``, ``VmFd``, ``VcpuFd``, ``KvmStats``) was used after ``close()``.
    Raised instead of an ioctl on fd -1, or on whatever file has since been given the old
    number. A ``ValueError`` too, as Python's own "I/O operation on closed file" is."""

    def __init__(self, what: str):
        super().__init__(f"{what} is closed: its file descriptor was released, so nothing can be asked of it; create a new one")
        self.what = what

    def __reduce__(self):
        return (type(self), (self.what,))


class InterruptRefusedError(KvmlabError, RuntimeError):
    """The guest's interrupt controller would not take an interrupt kvmlab sent it (a LAPIC the
    guest has not software-enabled refuses an MSI); the message says what the guest must do."""


class GuestRequestedExit(KvmlabError):
    """Raised by a device write to end the whole machine with ``code`` (the debug-exit port).

    It is control flow, not a failure: exit handling turns it into a machine-wide stop.
    """

    def __init__(self, code: int, reason: str):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class MachineStateError(KvmlabError, RuntimeError):
    """The machine is not in a state that allows the call (closed, not loaded, already started)."""


class MachineTimeoutError(KvmlabError, TimeoutError):
    """``Machine.wait`` ran out of time; the machine is still running."""


class ExportWriteError(KvmlabError, OSError):
    """Writing an export failed part-way (disk full, quota, I/O error); nothing was left
    under the final name. An ``OSError`` too, so callers that catch ``OSError`` still work;
    ``errno``, ``strerror`` and ``filename`` are those of the failure."""

    def __init__(self, path, cause: OSError):
        reason = cause.strerror or str(cause)
        super().__init__(cause.errno, reason, str(path))
        hint = _WRITE_HINTS.get(cause.errno, "check the folder and try again")
        number = f" (errno {cause.errno})" if cause.errno is not None else ""
        self.message = f"cannot write {path}: {reason}{number}; {hint}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # OSError's own would call __init__(errno, strerror, filename): rebuild from the cause
        # instead, so the error survives pickling (multiprocessing, Dask) and copy.
        return (type(self), (self.filename, OSError(self.errno, self.strerror)))


#: what to do about the usual reasons a write fails part-way (errno -> advice)
_WRITE_HINTS = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space (over quota) or choose another folder",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: "choose a folder this user may write",
    errno.EPERM: "choose a folder this user may write",
    errno.EIO: "the disk reported an I/O error; check it or choose another folder",
}
