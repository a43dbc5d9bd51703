"""``ExitRecord``: what a kvm_run page says about the last exit, in words (for teaching).

Reads the same page exit handling reads (KVM's own, or the emulated engine's copy of its
layout), so a notebook can step a vCPU exit by exit and print what KVM reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
            what = "out" if f["direction"] == ex.IO_OUT else "in"
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
    reason = u32[ex.U32_EXIT_REASON]
    name = ExitReason.name_of(reason)
    fields: dict = {}
    if reason == ex.EXIT_MMIO:
        size = u32[ex.U32_MMIO_LEN]
        fields = {
            "phys_addr": u64[ex.U64_MMIO_PHYS_ADDR],
            "len": size,
            "is_write": u8[ex.U8_MMIO_IS_WRITE],
            "data": u64[ex.U64_MMIO_DATA] & ((1 << (8 * size)) - 1),
        }
    elif reason == ex.EXIT_IO:
        size, count, offset = u8[ex.U8_IO_SIZE], u32[ex.U32_IO_COUNT], u64[ex.U64_IO_DATA_OFFSET]
        raw = bytes(u8[offset : offset + size * count])
        fields = {
            "direction": u8[ex.U8_IO_DIRECTION],
            "size": size,
            "port": u16[ex.U16_IO_PORT],
            "count": count,
            "data_offset": offset,
            "data": raw if size == 1 else int.from_bytes(raw[:size], "little"),
        }
    elif reason == ex.EXIT_INTERNAL_ERROR:
        fields = {"detail": ex.describe_internal_error(p)}
    elif reason == ex.EXIT_FAIL_ENTRY:
        fields = {"hardware_entry_failure_reason": u64[ex.U64_FAIL_REASON], "cpu": u32[ex.U32_FAIL_CPU]}
    elif reason == ex.EXIT_SYSTEM_EVENT:
        fields = {"type": u32[ex.U32_EX_WORD0]}
    elif reason == ex.EXIT_DEBUG:
        fields = {"exception": u32[ex.U32_EX_WORD0], "pc": u64[ex.U64_EX_DATA]}
    return ExitRecord(p.index, name, fields, outcome)


def outcome_of(result) -> str:
    if result is ex.Emulation.HANDLED:
        return "handled"
    if isinstance(result, ex.Stopped):
        return f"stopped: {result.reason}"
    if isinstance(result, ex.DebugExitInfo):
        return "debug event"
    return getattr(result, "value", str(result))
