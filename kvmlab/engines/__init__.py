"""Engines: where "run the guest until the next exit" comes from.

``kvm`` runs on ``/dev/kvm``. Each engine implements the small ``VmBackend``/``VcpuBackend``
protocol of ``kvmlab.vstate.vm``; the state machine, exit handling, buses and metrics are
shared by all of them.
"""

from .kvm import KvmEngine

__all__ = ["KvmEngine"]
