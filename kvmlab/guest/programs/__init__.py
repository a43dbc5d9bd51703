"""The bundled teaching programs, as ``.asm`` files shipped in this package.

Each factory returns a ``Program``: the assembly text, its parameters (which become ``.equ``
constants) and what the program writes into its results area. ``Machine.load`` assembles it
for the chosen CPU mode; every program runs in real, protected and long mode.
``timer_ticks`` also needs KVM's in-kernel irqchip, which ``load`` then creates.

>>> from kvmlab import programs
>>> print(programs.mmio_counter(iterations=100).header)   # what the program teaches
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Mapping

from ...checks import is_whole_number
from ...errors import ConfigError
from ...vstate.interrupts import check_vector
from ..asm import assemble
from ..constants import describe_layout
from ..modes import RESULTS_STRIDE, Mode

if TYPE_CHECKING:
    from ...machine import Machine

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
    #: True for programs that program KVM's in-kernel interrupt controllers and timers (PIC,
    #: IOAPIC, LAPIC, PIT): ``load`` then creates the irqchip (where the engine has one)
    irqchip: bool = False

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
    """Each vCPU writes 1..iterations to its own mailbox counter (0 = forever), reading it
    back every ``read_every``-th write (a power of two; 0: never, only writes)."""
    _count("iterations", iterations)
    if not isinstance(read_every, int) or isinstance(read_every, bool) or read_every < 0 or read_every & (read_every - 1):
        raise ConfigError(f"read_every={read_every!r}: need 0 (never read back) or a power of two (1, 2, 4, 8, ...)")
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


#: The 8254 PIT's input clock, 14.31818 MHz / 12, as KVM's PIT counts it (KVM_PIT_FREQ)
PIT_HZ = 1_193_182
#: KVM's APIC bus: one LAPIC timer count per nanosecond at divide-by-1 (APIC_BUS_CYCLE_NS,
#: the default of KVM_CAP_X86_APIC_BUS_CYCLES_NS); a LAPIC on hardware counts at its own bus rate
LAPIC_BUS_NS = 1
#: divide configuration register value for divide-by-1 (Intel SDM Vol. 3A, 11.5.4)
LAPIC_DIVIDE_BY_1 = 0xB
#: the timer's interrupt: IRQ0 on the PIC (ICW2 must be a multiple of 8), the LVT timer's vector
TIMER_VECTOR = 0x20
#: most ticks the stamp table holds (8 bytes each; in real mode it must stay below 64 KiB)
MAX_TICKS = 2000
#: the longest period the PIT's 16-bit count allows (65535 / PIT_HZ), in microseconds
PIT_MAX_PERIOD_US = 65535 * 1_000_000 // PIT_HZ


def timer_ticks(ticks: int = 50, period_us: float = 1000) -> Program:
    """vCPU 0 counts ``ticks`` ticks of a timer that runs inside KVM, every ``period_us``
    microseconds: the PIT on the PIC in real mode, the LAPIC timer in protected and long mode.
    It stamps the TSC at each tick; ``timer_report(m)`` turns the stamps into the measured
    period and its jitter. Needs KVM's in-kernel irqchip (``load`` creates it).

    KVM runs both timers at no less than ``min_timer_period_us`` (a kvm module parameter,
    200 us by default): a shorter period is programmed as asked and ticks at that floor."""
    if not is_whole_number(ticks) or not 2 <= ticks <= MAX_TICKS:
        raise ConfigError(f"ticks={ticks!r}: need a whole number from 2 to {MAX_TICKS} (a period needs two ticks)")
    if isinstance(period_us, bool) or not isinstance(period_us, (int, float)) or not 1 <= period_us <= PIT_MAX_PERIOD_US:
        raise ConfigError(f"period_us={period_us!r}: need a number of microseconds from 1 to {PIT_MAX_PERIOD_US} (the PIT's 16-bit count)")
    pit_count = max(2, round(period_us * PIT_HZ / 1_000_000))  # mode 2 needs a count of at least 2
    return Program(
        "timer_ticks.asm",
        _source("timer_ticks.asm"),
        params={
            "TICKS": ticks,
            "VECTOR": TIMER_VECTOR,
            "PIT_COUNT": pit_count,
            "LAPIC_COUNT": round(period_us * 1000 / LAPIC_BUS_NS),
            "LAPIC_DIVIDE": LAPIC_DIVIDE_BY_1,
        },
        results_fields=("ticks", "cycles_low", "cycles_high", "stamps"),
        irqchip=True,
    )


@dataclass(frozen=True)
class TimerReport:
    """What ``timer_ticks`` measured on one vCPU, in microseconds of the guest's TSC."""

    #: "PIT" (real mode) or "LAPIC timer" (protected, long)
    timer: str
    ticks: int
    #: the period the program asked for, from the count it programmed
    programmed_us: float
    #: the mean period from the first tick to the last
    period_us: float
    min_us: float
    max_us: float
    #: the standard deviation of the periods between ticks
    jitter_us: float
    #: every period between two ticks, in order
    intervals_us: tuple[float, ...]
    tsc_khz: int

    @property
    def ratio(self) -> float:
        """Measured over programmed period: 1.0 is a timer that keeps its rate."""
        return self.period_us / self.programmed_us

    def __str__(self) -> str:
        return (f"{self.timer}: {self.ticks} ticks, programmed {self.programmed_us:.1f} us, measured {self.period_us:.1f} us "
                f"(x{self.ratio:.3f}), min {self.min_us:.1f}, max {self.max_us:.1f}, jitter {self.jitter_us:.1f} us")  # fmt: skip


def timer_report(machine: "Machine", vcpu: int = 0) -> TimerReport:
    """The period ``timer_ticks`` measured on a machine that ran it (stopped or not, not
    closed): its TSC stamps, converted with the TSC frequency KVM reports (KVM_GET_TSC_KHZ)."""
    loaded = machine.program
    if loaded is None or loaded.program.name != "timer_ticks.asm":
        raise ConfigError("timer_report(): the machine did not load programs.timer_ticks()")
    results = machine.results(vcpu)
    ticks, params = results["ticks"], loaded.program.params
    if ticks < 2 or results["stamps"] == 0:
        raise ConfigError(f"timer_report(): vCPU {vcpu} counted {ticks} of {params['TICKS']} ticks and has no period yet; wait() for the program to end")
    khz = machine.tsc_khz(vcpu)
    raw = machine.memory.read(results["stamps"], 8 * ticks)
    stamps = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
    intervals = tuple((b - a) * 1000 / khz for a, b in zip(stamps, stamps[1:]))
    cycles = results["cycles_low"] | results["cycles_high"] << 32
    if loaded.mode is Mode.REAL:
        timer, programmed = "PIT", params["PIT_COUNT"] * 1_000_000 / PIT_HZ
    else:
        timer, programmed = "LAPIC timer", params["LAPIC_COUNT"] * LAPIC_BUS_NS / 1000
    return TimerReport(
        timer, ticks, programmed, cycles * 1000 / khz / (ticks - 1), min(intervals), max(intervals),
        statistics.pstdev(intervals), intervals, khz,
    )  # fmt: skip


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
    "timer_report",
    "timer_ticks",
    "triple_fault",
]
