"""What this machine can run: one line for a notebook's first cell, facts for ``kvmlab info``."""

from __future__ import annotations

import os



def kvm_flavour() -> str:
    if os.path.exists("/sys/module/kvm_pvm"):
        return "kvm_pvm, a nested paravirtualized KVM: guest code is emulated in the kernel, exits are real"
    for module, what in (("kvm_intel", "Intel VT-x"), ("kvm_amd", "AMD-V")):
        if os.path.exists(f"/sys/module/{module}"):
            return f"{module} ({what})"
    return "unknown KVM module"


def summary() -> str:
    """One line for a notebook's first cell: which engine ``Machine(engine="auto")`` uses here
    and what that means."""
    from .engines import EngineUnavailableError, note, resolve, why_not_preferred

    try:
        name = resolve("auto")
    except EngineUnavailableError as err:
        return f"No engine can run kvmlab machines here: {err}"
    why = why_not_preferred(name)
    return f"Machines run on {note(name)}{f' ({why})' if why else ''}."
