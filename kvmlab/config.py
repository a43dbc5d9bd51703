"""``MachineConfig``: what a user asked a machine to be, checked once, before anything is built.

``Machine(...)`` turns its arguments into one of these; every limit is checked here and
nowhere else above the engines, so a bad argument costs no engine, no VM and no memory, and
each rule has one sentence to explain it. The one limit that depends on the engine (its
maximum number of vCPUs) is checked by ``check_engine`` against the engine's ``Capabilities``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checks import is_finite_number, is_whole_number
from .engines.cpuid import CpuidMask, validate_mask
from .errors import ConfigError
from .metrics.registry import DEFAULT_HISTORY_S, DEFAULT_SAMPLE_HZ
from .metrics.trace import DEFAULT_CAPACITY as DEFAULT_TRACE_CAPACITY
from .vstate.layout import MIB
from .vstate.memory import validate_memory_size

if TYPE_CHECKING:
    from .engines.base import Capabilities

#: the most samples a second the sampler takes (a sample reads every counter of every vCPU)
MAX_SAMPLE_HZ = 1000


def check_timeout(name: str, value, *, zero: bool = False) -> float:
    """A timeout is a finite number of seconds, positive (or also 0 where ``zero``), and at
    most ``threading.TIMEOUT_MAX`` (the longest wait the platform's locks can do; a longer
    one raises OverflowError deep inside a wait). Returns it as a float."""
    if not is_finite_number(value) or value < 0 or (value == 0 and not zero) or value > threading.TIMEOUT_MAX:
        least = "0 or more" if zero else "more than 0"
        raise ConfigError(f"{name}={value!r}: need a finite number of seconds, {least}, at most {threading.TIMEOUT_MAX:.0f}")
    return float(value)


@dataclass(frozen=True)
class MachineConfig:
    """A machine's configuration: ``Machine``'s keyword arguments, validated and normalised.

    ``irqchip=None`` means "decide at load/boot": off for the small programs (their HLT must
    reach kvmlab), on for a kernel booted on an engine that has one (its APs need the LAPICs).
    """

    vcpus: int = 1
    memory_mib: float = 2
    engine: str = "auto"
    irqchip: bool | None = None
    cpuid_mask: CpuidMask | None = field(default=None, hash=False)
    timeout: float = 5.0
    sample_hz: float = DEFAULT_SAMPLE_HZ
    history_s: float = DEFAULT_HISTORY_S
    trace: bool = False
    trace_capacity: int = DEFAULT_TRACE_CAPACITY
    kvm_path: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if not is_whole_number(self.vcpus) or self.vcpus < 1:
            raise ConfigError(f"vcpus={self.vcpus!r}: need a whole number of at least 1")
        if not is_finite_number(self.memory_mib) or self.memory_mib <= 0:
            raise ConfigError(f"memory_mib={self.memory_mib!r}: need a positive, finite number of MiB")
        if self.memory_mib * MIB != int(self.memory_mib * MIB):
            raise ConfigError(f"memory_mib={self.memory_mib!r} is not a whole number of bytes, let alone 4 KiB pages")
        validate_memory_size(self.memory)
        if not isinstance(self.engine, str):
            raise ConfigError(f"engine={self.engine!r}: need the name of an engine, or 'auto'")
        object.__setattr__(self, "timeout", check_timeout("timeout", self.timeout))
        hz = self.sample_hz
        if not is_finite_number(hz) or not 0 <= hz <= MAX_SAMPLE_HZ:
            raise ConfigError(f"sample_hz={hz!r}: need 0 (no sampler) to {MAX_SAMPLE_HZ} samples a second")
        if not is_finite_number(self.history_s) or self.history_s <= 0 or (hz and self.history_s * hz < 1):
            raise ConfigError(f"history_s={self.history_s!r}: need a finite number of seconds with room for at least one sample at {hz} Hz")
        if self.trace not in (True, False):  # 0 and 1 too, as before this was checked
            raise ConfigError(f"trace={self.trace!r}: True or False")
        object.__setattr__(self, "trace", bool(self.trace))
        if not is_whole_number(self.trace_capacity) or self.trace_capacity < 1:
            raise ConfigError(f"trace_capacity={self.trace_capacity!r}: need a positive number of rows")
        if self.irqchip not in (None, True, False):
            raise ConfigError(f"irqchip={self.irqchip!r}: True, False, or None (off for programs, on for boot())")
        if not isinstance(self.strict, bool):
            raise ConfigError(f"strict={self.strict!r}: True or False")
        if self.kvm_path is not None:
            if not isinstance(self.kvm_path, (str, os.PathLike)):
                raise ConfigError(f"kvm_path={self.kvm_path!r}: need a path, or None for $KVMLAB_KVM_PATH or /dev/kvm")
            object.__setattr__(self, "kvm_path", os.fspath(self.kvm_path))
        object.__setattr__(self, "cpuid_mask", validate_mask(self.cpuid_mask))

    @property
    def memory(self) -> int:
        """The guest's RAM in bytes."""
        return int(self.memory_mib * MIB)

    def check_engine(self, capabilities: "Capabilities") -> None:
        """The limits that depend on the engine: its maximum number of vCPUs."""
        if self.vcpus > capabilities.max_vcpus:
            raise ConfigError(
                f"vcpus={self.vcpus!r}: need a whole number from 1 to {capabilities.max_vcpus} ({capabilities.label}'s maximum)"
            )
