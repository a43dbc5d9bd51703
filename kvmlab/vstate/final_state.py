"""``FinalState``: what a vCPU looked like when it stopped for good, kept as plain data.

Why: a vCPU that has exited (HLT, a triple fault, an error) or finished answers no more
SaveState (Firecracker's rules: an exited vCPU only takes Finish), and after ``close()`` its
fds and the guest's memory are gone. Yet that is exactly when a student wants to look at it.
So the vCPU's own thread records its registers, the code at RIP and its last exit once, as it
stops (``Vcpu._capture_final``): no fd, no memory mapping, nothing but ints, dicts and bytes,
readable for as long as anyone holds it (``Machine.final_state``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..guest.code import GuestCode
    from .cpu_state import VcpuSnapshot
    from .exit_record import ExitRecord

#: trace rows a final state keeps (the exits that led up to the end)
TRACE_TAIL = 16


@dataclass(frozen=True)
class FinalState:
    """A vCPU's last state. ``exit_code``/``reason``: why it stopped (None: it did not exit
    by itself; the machine stopped it, with Finish). ``snapshot`` is None (``problem`` says
    why) if the engine could not read the registers then."""

    vcpu: int
    exit_code: int | None
    reason: str | None
    snapshot: "VcpuSnapshot | None"
    #: the bytes at RIP (``kvmlab.guest.code.GuestCode``), None where nothing could read them
    code: "GuestCode | None"
    #: the last exit the kvm_run page held (KVM's reason and fields), None before any run
    last_exit: "ExitRecord | None"
    #: the last ``TRACE_TAIL`` rows of the exit trace (``{"kind", "address", ...}``) when tracing
    trace: tuple[dict, ...] = ()
    problem: str | None = None
    taken_at: float = field(default_factory=time.time)

    @property
    def exited(self) -> bool:
        """Whether the vCPU stopped by itself (an exit code), rather than being finished."""
        return self.exit_code is not None

    def __str__(self) -> str:
        how = f"exited: {self.reason}, exit code {self.exit_code}" if self.exited else "finished (stopped by the machine)"
        rip = f", RIP {self.snapshot.rip:#x}" if self.snapshot is not None else ""
        return f"vCPU {self.vcpu} {how}{rip}"
