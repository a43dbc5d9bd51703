"""What the CPU inspector shows, computed from a saved state or CPU config (no widgets here).

Decodes RFLAGS, CR0, CR4 and EFER bit by bit, names the CPU mode, tabulates segments, CPUID
leaves and MSRs as DataFrames, disassembles the instructions at RIP (walking the guest's page
tables to find them) and diffs two snapshots of the same vCPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..guest.asm import disassemble
from ..guest.code import MAX_INSTRUCTION, GuestCode, code_at
from ..kvm.constants import MpState
from ..vstate.cpu_state import CpuConfiguration, VcpuSnapshot
from ..vstate.final_state import FinalState
from ..vstate.layout import Range
from ..vstate.protocol import MP_STATE_NOTES
from ..x86 import MSR_NAMES, RFLAGS_IOPL_SHIFT, Cr0, Cr4, Efer, Rflags, bit_names  # noqa: F401 (MSR_NAMES: shown here)

RFLAGS_BITS = bit_names(Rflags)
CR0_BITS = bit_names(Cr0)
CR4_BITS = bit_names(Cr4)
EFER_BITS = bit_names(Efer)
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


def flag_names(value: int, bits: dict[int, str]) -> list[str]:
    """The names of the set bits, lowest first."""
    return [name for bit, name in sorted(bits.items()) if value >> bit & 1]


def decode_rflags(value: int) -> str:
    names = flag_names(value, RFLAGS_BITS)
    iopl = (value >> RFLAGS_IOPL_SHIFT) & 3
    return " ".join(names + ([f"IOPL={iopl}"] if iopl else [])) or "(none)"


def cpu_mode(sregs: dict, rflags: int = 0) -> str:
    """Names the mode the CPU is in, from CR0, EFER, CS and RFLAGS."""
    cr0, efer, cs = sregs["cr0"], sregs["efer"], sregs["cs"]
    paging = ", paging on" if cr0 & Cr0.PG else ""
    if not cr0 & Cr0.PE:
        return "real mode"
    if efer & Efer.LMA:
        return ("64-bit long mode" if cs["l"] else "compatibility mode (long mode, 32-bit code)") + paging
    if rflags & Rflags.VM:
        return "virtual-8086 mode" + paging
    return ("32-bit" if cs["db"] else "16-bit") + " protected mode" + paging


def _hex(value: int, width: int = 16) -> str:
    return f"0x{value:0{width}x}"


def general_registers(state: VcpuSnapshot) -> pd.DataFrame:
    regs = state.regs
    rows = [(name, _hex(regs[name]), regs[name]) for name in GENERAL]
    frame = pd.DataFrame(rows, columns=["register", "hex", "value"]).set_index("register")
    return frame


def control_registers(state: VcpuSnapshot) -> pd.DataFrame:
    s = state.sregs
    rows = [
        ("cr0", _hex(s["cr0"]), " ".join(flag_names(s["cr0"], CR0_BITS))),
        ("cr2", _hex(s["cr2"]), "last page-fault address"),
        ("cr3", _hex(s["cr3"]), "page-table root"),
        ("cr4", _hex(s["cr4"]), " ".join(flag_names(s["cr4"], CR4_BITS))),
        ("cr8", _hex(s["cr8"]), "task priority"),
        ("efer", _hex(s["efer"]), " ".join(flag_names(s["efer"], EFER_BITS))),
        ("apic_base", _hex(s["apic_base"]), "LAPIC base, BSP flag" if s["apic_base"] & 0x100 else "LAPIC base"),
        ("rflags", _hex(state.regs["rflags"]), decode_rflags(state.regs["rflags"])),
    ]
    return pd.DataFrame(rows, columns=["register", "hex", "meaning"]).set_index("register")


def segments(state: VcpuSnapshot) -> pd.DataFrame:
    s = state.sregs
    rows = []
    for name in SEGMENTS:
        seg = s[name]
        rows.append((name, f"{seg['selector']:#06x}", _hex(seg["base"]), f"{seg['limit']:#x}", seg["type"], seg["present"], seg["dpl"],
                     seg["db"], seg["s"], seg["l"], seg["g"], seg["unusable"]))  # fmt: skip
    for name in ("gdt", "idt"):
        rows.append((name, "", _hex(s[name]["base"]), f"{s[name]['limit']:#x}", "", "", "", "", "", "", "", ""))
    columns = ["segment", "selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "unusable"]
    return pd.DataFrame(rows, columns=columns).set_index("segment")


def cpuid_table(config: CpuConfiguration) -> pd.DataFrame:
    rows = [(f"{e.function:#010x}", e.index, e.flags, f"{e.eax:#010x}", f"{e.ebx:#010x}", f"{e.ecx:#010x}", f"{e.edx:#010x}") for e in config.cpuid]
    return pd.DataFrame(rows, columns=["function", "index", "flags", "eax", "ebx", "ecx", "edx"])


def msr_table(msrs: dict[int, int]) -> pd.DataFrame:
    rows = [(f"{index:#010x}", MSR_NAMES.get(index, ""), _hex(value)) for index, value in sorted(msrs.items())]
    return pd.DataFrame(rows, columns=["msr", "name", "value"])


@dataclass(frozen=True)
class CodeView:
    """The instructions at RIP, or why they cannot be shown.

    ``program_end`` is the address (in RIP's terms) where the loaded program ends, when it
    ends within the bytes read: what follows it is whatever memory holds (zeros, mostly),
    and capstone would happily decode ``00 00`` as ``add [rax], al``. ``note`` says why
    the listing may not be code at all (RIP outside the loaded program)."""

    mode: str
    linear: int
    physical: int | None
    instructions: list[tuple[int, bytes, str]]
    problem: str | None = None
    program_end: int | None = None
    #: bytes at the end of the program that capstone could not decode as an instruction
    undecoded: int = 0
    note: str | None = None

    def text(self) -> str:
        if self.problem:
            return self.problem
        lines = [self.note] if self.note else []
        for i, (address, raw, text) in enumerate(self.instructions):
            marker = "=>" if i == 0 else "  "
            lines.append(f"{marker} {address:#010x}  {raw.hex(' '):<24} {text}")
        if self.undecoded:
            lines.append(f"   {'':10}  ({self.undecoded} more byte(s) of the program that are not an instruction)")
        if self.program_end is not None:
            lines.append(f"   {self.program_end:#010x}  -- end of the loaded program: what follows is not code")
        return "\n".join(lines)


def code_at_rip(state: VcpuSnapshot, memory, count: int = 8, program: Range | None = None) -> CodeView:
    """Disassembles up to ``count`` instructions from the vCPU's RIP (CS base added, pages
    walked), stopping where ``program`` (the machine's loaded range) ends."""
    return decode_code(state, code_at(memory, state.regs, state.sregs, MAX_INSTRUCTION * count), count, program)


def decode_code(state: VcpuSnapshot, code: GuestCode, count: int = 8, program: Range | None = None) -> CodeView:
    """Disassembles bytes read at RIP (``GuestCode``: live, or kept in a vCPU's final state).
    With ``program`` (``m.program.range``) the listing stops where the program ends instead
    of decoding the memory after it (zeros, mostly: ``add [rax], al``) as instructions."""
    mode = cpu_mode(state.sregs, state.regs["rflags"])
    if code.problem is not None:
        return CodeView(mode, code.linear, None, [], code.problem)
    data, note, program_end = code.data, None, None
    if program is not None and program.contains(code.physical):
        if program.end - code.physical <= len(data):
            data = data[: program.end - code.physical]
            program_end = code.rip + len(data)
    elif program is not None:
        note = f"(RIP {code.rip:#x}, physical {code.physical:#x}, is outside the loaded program {program}: these bytes may not be code)"
    instructions = disassemble(data, code.bits, code.rip, count)
    decoded = sum(len(raw) for _, raw, _ in instructions)
    undecoded = len(data) - decoded if program_end is not None and len(instructions) < count else 0
    return CodeView(mode, code.linear, code.physical, instructions, program_end=program_end, undecoded=undecoded, note=note)


def newly_saved(before: dict, after: dict) -> int | None:
    """The vCPU whose history (``LabSession.snapshots`` or ``configs``) gained an entry
    between two values of the trait, if one did: the inspector shows the state just saved,
    whichever button (its own, the control panel's, ``inspector.show``) saved it."""
    gained = [vcpu for vcpu, items in after.items() if items and (vcpu not in before or before[vcpu][-1] is not items[-1])]
    return gained[-1] if gained else None


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            _flatten(f"{prefix}[{i}]", inner, out)
    else:
        out[prefix] = value


def snapshot_fields(state: VcpuSnapshot) -> dict:
    out: dict = {}
    for part in ("regs", "sregs", "fpu", "vcpu_events", "debug_regs"):
        _flatten(part, getattr(state, part), out)
    for index, value in state.msrs.items():
        out[f"msr.{index:#x}" + (f" ({MSR_NAMES[index]})" if index in MSR_NAMES else "")] = value
    out["mp_state"] = state.mp_state
    return out


def diff(before: VcpuSnapshot, after: VcpuSnapshot) -> pd.DataFrame:
    """What changed between two snapshots of one vCPU: ``field``, ``before``, ``after``."""
    old, new = snapshot_fields(before), snapshot_fields(after)
    rows = []
    for key in new:
        if old.get(key) != new[key]:
            a, b = old.get(key), new[key]
            shown = (lambda v: _hex(v, 1) if isinstance(v, int) else v.hex() if isinstance(v, bytes) else v)
            rows.append((key, shown(a) if a is not None else "", shown(b)))
    return pd.DataFrame(rows, columns=["field", "before", "after"])


def mp_state_name(value: int) -> str:
    """``UNINITIALIZED (waiting for INIT)``: KVM's name, and what it means where it is not obvious."""
    try:
        name = MpState(value).name
    except ValueError:
        return str(value)
    note = MP_STATE_NOTES.get(name)
    return f"{name} ({note})" if note and note.lower() != name.lower() else name


# --- a vCPU that stopped for good ---------------------------------------------------------------


@dataclass(frozen=True)
class FinalView:
    """What the inspector shows of a ``FinalState``: a sentence, the registers, the code."""

    summary: str
    state: VcpuSnapshot | None
    code: CodeView | None


def final_to_show(final: FinalState | None, snapshots: tuple) -> FinalState | None:
    """The final state, unless a snapshot saved after it is newer (one taken by hand)."""
    if final is None:
        return None
    if snapshots and snapshots[-1].taken_at > final.taken_at:
        return None
    return final


def final_view(final: FinalState, program: Range | None = None) -> FinalView:
    """Why the vCPU stopped and its registers and code as they were then: a finished vCPU
    answers no SaveState, so this is all there is to look at (``Machine.final_state``)."""
    how = (f"exited: {final.reason}, exit code {final.exit_code}" if final.exited
           else "finished: the machine stopped it")  # fmt: skip
    summary = f"vCPU {final.vcpu} {how}. Its final state, recorded as it stopped:"
    if final.snapshot is None:
        return FinalView(f"{summary} {final.problem or 'no registers were recorded'}", None, None)
    code = decode_code(final.snapshot, final.code, program=program) if final.code is not None else None
    return FinalView(summary, final.snapshot, code)


def last_exits(final: FinalState) -> pd.DataFrame:
    """The exits that led to the end: the trace's last rows when tracing, else the last
    exit the kvm_run page held."""
    columns = ["exit", "address", "size", "value"]
    if final.trace:
        rows = [(r["kind"], _hex(r["address"], 1), r["size"], _hex(r["value"], 1)) for r in final.trace]
    elif final.last_exit is not None:
        rows = [(str(final.last_exit), "", "", "")]
    else:
        rows = []
    return pd.DataFrame(rows, columns=columns)
