"""Do two engines run a program the same way? Same exits, same final registers, same console.

Runs the program once per engine with the exit trace on, and compares per vCPU the sequence
of exits (kind, address or port, size, data). Polling makes the *number* of identical reads
depend on timing (how long the other vCPU took), so a run of consecutive identical reads of
one address counts as one read with its last value: a poll loop's observable outcome.
Waiting in HLT for an interrupt is the same thing done without polling: whether a vCPU got to
its HLT before the interrupt came is timing, so a HLT that more exits follow (the vCPU was
woken) is left out, and only a final HLT (the vCPU stopped) is compared. Kicks and
injections are not exits of the guest and are left out.

    >>> report = compare(programs.hello(), "real", vcpus=2)
    >>> report.ok, report.first_divergence
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .guest.programs import Program
from .x86 import Rflags

GUEST_EXITS = ("mmio_read", "mmio_write", "io_in", "io_out", "hlt", "shutdown")
READS = ("mmio_read", "io_in")
#: arithmetic flags and the direction/interrupt flags a program can set (the others, RF and
#: the reserved bit among them, may differ between a CPU and an emulator)
COMPARED_FLAGS = Rflags.CF | Rflags.PF | Rflags.AF | Rflags.ZF | Rflags.SF | Rflags.IF | Rflags.DF | Rflags.OF


@dataclass
class EngineRun:
    engine: str
    exit_code: int
    reason: str
    console: str
    exits: dict[int, list[tuple]]
    registers: dict[int, dict[str, int]]


@dataclass
class ParityReport:
    program: str
    mode: str
    runs: dict[str, EngineRun]
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def first_divergence(self) -> str | None:
        return self.differences[0] if self.differences else None

    def __str__(self) -> str:
        head = f"{self.program} ({self.mode} mode) on {' and '.join(self.runs)}: "
        return head + ("the same" if self.ok else "; ".join(self.differences))


def canonical_exits(trace, vcpus: int) -> dict[int, list[tuple]]:
    """Per vCPU: (kind, address, size, data) of each guest exit, consecutive identical reads
    collapsed to the last one, and HLTs the vCPU was woken from left out."""
    out: dict[int, list[tuple]] = {}
    for index in range(vcpus):
        rows = trace[(trace["vcpu"] == str(index)) & trace["reason"].isin(GUEST_EXITS)]
        sequence: list[tuple] = []
        for reason, address, size, data in zip(rows["reason"].astype(str), rows["address"], rows["size"], rows["data"]):
            item = (reason, int(address), int(size), int(data))
            if sequence and sequence[-1][0] == "hlt":
                sequence.pop()  # a HLT more exits follow: the vCPU waited, and was woken
            if sequence and reason in READS and sequence[-1][:3] == item[:3]:
                sequence[-1] = item
            else:
                sequence.append(item)
        out[index] = sequence
    return out


def run_on(engine: str, program: Program, mode: str, vcpus: int, timeout: float = 60.0) -> EngineRun:
    from .machine import Machine

    with Machine(vcpus=vcpus, memory_mib=2, engine=engine, trace=True, trace_capacity=1_000_000) as m:
        m.load(program, mode=mode)
        m.start()
        code = m.wait(timeout)
        trace = m.metrics.trace_dataframe()
        registers = {i: m.registers(i) for i in range(vcpus)}
        return EngineRun(engine, int(code), code.reason, m.console.text, canonical_exits(trace, vcpus), registers)


def _describe(item: tuple | None) -> str:
    if item is None:
        return "nothing (the sequence ended)"
    reason, address, size, data = item
    return f"{reason} {address:#x}/{size} data {data:#x}" if reason not in ("hlt", "shutdown") else reason


def compare(program: Program, mode: str, vcpus: int = 2, engines=("kvm", "emulated"), compare_registers: bool = True) -> ParityReport:
    """Runs ``program`` on each engine and reports every difference, first exits first."""
    runs = {engine: run_on(engine, program, mode, vcpus) for engine in engines}
    return ParityReport(program.name, mode, runs, differences(runs, vcpus, compare_registers))


def differences(runs: dict[str, EngineRun], vcpus: int, compare_registers: bool = True) -> list[str]:
    """What differs between the runs, against the first one: per vCPU the first differing
    exit, then exit codes, console output and final registers."""
    found: list[str] = []
    base, *others = runs.values()
    for other in others:
        who = f"{base.engine} vs {other.engine}"
        for index in range(vcpus):
            mine, theirs = base.exits[index], other.exits[index]
            for n in range(max(len(mine), len(theirs))):
                a = mine[n] if n < len(mine) else None
                b = theirs[n] if n < len(theirs) else None
                if a != b:
                    found.append(f"vCPU {index}, exit #{n}: {base.engine} {_describe(a)}, {other.engine} {_describe(b)}")
                    break
        if (base.exit_code, base.reason) != (other.exit_code, other.reason):
            found.append(f"{who}: exit code {base.exit_code} ({base.reason}) vs {other.exit_code} ({other.reason})")
        if base.console != other.console:
            found.append(f"{who}: console {base.console!r} vs {other.console!r}")
        if compare_registers:
            for index in range(vcpus):
                a, b = base.registers[index], other.registers[index]
                for name in a:
                    mask = COMPARED_FLAGS if name == "rflags" else (1 << 64) - 1
                    if a[name] & mask != b[name] & mask:
                        found.append(f"vCPU {index}: final {name} {a[name]:#x} on {base.engine}, {b[name]:#x} on {other.engine}")
    return found
