"""Thin ctypes bindings for the KVM API: structs in ``structs``, numbers in ``constants``,
and one method per ioctl on ``Kvm`` (system), ``VmFd`` and ``VcpuFd``. No threads, no policy.

Every fd-creating ioctl returns its owner (``Kvm.create_vm`` a ``VmFd``, ``VmFd.create_vcpu``
a ``VcpuFd``, ``VcpuFd.get_stats_fd`` a ``KvmStats``), each an ``OwnedFd`` (``fd``); so is the
``EventFd`` that ``VmFd.irqfd`` takes."""

from ..errors import FdClosedError
from .constants import Cap, ExitReason, InternalErrorSuberror, MpState, SystemEvent
from .eventfd import EventFd
from .fd import OwnedFd
from .stats import KvmStats, StatDescriptor
from .syscall import KvmIoctlError
from .system import DEFAULT_KVM_PATH, Kvm, KvmUnavailableError, kvm_unavailable_reason
from .vcpu import VcpuFd
from .vm import VmFd

__all__ = [
    "Cap",
    "DEFAULT_KVM_PATH",
    "EventFd",
    "ExitReason",
    "FdClosedError",
    "InternalErrorSuberror",
    "Kvm",
    "KvmIoctlError",
    "KvmStats",
    "KvmUnavailableError",
    "MpState",
    "OwnedFd",
    "StatDescriptor",
    "SystemEvent",
    "VcpuFd",
    "VmFd",
    "kvm_unavailable_reason",
]
