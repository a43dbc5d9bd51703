"""``ExitRecord``: what a kvm_run page says about the last exit, in words (for teaching).

Reads the same page exit handling reads (KVM's own, or the emulated engine's copy of its
layout), through the decoders of ``kvmlab.kvm.run``, so a notebook can step a vCPU exit by exit and print what KVM reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..kvm import run as r
from ..kvm.constants import ExitReason
from . import exits as ex


@dataclass(frozen=True)
class ExitRecord:
    """One exit: KVM's reason and the fields of ``kvm_run`` that belong to it."""

    vcpu: int
    reason: str
    fields: dict = field(default_factory=dict)
    #: what kvmlab did with it: "handled", "interrupted", "stopped: HLT", an error, ...
    outcome: str = ""

    def __str__(self) -> str:
        f = self.fields
        if self.reason == "MMIO":
            what = "write" if f["is_write"] else "read"
            return f"vCPU {self.vcpu}: KVM_EXIT_MMIO {what} {f['len']} bytes at {f['phys_addr']:#x}, data {f['data']:#x}"
        if self.reason == "IO":
            what = "out" if f["direction"] == r.IO_OUT else "in"
            data = f["data"]
            if isinstance(data, bytes) and what == "out":
                shown = repr(data)
            else:
                shown = f"{int.from_bytes(data, 'little') if isinstance(data, bytes) else data:#x}"
            return f"vCPU {self.vcpu}: KVM_EXIT_IO {what} port {f['port']:#x}, {f['size']} byte(s) x {f['count']}, data {shown}"
        extra = ", ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}" for k, v in f.items())
        return f"vCPU {self.vcpu}: KVM_EXIT_{self.reason}" + (f" ({extra})" if extra else "")


def read_exit(p: ex.Peripherals, outcome: str = "") -> ExitRecord:
    """Decodes the exit waiting in (or just handled from) ``p``'s kvm_run page."""
    u8, u16, u32, u64 = p.run_u8, p.run_u16, p.run_u32, p.run_u64
    reason = u32[r.EXIT_REASON_U32]
    name = ExitReason.name_of(reason)
    fields: dict = {}
    if reason == r.EXIT_MMIO:
        fields = r.decode_mmio(u8, u32, u64)
    elif reason == r.EXIT_IO:
        fields = r.decode_io(u8, u16, u32, u64)
    elif reason == r.EXIT_INTERNAL_ERROR:
        fields = {"detail": ex.describe_internal_error(p)}
    elif reason == r.EXIT_FAIL_ENTRY:
        fields = {"hardware_entry_failure_reason": u64[r.FAIL_ENTRY_REASON_U64], "cpu": u32[r.FAIL_ENTRY_CPU_U32]}
    elif reason == r.EXIT_SYSTEM_EVENT:
        fields = {"type": u32[r.SYSTEM_EVENT_TYPE_U32]}
    elif reason == r.EXIT_DEBUG:
        fields = {"exception": u32[r.DEBUG_EXCEPTION_U32], "pc": u64[r.DEBUG_PC_U64]}
    return ExitRecord(p.index, name, fields, outcome)


def outcome_of(result) -> str:
    if result is ex.Emulation.HANDLED:
        return "handled"
    if isinstance(result, ex.Stopped):
        return f"stopped: {result.reason}"
    if isinstance(result, ex.DebugExitInfo):
        return "debug event"
    return getattr(result, "value", str(result))
