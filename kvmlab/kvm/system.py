"""``Kvm``: the ``/dev/kvm`` system file descriptor and its ioctls."""

from __future__ import annotations

import ctypes
import errno
import os

from ..errors import KvmUnavailableError  # noqa: F401  (re-exported: kvmlab.kvm.KvmUnavailableError)
from . import constants as c
from . import structs as s
from .fd import OwnedFd
from .syscall import KvmIoctlError, ioctl
from .vm import VmFd

DEFAULT_KVM_PATH = "/dev/kvm"


def kvm_path() -> str:
    """Where kvmlab opens KVM: ``$KVMLAB_KVM_PATH``, else /dev/kvm (the variable lets a test
    or a demo hide KVM to see what a machine without it does)."""
    return os.environ.get("KVMLAB_KVM_PATH") or DEFAULT_KVM_PATH


def kvm_flavour() -> str:
    """Which KVM this is, from the loaded module (for ``kvmlab info`` and the engine's note)."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return "kvm_pvm, a nested paravirtualized KVM: guest code is emulated in the kernel, exits are real"
    for module, what in (("kvm_intel", "Intel VT-x"), ("kvm_amd", "AMD-V")):
        if os.path.exists(f"/sys/module/{module}"):
            return f"{module} ({what})"
    return "unknown KVM module"


def kvm_unavailable_reason(path: str | None = None) -> str | None:
    """Why KVM cannot be opened here, or None when it can. Used by ``kvmlab info`` and the engines."""
    path = path or kvm_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return _explain_open_error(path, err)
    os.close(fd)
    return None


def _explain_open_error(path: str, err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return (
            f"{path} does not exist: this machine has no KVM (no virtualization extensions, "
            "the kvm module is not loaded, or this is a container without the device). "
            "Load kvm_intel/kvm_amd, pass the device into the container, or use engine='emulated'."
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{path} exists but is not permitted for this user ({os.strerror(err.errno)}). "
            "Add the user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again) "
            "or run as root."
        )
    return f"{path} could not be opened: {os.strerror(err.errno)}"


class Kvm(OwnedFd):
    """The KVM system handle. One thin method per system ioctl; no policy."""

    def __init__(self, path: str | None = None):
        path = path or kvm_path()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise KvmUnavailableError(_explain_open_error(path, err)) from err
        super().__init__(fd, f"Kvm ({path})")
        with self.closed_on_error():
            version = self.get_api_version()
            if version != c.KVM_API_VERSION:
                raise KvmUnavailableError(f"{path} speaks KVM API version {version}; kvmlab needs {c.KVM_API_VERSION}")

    # --- ioctls ---------------------------------------------------------------------------

    def get_api_version(self) -> int:
        return ioctl(self.fd, c.KVM_GET_API_VERSION, 0, name="KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """0 when the capability is absent, else its (often informative) value."""
        return ioctl(self.fd, c.KVM_CHECK_EXTENSION, int(cap), name="KVM_CHECK_EXTENSION")

    def get_vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, c.KVM_GET_VCPU_MMAP_SIZE, 0, name="KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self) -> VmFd:
        """A new VM, owned by the ``VmFd`` from the moment the ioctl returns."""
        return VmFd(ioctl(self.fd, c.KVM_CREATE_VM, 0, name="KVM_CREATE_VM"))

    def get_supported_cpuid(self, capacity: int = c.KVM_MAX_CPUID_ENTRIES) -> list[s.kvm_cpuid_entry2]:
        cpuid = s.cpuid2_with(capacity)
        ioctl(self.fd, c.KVM_GET_SUPPORTED_CPUID, ctypes.byref(cpuid), name="KVM_GET_SUPPORTED_CPUID")
        return [s.copy_struct(e) for e in cpuid.entries[: cpuid.nent]]

    def get_msr_index_list(self) -> list[int]:
        return self._msr_list(c.KVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST")

    def _msr_list(self, request: int, name: str) -> list[int]:
        # The kernel answers E2BIG with the count it needs; ask twice rather than guess a size.
        probe = s.msr_list_with(0)
        try:
            ioctl(self.fd, request, ctypes.byref(probe), name=name)
            return []
        except KvmIoctlError as err:
            if err.errno != errno.E2BIG:
                raise
        full = s.msr_list_with(probe.nmsrs)
        ioctl(self.fd, request, ctypes.byref(full), name=name)
        return list(full.indices[: full.nmsrs])

    # --- derived facts --------------------------------------------------------------------

    def max_vcpus(self) -> int:
        """KVM's limit on vCPUs per VM (``KVM_CAP_MAX_VCPUS``, else ``NR_VCPUS``, else 4 as the API says)."""
        return self.check_extension(c.Cap.MAX_VCPUS) or self.check_extension(c.Cap.NR_VCPUS) or 4

    def recommended_vcpus(self) -> int:
        return self.check_extension(c.Cap.NR_VCPUS) or 4
