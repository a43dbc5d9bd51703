"""Choosing an engine: ``auto`` runs on KVM where it works and on the emulator where it does not.

``KVMLAB_ENGINE=kvm|emulated`` makes ``auto`` choose that engine (CI runs the notebooks a
second time with ``KVMLAB_ENGINE=emulated``, and ``KVMLAB_KVM_PATH`` can hide KVM entirely).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..environment import kvm_flavour
from ..errors import ConfigError
from ..kvm import KvmUnavailableError, kvm_unavailable_reason
from .emulated import INSTALL, EmulatedEngine, EngineUnavailableError, unicorn
from .kvm import KvmEngine

CHOICES = ("auto", "kvm", "emulated")

NOTES = {
    "kvm": "real KVM ({flavour}): every exit is a KVM_RUN returning to kvmlab; KVM's own statistics (kvm.*) are shown",
    "emulated": (
        "the emulated engine (Unicorn, a CPU emulator): the same vCPU threads, events, exits, metrics and widgets, "
        "but guest code runs in the emulator, exits are handled inside its run, and KVM's own statistics (kvm.*) do not exist"
    ),
}


@dataclass(frozen=True)
class EngineStatus:
    name: str
    works: bool
    why: str


def engine_statuses(kvm_path: str | None = None) -> list[EngineStatus]:
    """Which engines work here, and why the others do not (for ``kvmlab info``)."""
    reason = kvm_unavailable_reason(kvm_path)
    statuses = [EngineStatus("kvm", reason is None, reason or kvm_flavour())]
    if unicorn is None:
        statuses.append(EngineStatus("emulated", False, f"the unicorn package is not installed ({INSTALL})"))
    else:
        statuses.append(EngineStatus("emulated", True, f"Unicorn {unicorn.__version__}"))
    return statuses


def resolve(choice: str = "auto", kvm_path: str | None = None) -> str:
    """The engine ``choice`` means here ("kvm" or "emulated"), or an error saying why none."""
    if choice not in CHOICES:
        raise ConfigError(f"engine={choice!r}: choose one of {', '.join(CHOICES)}")
    if choice != "auto":
        return choice
    forced = os.environ.get("KVMLAB_ENGINE")
    if forced:
        if forced not in ("kvm", "emulated"):
            raise ConfigError(f"KVMLAB_ENGINE={forced!r}: choose kvm or emulated (or unset it)")
        return forced
    reason = kvm_unavailable_reason(kvm_path)
    if reason is None:
        return "kvm"
    if unicorn is not None:
        return "emulated"
    raise EngineUnavailableError(f"no engine can run here: KVM: {reason} The emulated engine needs unicorn: {INSTALL}")


def open_engine(choice: str = "auto", kvm_path: str | None = None):
    name = resolve(choice, kvm_path)
    if name == "kvm":
        try:
            return KvmEngine(kvm_path)
        except KvmUnavailableError as err:
            raise EngineUnavailableError(
                f"engine='kvm': {err} Without KVM, engine='emulated' (or 'auto') runs the same machines on a CPU emulator: {INSTALL}"
            ) from None
    return EmulatedEngine()


def note(name: str) -> str:
    return NOTES[name].format(flavour=kvm_flavour())
