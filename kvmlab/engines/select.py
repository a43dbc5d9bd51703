"""Choosing an engine: ``auto`` runs on the first engine that works here, in order of preference.

``ENGINES`` lists the engine classes, best first (KVM, then the emulator), as ``selectors``
lists its backends: ``DefaultSelector`` is the best one the platform has. Each engine says
itself whether it can run here (``unavailable_reason``), so nothing here knows what any of
them needs. ``KVMLAB_ENGINE=<name>`` makes ``auto`` choose that engine (CI runs the notebooks
a second time with ``KVMLAB_ENGINE=emulated``, and ``KVMLAB_KVM_PATH`` can hide KVM entirely).
"""

from __future__ import annotations

import os

from ..errors import ConfigError, EngineUnavailableError, KvmUnavailableError
from .base import Engine
from .emulated import EmulatedEngine
from .kvm import KvmEngine

#: the engines, best first
ENGINES: tuple[type[Engine], ...] = (KvmEngine, EmulatedEngine)
BY_NAME: dict[str, type[Engine]] = {engine.name: engine for engine in ENGINES}
CHOICES = ("auto", *BY_NAME)


def engine_class(name: str) -> type[Engine]:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"engine={name!r}: choose one of {', '.join(CHOICES)}") from None


def resolve(choice: str = "auto", kvm_path: str | None = None) -> str:
    """The engine ``choice`` means here (an engine's name), or an error saying why none."""
    if choice != "auto":
        return engine_class(choice).name
    forced = os.environ.get("KVMLAB_ENGINE")
    if forced:
        if forced not in BY_NAME:
            raise ConfigError(f"KVMLAB_ENGINE={forced!r}: choose one of {', '.join(BY_NAME)} (or unset it)")
        return forced
    reasons = []
    for engine in ENGINES:
        reason = engine.unavailable_reason(kvm_path)
        if reason is None:
            return engine.name
        reasons.append(f"{engine.label}: {reason}")
    raise EngineUnavailableError("no engine can run here: " + " ".join(_sentence(r) for r in reasons))


def _sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def open_engine(choice: str = "auto", kvm_path: str | None = None) -> Engine:
    """An open engine for ``choice``; if it cannot open, the error offers the others."""
    engine = engine_class(resolve(choice, kvm_path))
    try:
        return engine(kvm_path)
    except KvmUnavailableError as err:
        offers = "; ".join(f"engine={other.name!r} (or 'auto') {other.offer}" for other in ENGINES if other is not engine)
        raise EngineUnavailableError(f"engine={engine.name!r}: {err} Without {engine.label}, {offers}") from None


def why_not_preferred(name: str, kvm_path: str | None = None) -> str:
    """Why ``auto`` did not choose an engine better than ``name`` (for the notebooks' first line)."""
    if os.environ.get("KVMLAB_ENGINE"):
        return "KVMLAB_ENGINE=" + os.environ["KVMLAB_ENGINE"]
    for engine in ENGINES:
        if engine.name == name:
            return ""
        reason = engine.unavailable_reason(kvm_path)
        if reason:
            return f"{engine.label}: {reason}"
    return ""


def note(name: str) -> str:
    """One line on what engine ``name`` means for what a user sees."""
    return engine_class(name).note()


def summary() -> str:
    """One line for a notebook's first cell (``kvmlab.engine_summary()``): which engine
    ``Machine(engine="auto")`` uses here and what that means."""
    try:
        name = resolve("auto")
    except EngineUnavailableError as err:
        return f"No engine can run kvmlab machines here: {err}"
    why = why_not_preferred(name)
    return f"Machines run on {note(name)}{f' ({why})' if why else ''}."
