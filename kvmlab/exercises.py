"""Checked exercises: each ``check_*`` runs the learner's code against what a real machine did.

A notebook's exercise asks for a small function; its check cell calls ``check_...(function)``,
which runs a guest (on KVM where it exists, else on the emulated engine), hands the learner's
function what the machine reported, and compares the answer with what the machine itself
knows (the console, the registers). The result is a ``Verdict``: a short explanation when the
answer is right, a hint aimed at the usual mistake when it is not. No answer is stored in the
notebook, and a guess cannot pass: each run draws a new secret for the guest to print.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence

from .devices import COM1
from .guest.programs import Program
from .kvm.constants import IoDirection
from .machine import Machine
from .vstate.exit_record import ExitRecord

#: port 0x80: the PC's POST-code port, where firmware writes progress codes; no kvmlab device
#: answers it, so a write there is an exit that only counts as absent hardware
POST_PORT = 0x80
#: the 16550's line status register, which a careful driver reads before each byte
LINE_STATUS = COM1 + 5
#: words the serial guest prints, one drawn per check
WORDS = ("vmexit", "hypercall", "vmlaunch", "shadow", "ioctl", "vmcs", "ept", "kvmclock", "virtio", "vcpu")
#: a guest that never halts (a learner's bug) is stopped after this many exits
STEP_LIMIT = 200


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: ``passed`` and what to tell the learner."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("Right. " if self.passed else "Not yet. ") + self.message

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "var(--jp-success-color1, #080)" if self.passed else "var(--jp-warn-color0, #a60)"
        mark = "&#10004; Right." if self.passed else "&#10008; Not yet."
        return f"<div style='color:{colour}'><b>{mark}</b> {self.message}</div>"


def serial_guest(secret: str) -> Program:
    """A real-mode program that prints ``secret`` on COM1 as a driver would: it first reads the
    receive buffer (any input?), reads the line status before each byte, and writes a POST code
    to port 0x80 after each one."""
    lines = [f"    mov dx, {COM1:#x}", "    in al, dx              ; KVM_EXIT_IO in, port 0x3f8: any input waiting?"]
    for index, char in enumerate(secret):
        lines += [
            f"    mov dx, {LINE_STATUS:#x}",
            "    in al, dx              ; KVM_EXIT_IO in: is the transmitter empty?",
            f"    mov dx, {COM1:#x}",
            f"    mov al, {ord(char)}",
            "    out dx, al             ; KVM_EXIT_IO out: the byte",
            f"    mov al, {index + 1}",
            f"    out {POST_PORT:#x}, al           ; KVM_EXIT_IO out: a POST code, to no device",
        ]
    lines.append("    hlt")
    return Program("serial_guest", "\n".join(lines) + "\n")


def _exits_of(program: Program, engine: str) -> tuple[list[ExitRecord], str]:
    """Every exit of ``program`` (stepped on this thread, to its HLT) and the console text."""
    with Machine(vcpus=1, memory_mib=1, engine=engine) as m:
        m.load(program, mode="real")
        records = []
        while len(records) < STEP_LIMIT:
            record = m.step()
            records.append(record)
            if record.reason != "IO" and record.reason != "MMIO":
                break
        return records, m.console.text


def _call(function: Callable, *args) -> tuple[object, Verdict | None]:
    try:
        return function(*args), None
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        return None, Verdict(False, f"Your function raised {type(err).__name__}: {err} (line {where.lineno}). "
                                    "Print one record (print(records[0].fields)) to see what it holds.")  # fmt: skip


def check_serial_bytes(function: Callable[[Sequence[ExitRecord]], bytes], *, engine: str = "auto") -> Verdict:
    """Checks ``function(records) -> bytes``: given every exit of a guest, the bytes the guest
    printed on the serial port (COM1's transmit register, port 0x3f8)."""
    secret = random.choice(WORDS)
    records, console = _exits_of(serial_guest(secret), engine)
    got, failed = _call(function, records)
    if failed is not None:  # a Verdict that did not pass is falsy: test for None
        return failed
    if isinstance(got, str):
        got = got.encode()
    if not isinstance(got, (bytes, bytearray)):
        return Verdict(False, f"Return bytes (b'...'), not {type(got).__name__}: collect record.fields['data'] of the right exits")
    got = bytes(got)
    if got == secret.encode() == console.encode():
        return Verdict(
            True,
            f"The guest printed {secret!r}. Only OUT exits to port {COM1:#x} carry it: the IN exits at {LINE_STATUS:#x} "
            f"were the guest reading the UART's line status (KVM_EXIT_IO with direction IN: the VMM answers), and port "
            f"{POST_PORT:#x} is a POST-code port no device claims. Every one of them was an exit all the same: a port "
            "access leaves the guest unless an in-kernel device handles it (Documentation/virt/kvm/api.rst, KVM_EXIT_IO).",
        )
    post_codes = bytes(range(1, len(secret) + 1))
    if not got:
        return Verdict(False, "You returned nothing. The exits you want have record.reason == 'IO'.")
    if any(code in got for code in post_codes):
        return Verdict(False, f"Your bytes include the POST codes written to port {POST_PORT:#x}: keep only record.fields['port'] == {COM1:#x}.")
    if len(got) > len(secret):
        return Verdict(
            False,
            f"You returned {len(got)} bytes for a {len(secret)}-letter word: IN exits carry what the device answered, "
            f"not what the guest printed. Keep only record.fields['direction'] == IoDirection.OUT.",
        )
    return Verdict(False, f"You returned {got!r}; the guest printed a {len(secret)}-letter word. Keep the order of the exits.")


def reference_serial_bytes(records: Sequence[ExitRecord]) -> bytes:
    """The answer ``check_serial_bytes`` expects (for the tests; a notebook does not show it)."""
    return b"".join(
        r.fields["data"] for r in records if r.reason == "IO" and r.fields["direction"] == IoDirection.OUT and r.fields["port"] == COM1
    )
