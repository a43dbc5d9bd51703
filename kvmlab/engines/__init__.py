"""Engines: where "run the guest until the next exit" comes from.

``kvm`` runs on ``/dev/kvm``; ``emulated`` runs on Unicorn where KVM is missing (an optional
extra, ``kvmlab[emulate]``). Each implements the small ``VmBackend``/``VcpuBackend`` protocol
of ``kvmlab.vstate.vm``; the state machine, exit handling, buses and metrics are shared.
"""

from .emulated import EmulatedEngine, EngineUnavailableError
from .kvm import KvmEngine
from .select import CHOICES, EngineStatus, engine_statuses, note, open_engine, resolve

__all__ = ["CHOICES", "EmulatedEngine", "EngineStatus", "EngineUnavailableError", "KvmEngine", "engine_statuses", "note", "open_engine", "resolve"]
