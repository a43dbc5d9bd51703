"""The constants every program is assembled with, and what each one means.

A program written in a notebook names the machine's devices and its own place in it by these
``.equ`` constants (``MAILBOX``, ``MB_PING``, ``RESULTS``, ``NVCPUS``, ...), so it runs
unchanged on any machine kvmlab builds. Two kinds:

* the machine's layout (``machine_layout()``, what ``Machine.layout()`` returns): where the
  devices are, fixed for every machine;
* what only loading decides (``load_defines()``): the mode's code width, the number of vCPUs,
  the results area.

This module is the one list of both, with a sentence each: the loader assembles with it,
``describe_layout()`` tabulates it for a notebook and ``layout_markdown()`` writes the README's
table, which ``tests/test_readme_layout.py`` compares with it, so the documentation cannot
drift from what a program really gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..devices import mailbox
from ..devices.debug_exit import DEBUG_EXIT_PORT
from ..devices.mailbox import MAILBOX_BASE
from ..devices.serial import COM1
from ..vstate.layout import IOAPIC_BASE, LAPIC_BASE
from .modes import RESULTS_ADDRESS, RESULTS_STRIDE, Mode


@dataclass(frozen=True)
class Constant:
    """One ``.equ`` constant: its name, its value (None where loading decides it), why a
    program would use it, and whether it is an address or port (shown in hex) or a count."""

    name: str
    value: int | None
    meaning: str
    address: bool = True

    @property
    def shown(self) -> str:
        """The value as a reader wants it: addresses in hex, counts in decimal."""
        if self.value is None:
            return "set at load"
        return f"{self.value:#x}" if self.address else str(self.value)


def _machine_constants() -> tuple[Constant, ...]:
    return (
        Constant("MAILBOX", MAILBOX_BASE, "the mailbox MMIO device's base address (every access is an MMIO exit)"),
        Constant("MB_ID", mailbox.ID, "mailbox register offset: ID, read only, 0x4c4d564b (\"KVML\")"),
        Constant("MB_PING", mailbox.PING, "mailbox register offset: PING, read/write (vCPU 0's message in the ping-pong)"),
        Constant("MB_PONG", mailbox.PONG, "mailbox register offset: PONG, read/write (vCPU 1's answer)"),
        Constant("MB_IRQ_VECTOR", mailbox.IRQ_VECTOR, "mailbox register offset: IRQ_VECTOR, the vector (32-255) the doorbell raises"),
        Constant("MB_DOORBELL", mailbox.DOORBELL, "mailbox register offset: DOORBELL, write n to raise IRQ_VECTOR at vCPU n"),
        Constant("MB_IRQ_ACK", mailbox.IRQ_ACK,
                 "mailbox register offset: IRQ_ACK, a handler writes its vector first thing (kvmlab times the delivery)"),
        Constant("MB_COUNTERS", mailbox.COUNTERS,
                 f"mailbox register offset: COUNTER0; COUNTER<n> is at MB_COUNTERS + 4*n, n < {mailbox.MAX_COUNTERS}"),
        Constant("SERIAL", COM1, "the 16550 UART's first port: OUT to SERIAL transmits a byte, SERIAL+5 is the line status"),
        Constant("DEBUG_EXIT", DEBUG_EXIT_PORT, "the debug-exit port: OUT of a value stops every vCPU, wait() returns the value"),
        Constant("LAPIC", LAPIC_BASE, "each vCPU's local APIC, with the in-kernel irqchip (MMIO KVM answers): EOI at +0xb0, "
                 "spurious-interrupt vector +0xf0, LVT timer +0x320, initial count +0x380"),
        Constant("IOAPIC", IOAPIC_BASE, "the IOAPIC, with the in-kernel irqchip: register select at +0, data at +0x10; "
                 "pin n's redirection entry is registers 0x10 + 2n (low) and 0x11 + 2n (high)"),
    )  # fmt: skip


def _load_constants(mode: Mode | None, vcpus: int | None) -> tuple[Constant, ...]:
    return (
        Constant("BITS", mode.bits if mode else None, "the code width of the mode loaded in: 16 (real), 32 (protected) or 64 (long)", False),
        Constant("NVCPUS", vcpus, "how many vCPUs run the program (each gets its index in DI / EDI / RDI)", False),
        Constant("RESULTS", RESULTS_ADDRESS, "the results area: RESULTS_STRIDE bytes per vCPU, zeroed at load, read by m.results()"),
        Constant("RESULTS_STRIDE", RESULTS_STRIDE, "bytes of results per vCPU: vCPU i's are at RESULTS + RESULTS_STRIDE * i", False),
    )


def machine_layout() -> dict[str, int]:
    """Where the devices are, by ``.equ`` name: what ``Machine.layout()`` returns."""
    return {c.name: c.value for c in _machine_constants()}


def load_defines(layout: Mapping[str, int], mode: Mode, vcpus: int) -> dict[str, int]:
    """Every constant a program loaded in ``mode`` on ``vcpus`` vCPUs is assembled with."""
    return {**layout, **{c.name: c.value for c in _load_constants(mode, vcpus)}}


def constants(mode: Mode | str | None = None, vcpus: int | None = None) -> list[Constant]:
    """Every constant, in the order the README lists them; ``BITS`` and ``NVCPUS`` have a
    value only when ``mode`` and ``vcpus`` say what loading would decide."""
    return [*_machine_constants(), *_load_constants(Mode.parse(mode) if mode is not None else None, vcpus)]


def describe_layout(mode: Mode | str | None = None, vcpus: int | None = None):
    """The constants as a DataFrame to read (index ``name``; ``value`` as text, addresses in
    hex; ``meaning``): what a program written in a notebook can use. ``describe_layout("real",
    2)`` fills in ``BITS`` and ``NVCPUS`` as a load in real mode on two vCPUs would. The
    integers themselves: ``Machine.layout()``, or ``constants()``."""
    import pandas as pd  # only for this table: assembling a program needs no pandas

    rows = constants(mode, vcpus)
    return pd.DataFrame({"value": [c.shown for c in rows], "meaning": [c.meaning for c in rows]}, index=pd.Index([c.name for c in rows], name="name"))


def layout_markdown() -> str:
    """The README's table of constants (``tests/test_readme_layout.py`` checks it is there)."""
    lines = ["| constant | value | meaning |", "|---|---|---|"]
    for c in constants():
        value = f"`{c.shown}`" if c.value is not None else c.shown
        lines.append(f"| `{c.name}` | {value} | {c.meaning} |")
    return "\n".join(lines)

