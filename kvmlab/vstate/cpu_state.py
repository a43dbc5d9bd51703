"""Engine-neutral records of a vCPU's state (``SaveState``) and CPU configuration
(``DumpCpuConfig``): plain ints, dicts and bytes, so views, diffs and DataFrames need no ctypes.

A notebook cell that ends with one of them echoes it, so each has a one-line ``repr`` that
names the vCPU and says what matters (mode, RIP, how many leaves or MSRs) and a
``_repr_html_`` that folds the detail (registers, leaves, MSRs, in hex) under that line:
the dataclass default printed pages of dicts in decimal, which nobody reads.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

from ..errors import UnknownCpuidLeafError
from ..x86 import MSR_NAMES, Cr0, Efer

#: the general registers, in the order a debugger shows them
GENERAL_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    """A small monospace HTML table (``rows`` already formatted as text)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table style='font-family:monospace; font-size:12px'><tr>{head}</tr>{body}</table>"


def _folded(summary: str, detail: str) -> str:
    """``summary`` on one line; ``detail`` shown when the reader opens it."""
    return f"<details><summary><code>{html.escape(summary)}</code></summary>{detail}</details>"


@dataclass(frozen=True)
class CpuidEntry:
    """One CPUID leaf/subleaf as the vCPU reports it (``kvm_cpuid_entry2`` without padding)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    def __repr__(self) -> str:
        return (f"CpuidEntry({self.function:#x}.{self.index}: eax={self.eax:#010x} ebx={self.ebx:#010x} "
                f"ecx={self.ecx:#010x} edx={self.edx:#010x})")  # fmt: skip


@dataclass
class CpuConfiguration:
    """The CPUID entries and MSR values set on a vCPU (Firecracker's ``CpuConfiguration``)."""

    vcpu: int
    cpuid: list[CpuidEntry]
    msrs: dict[int, int]
    #: MSR indices that were listed but could not be read on this vCPU (KVM refused them).
    unreadable_msrs: list[int] = field(default_factory=list)

    def cpuid_leaf(self, function: int, index: int = 0) -> CpuidEntry:
        for entry in self.cpuid:
            if entry.function == function and entry.index == index:
                return entry
        raise UnknownCpuidLeafError(f"CPUID leaf {function:#x}.{index} is not set on vCPU {self.vcpu}")

    def vendor(self) -> str:
        leaf = self.cpuid_leaf(0)
        return b"".join(r.to_bytes(4, "little") for r in (leaf.ebx, leaf.edx, leaf.ecx)).decode("ascii", "replace")

    def __repr__(self) -> str:
        try:
            vendor = f"{self.vendor()}, "
        except UnknownCpuidLeafError:
            vendor = ""
        unreadable = f" ({len(self.unreadable_msrs)} unreadable)" if self.unreadable_msrs else ""
        return f"<CpuConfiguration vCPU {self.vcpu}: {vendor}{len(self.cpuid)} CPUID leaves, {len(self.msrs)} MSRs{unreadable}>"

    def _repr_html_(self) -> str:
        leaves = [(f"{e.function:#010x}", e.index, f"{e.eax:#010x}", f"{e.ebx:#010x}", f"{e.ecx:#010x}", f"{e.edx:#010x}") for e in self.cpuid]
        msrs = [(f"{index:#010x}", MSR_NAMES.get(index, ""), f"{value:#x}") for index, value in sorted(self.msrs.items())]
        detail = _table(("function", "index", "eax", "ebx", "ecx", "edx"), leaves) + _table(("MSR", "name", "value"), msrs)
        return _folded(repr(self), detail)


@dataclass
class VcpuSnapshot:
    """A paused vCPU's full architectural state (what Firecracker's ``VcpuState`` holds).

    ``lapic`` is None when the machine has no in-kernel irqchip (KVM keeps no LAPIC then);
    ``xsave`` is the raw XSAVE area.
    """

    vcpu: int
    regs: dict[str, int]
    sregs: dict
    fpu: dict
    msrs: dict[int, int]
    lapic: bytes | None
    xsave: bytes | None
    xcrs: dict[int, int]
    vcpu_events: dict
    mp_state: int
    debug_regs: dict
    taken_at: float = field(default_factory=time.time)

    @property
    def rip(self) -> int:
        return self.regs["rip"]

    @property
    def mode(self) -> str:
        """"real", "protected" or "long", the names ``Machine.load(mode=...)`` takes (from CR0.PE
        and EFER.LMA; the CPU inspector, ``kvmlab.lab.inspect.cpu_mode``, names every variant)."""
        if not self.sregs["cr0"] & Cr0.PE:
            return "real"
        return "long" if self.sregs["efer"] & Efer.LMA else "protected"

    def __repr__(self) -> str:
        lapic = "LAPIC" if self.lapic is not None else "no LAPIC"
        taken = time.strftime("%H:%M:%S", time.localtime(self.taken_at))
        return (f"<VcpuSnapshot vCPU {self.vcpu}: {self.mode} mode, RIP {self.rip:#x}, RSP {self.regs['rsp']:#x}, "
                f"RFLAGS {self.regs['rflags']:#x}, {len(self.msrs)} MSRs, {lapic}, taken {taken}>")  # fmt: skip

    def _repr_html_(self) -> str:
        general = [(name, f"{self.regs[name]:#018x}") for name in GENERAL_REGISTERS if name in self.regs]
        control = [(name, f"{self.sregs[name]:#x}") for name in ("cr0", "cr2", "cr3", "cr4", "efer", "apic_base") if name in self.sregs]
        segments = [(name, f"{seg['selector']:#06x}", f"{seg['base']:#x}", f"{seg['limit']:#x}")
                    for name, seg in self.sregs.items() if isinstance(seg, dict) and "selector" in seg]  # fmt: skip
        detail = (
            "<div style='display:flex; gap:2em; align-items:flex-start'>"
            + _table(("register", "value"), general)
            + _table(("register", "value"), control)
            + _table(("segment", "selector", "base", "limit"), segments)
            + "</div><div><i>all of it: .regs, .sregs, .fpu, .msrs, .xsave, .lapic, .vcpu_events; "
            "the CPU inspector (kvmlab.widgets.CpuInspector) decodes it</i></div>"
        )
        return _folded(repr(self), detail)
