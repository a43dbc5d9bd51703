"""Engines: where "run the guest until the next exit" comes from.

``kvm`` runs on ``/dev/kvm``; ``emulated`` runs on Unicorn where KVM is missing (an optional
extra, ``kvmlab[emulate]``). Each implements the abstract ``Engine``/``VmBackend``/
``VcpuBackend`` of ``kvmlab.engines.base`` and declares what it can do in a ``Capabilities``
record; the state machine, exit handling, buses and metrics above are shared.
"""

from ..errors import EngineCapabilityError, EngineUnavailableError
from .base import Capabilities, Engine, VcpuBackend, VmBackend
from .emulated import EmulatedEngine
from .kvm import KvmEngine
from .select import CHOICES, ENGINES, engine_class, note, open_engine, resolve, why_not_preferred

__all__ = [
    "CHOICES", "ENGINES", "Capabilities", "EmulatedEngine", "Engine", "EngineCapabilityError",
    "EngineUnavailableError", "KvmEngine", "VcpuBackend", "VmBackend", "engine_class", "note",
    "open_engine", "resolve", "why_not_preferred",
]  # fmt: skip
