"""VM state: guest memory, buses, the VM and the vCPU state machine (Firecracker's ``vstate``)."""

from .bus import Bus, BusDevice, GuestRequestedExit
from .cpu_state import CpuConfiguration, CpuidEntry, VcpuSnapshot
from .exits import DebugExitInfo, Emulation, ExitCode, Peripherals, Stopped, handle_kvm_exit
from .memory import GuestMemory
from .protocol import (
    DumpedCpuConfig,
    Error,
    Exited,
    NotAllowed,
    Paused,
    Resumed,
    SavedState,
    VcpuEvent,
    VcpuResponse,
    VcpuState,
    VcpuStatus,
)
from .vcpu import Vcpu, VcpuHandle, request_all
from .vm import Vm

__all__ = [
    "Bus", "BusDevice", "CpuConfiguration", "CpuidEntry", "DebugExitInfo", "DumpedCpuConfig",
    "Emulation", "Error", "ExitCode", "Exited", "GuestMemory", "GuestRequestedExit", "NotAllowed",
    "Paused", "Peripherals", "Resumed", "SavedState", "Stopped", "Vcpu", "VcpuEvent", "VcpuHandle",
    "VcpuResponse", "VcpuSnapshot", "VcpuState", "VcpuStatus", "Vm", "handle_kvm_exit", "request_all",
]  # fmt: skip
