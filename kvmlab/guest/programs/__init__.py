"""The bundled teaching programs, as ``.asm`` files shipped in this package.

Each factory returns a ``Program``: the assembly text, its parameters (which become ``.equ``
constants) and what the program writes into its results area. ``Machine.load`` assembles it
for the chosen CPU mode; every program runs in real, protected and long mode.

>>> from kvmlab import programs
>>> print(programs.mmio_counter(iterations=100).header)   # what the program teaches
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Mapping

from ...checks import is_whole_number
from ...errors import ConfigError
from ...vstate.interrupts import check_vector
from ..asm import assemble
from ..constants import describe_layout
from ..modes import RESULTS_STRIDE

U32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class Program:
    """Assembly text plus what kvmlab needs to run it and read its results."""

    name: str
    source: str
    params: Mapping[str, int] = field(default_factory=dict)
    #: how many vCPUs the program needs to do its job
    min_vcpus: int = 1
    #: names of the dwords the program writes at RESULTS + 16 * vcpu
    results_fields: tuple[str, ...] = ()
    #: False for programs that never end on their own (busy loops, counters with 0 iterations)
    ends: bool = True

    @property
    def header(self) -> str:
        """The teaching comment at the top of the file, without comment markers."""
        lines = []
        for line in self.source.splitlines():
            stripped = line.strip()
            if not stripped.startswith((";", "#")):
                if lines:
                    break
                continue
            lines.append(stripped.lstrip(";#")[1:] if len(stripped) > 1 else "")
        return "\n".join(lines).strip()

    @property
    def summary(self) -> str:
        return self.header.splitlines()[0] if self.header else self.name

    def assemble(self, bits: int, base: int, layout: Mapping[str, int]) -> bytes:
        return assemble(self.source, bits, base, defines={**layout, **self.params}, name=self.name)

    def __repr__(self) -> str:
        params = ", ".join(f"{k.lower()}={v}" for k, v in self.params.items())
        return f"Program({self.name!r}{', ' if params else ''}{params})"


def _source(filename: str) -> str:
    return resources.files(__name__).joinpath(filename).read_text()


def _count(name: str, value, *, allow_zero: bool = True) -> int:
    low = 0 if allow_zero else 1
    if not is_whole_number(value) or not low <= value <= U32_MAX:
        raise ConfigError(f"{name}={value!r}: need a whole number from {low} to {U32_MAX}")
    return value


def hello() -> Program:
    """Every vCPU prints ``Hello from vCPU <n>`` over the serial port, in vCPU order."""
    return Program("hello.asm", _source("hello.asm"), results_fields=("chars_sent", "status_polls"))


def mmio_counter(iterations: int = 1000, read_every: int = 8) -> Program:
    """Each vCPU writes 1..iterations to its own mailbox counter (0 = forever)."""
    _count("iterations", iterations)
    if not isinstance(read_every, int) or read_every < 1 or read_every & (read_every - 1):
        raise ConfigError(f"read_every={read_every!r}: need a power of two (1, 2, 4, 8, ...)")
    return Program(
        "mmio_counter.asm",
        _source("mmio_counter.asm"),
        params={"ITERATIONS": iterations, "READ_EVERY": read_every},
        results_fields=("mmio_writes", "mmio_reads", "mismatches"),
        ends=iterations > 0,
    )


def mailbox_pingpong(rounds: int = 1000) -> Program:
    """vCPU 0 and vCPU 1 pass a counter back and forth through the mailbox (0 = forever)."""
    _count("rounds", rounds)
    return Program(
        "mailbox_pingpong.asm",
        _source("mailbox_pingpong.asm"),
        params={"ROUNDS": rounds},
        min_vcpus=2,
        results_fields=("rounds", "polls"),
        ends=rounds > 0,
    )


def mailbox_irq(rounds: int = 1000, vector: int = 0x40) -> Program:
    """The ping-pong driven by interrupts: each vCPU waits in HLT until the other rings the
    mailbox's doorbell (0 rounds = forever). ``vector`` is what the mailbox raises (32-255)."""
    _count("rounds", rounds)
    return Program(
        "mailbox_irq.asm",
        _source("mailbox_irq.asm"),
        params={"ROUNDS": rounds, "VECTOR": check_vector(vector)},
        min_vcpus=2,
        results_fields=("rounds", "interrupts_handled", "hlts", "last_value"),
        ends=rounds > 0,
    )


def exceptions(repeat: int = 3) -> Program:
    """vCPU 0 takes #DE and #UD ``repeat`` times each (and in long mode one #PF), each caught
    by a handler that fixes the cause or steps past it."""
    return Program(
        "exceptions.asm",
        _source("exceptions.asm"),
        params={"REPEAT": _count("repeat", repeat, allow_zero=False)},
        results_fields=("divide_errors", "invalid_opcodes", "page_faults", "page_fault_error_code"),
    )


def busy_loop() -> Program:
    """A loop with no exits at all: only a kick gets the vCPU out of KVM_RUN."""
    return Program("busy_loop.asm", _source("busy_loop.asm"), results_fields=("iterations_low", "iterations_high"), ends=False)


def triple_fault() -> Program:
    """An empty IDT and UD2: the CPU triple-faults."""
    return Program("triple_fault.asm", _source("triple_fault.asm"))


def exit_code(code: int = 0, delay: int = 1000) -> Program:
    """vCPU 0 ends the machine with ``code`` through the debug-exit port; the others spin."""
    return Program(
        "exit_code.asm",
        _source("exit_code.asm"),
        params={"CODE": _count("code", code), "DELAY": _count("delay", delay)},
        results_fields=("reported",),
    )


def exit_cost(iterations: int = 10_000) -> Program:
    """Each vCPU times ``iterations`` port-I/O exits with RDTSC (cycles per exit, as the guest sees it)."""
    return Program(
        "exit_cost.asm",
        _source("exit_cost.asm"),
        params={"ITERATIONS": _count("iterations", iterations, allow_zero=False)},
        results_fields=("cycles_low", "cycles_high", "min_cycles", "exits"),
    )


def from_source(source: str, name: str = "<source>", *, results: tuple[str, ...] = (), **params: int) -> Program:
    """A program of your own: assembly text (``;`` comments) and ``.equ`` parameters (``count=10``
    becomes ``COUNT``). ``results`` names the dwords the program writes at ``RESULTS +
    RESULTS_STRIDE * vCPU``, so ``m.results()`` reads them back by name, as for a bundled
    program. What a program can use: ``describe_layout()`` and README "Write your own program"."""
    if not isinstance(source, str):
        raise ConfigError(f"from_source needs assembly text, got {type(source).__name__}")
    results = tuple(results)
    if len(results) > RESULTS_STRIDE // 4 or not all(isinstance(r, str) and r for r in results):
        raise ConfigError(f"results={results!r}: up to {RESULTS_STRIDE // 4} names, one per dword of a vCPU's results")
    return Program(name, source, params={k.upper(): _count(k, v) for k, v in params.items()}, results_fields=results)


__all__ = [
    "Program",
    "busy_loop",
    "describe_layout",
    "exit_code",
    "exceptions",
    "exit_cost",
    "from_source",
    "hello",
    "mailbox_irq",
    "mailbox_pingpong",
    "mmio_counter",
    "triple_fault",
]
