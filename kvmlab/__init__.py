"""kvmlab: run real KVM virtual CPUs from a notebook and see what a VMM does.

The public names notebooks use: ``Machine``, ``programs``, the error classes.
"""

from .errors import (
    AssemblyError,
    ConfigError,
    DeviceOverlapError,
    EngineCapabilityError,
    EngineUnavailableError,
    ExportWriteError,
    GuestMemoryError,
    InterruptRefusedError,
    KvmIoctlError,
    KvmlabError,
    KvmUnavailableError,
    MachineStateError,
    MachineTimeoutError,
    NotFoundError,
    UnknownMetricError,
    UnknownVcpuError,
    VcpuError,
    VcpuExitedError,
    VcpuFinishedError,
    VcpuNotAllowedError,
    VcpuTimeoutError,
)
from .engines.select import summary as engine_summary
from .guest import programs
from .machine import Machine
from .vmm import MachineExit

__version__ = "0.1.0"

__all__ = [
    "AssemblyError",
    "ConfigError",
    "DeviceOverlapError",
    "EngineCapabilityError",
    "EngineUnavailableError",
    "ExportWriteError",
    "GuestMemoryError",
    "InterruptRefusedError",
    "KvmIoctlError",
    "KvmUnavailableError",
    "KvmlabError",
    "Machine",
    "MachineExit",
    "MachineStateError",
    "MachineTimeoutError",
    "NotFoundError",
    "UnknownMetricError",
    "UnknownVcpuError",
    "VcpuError",
    "VcpuExitedError",
    "VcpuFinishedError",
    "VcpuNotAllowedError",
    "VcpuTimeoutError",
    "engine_summary",
    "programs",
]
