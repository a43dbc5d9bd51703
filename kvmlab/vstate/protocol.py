"""The messages between a controller and a vCPU thread: Firecracker's ``VcpuEvent`` and
``VcpuResponse``, plus the vCPU's observable state.

One addition to Firecracker's protocol: every event carries a sequence number and every response names the
event it answers (``seq``), or None when the vCPU sent it unasked (the ``Exited`` it sends when
it stops by itself). A controller can then tell an answer from a late answer to an earlier,
timed-out request, so no response is ever taken for the wrong question.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cpu_state import CpuConfiguration, VcpuSnapshot


class VcpuEvent(enum.Enum):
    """What a controller can ask of a vCPU thread."""

    FINISH = "Finish"  # the thread ends
    PAUSE = "Pause"
    RESUME = "Resume"
    SAVE_STATE = "SaveState"  # only while paused
    DUMP_CPU_CONFIG = "DumpCpuConfig"  # only while paused


class VcpuState(enum.Enum):
    """Where a vCPU's state machine is. ``CREATED``: its thread has not started yet."""

    CREATED = "Created"
    PAUSED = "Paused"
    RUNNING = "Running"
    EXITED = "Exited"
    FINISHED = "Finished"


#: Which events each state accepts, for views that enable buttons (Firecracker's NotAllowed rules:
#: SaveState and DumpCpuConfig are refused while running; an exited vCPU only takes Finish).
ALLOWED_EVENTS: dict[VcpuState, frozenset[VcpuEvent]] = {
    VcpuState.CREATED: frozenset(),
    VcpuState.PAUSED: frozenset(VcpuEvent),
    VcpuState.RUNNING: frozenset({VcpuEvent.PAUSE, VcpuEvent.RESUME, VcpuEvent.FINISH}),
    VcpuState.EXITED: frozenset({VcpuEvent.FINISH}),
    VcpuState.FINISHED: frozenset(),
}


@dataclass(frozen=True, repr=False)
class VcpuResponse:
    """Base of the responses. ``seq`` is the answered event's number, None if unasked."""

    seq: int | None = field(default=None, kw_only=True, compare=False)

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        shown = [repr(getattr(self, f.name)) for f in fields(self) if f.name != "seq" and f.repr]
        if self.seq is not None:
            shown.append(f"seq={self.seq}")
        return f"{self.name}({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class Paused(VcpuResponse):
    pass


@dataclass(frozen=True, repr=False)
class Resumed(VcpuResponse):
    pass


@dataclass(frozen=True, repr=False)
class Exited(VcpuResponse):
    """The vCPU has stopped with ``code`` (``reason`` says why) and only accepts Finish."""

    code: int
    reason: str = ""


@dataclass(frozen=True, repr=False)
class NotAllowed(VcpuResponse):
    reason: str


@dataclass(frozen=True, repr=False)
class SavedState(VcpuResponse):
    state: "VcpuSnapshot" = field(repr=False)


@dataclass(frozen=True, repr=False)
class DumpedCpuConfig(VcpuResponse):
    config: "CpuConfiguration" = field(repr=False)


@dataclass(frozen=True, repr=False)
class Error(VcpuResponse):
    error: Any


@dataclass(frozen=True, repr=False)
class ThreadEnded(VcpuResponse):
    """The vCPU thread's last message, posted as it ends (after Finish, a disconnect or a
    crash): a controller waiting for an answer learns at once that none will come, without
    polling the thread (Firecracker's channel reports the same as a disconnection)."""


#: How a status reads for the MP states worth mentioning (RUNNABLE is the normal case), in
#: KVM's own terms (Documentation/virt/kvm/api.rst, KVM_GET_MP_STATE): an AP that has not yet
#: received an INIT is UNINITIALIZED; INIT_RECEIVED is the one ready for (waiting for) a SIPI;
#: SIPI_RECEIVED has just received one; HALTED executed HLT and waits for an interrupt. With the
#: in-kernel LAPIC an AP goes UNINITIALIZED -> INIT_RECEIVED -> RUNNABLE (KVM handles the SIPI
#: inside KVM_RUN), and INIT_RECEIVED lasts as long as the guest waits between INIT and SIPI.
MP_STATE_NOTES = {
    "UNINITIALIZED": "waiting for INIT",
    "INIT_RECEIVED": "waiting for SIPI",
    "SIPI_RECEIVED": "SIPI received",
    "HALTED": "halted",
}


@dataclass(frozen=True)
class VcpuStatus:
    """A vCPU's state as a controller sees it; prints as ``Paused`` or ``Exited(0: HLT)``."""

    index: int
    state: VcpuState
    exit_code: int | None = None
    reason: str | None = None
    #: KVM's MP state name (``RUNNABLE``, ``UNINITIALIZED`` = waiting for INIT, ``HALTED``...)
    #: when the machine has an in-kernel irqchip, else None
    mp_state: str | None = None

    @property
    def allowed(self) -> frozenset[VcpuEvent]:
        return ALLOWED_EVENTS[self.state]

    def __str__(self) -> str:
        if self.state in (VcpuState.EXITED, VcpuState.FINISHED) and self.exit_code is not None:
            why = f": {self.reason}" if self.reason else ""
            return f"{self.state.value}({self.exit_code}{why})"
        note = MP_STATE_NOTES.get(self.mp_state) if self.state in (VcpuState.RUNNING, VcpuState.PAUSED) else None
        return f"{self.state.value} ({note})" if note else self.state.value

    __repr__ = __str__
