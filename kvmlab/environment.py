"""What this machine can run: one line for a notebook's first cell, facts for ``kvmlab info``."""

from __future__ import annotations

import os

from .kvm import kvm_unavailable_reason


def kvm_flavour() -> str:
    if os.path.exists("/sys/module/kvm_pvm"):
        return "kvm_pvm, a nested paravirtualized KVM: guest code is emulated in the kernel, exits are real"
    for module, what in (("kvm_intel", "Intel VT-x"), ("kvm_amd", "AMD-V")):
        if os.path.exists(f"/sys/module/{module}"):
            return f"{module} ({what})"
    return "unknown KVM module"


def summary() -> str:
    """One line: which engine runs kvmlab machines here, or why none does."""
    reason = kvm_unavailable_reason()
    if reason is None:
        return f"kvmlab runs on real KVM here ({kvm_flavour()})."
    return (
        f"KVM is missing here, so the cells that start a Machine will fail: {reason} "
        "(On Binder there is no /dev/kvm; run the notebooks on a Linux machine with KVM.)"
    )
