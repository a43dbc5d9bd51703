"""Engine-neutral records of a vCPU's state (``SaveState``) and CPU configuration
(``DumpCpuConfig``): plain ints, dicts and bytes, so views, diffs and DataFrames need no ctypes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import UnknownCpuidLeafError


@dataclass(frozen=True)
class CpuidEntry:
    """One CPUID leaf/subleaf as the vCPU reports it (``kvm_cpuid_entry2`` without padding)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


@dataclass
class CpuConfiguration:
    """The CPUID entries and MSR values set on a vCPU (Firecracker's ``CpuConfiguration``)."""

    vcpu: int
    cpuid: list[CpuidEntry]
    msrs: dict[int, int]
    #: MSR indices that were listed but could not be read on this vCPU (KVM refused them).
    unreadable_msrs: list[int] = field(default_factory=list)

    def cpuid_leaf(self, function: int, index: int = 0) -> CpuidEntry:
        for entry in self.cpuid:
            if entry.function == function and entry.index == index:
                return entry
        raise UnknownCpuidLeafError(f"CPUID leaf {function:#x}.{index} is not set on vCPU {self.vcpu}")

    def vendor(self) -> str:
        leaf = self.cpuid_leaf(0)
        return b"".join(r.to_bytes(4, "little") for r in (leaf.ebx, leaf.edx, leaf.ecx)).decode("ascii", "replace")


@dataclass
class VcpuSnapshot:
    """A paused vCPU's full architectural state (what Firecracker's ``VcpuState`` holds).

    ``lapic`` is None when the machine has no in-kernel irqchip (KVM keeps no LAPIC then);
    ``xsave`` is the raw XSAVE area.
    """

    vcpu: int
    regs: dict[str, int]
    sregs: dict
    fpu: dict
    msrs: dict[int, int]
    lapic: bytes | None
    xsave: bytes | None
    xcrs: dict[int, int]
    vcpu_events: dict
    mp_state: int
    debug_regs: dict
    taken_at: float = field(default_factory=time.time)

    @property
    def rip(self) -> int:
        return self.regs["rip"]
