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
import struct
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence

from .devices import COM1, MAILBOX_BASE
from .errors import MachineStateError, MachineTimeoutError, VcpuExitedError
from .guest.asm import disassemble
from .guest.idt import GateDescriptor64, encode_gate
from .guest.modes import PML4_ADDRESS, Mode
from .guest.programs import Program, from_source
from .kvm.constants import IoDirection
from .machine import Machine
from .vstate.exit_record import ExitRecord
from .x86 import Cr0, Efer, Pte

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


def _call(function: Callable, *args, hint: str = "Print what your function is given to see what it holds.") -> tuple[object, Verdict | None]:
    try:
        return function(*args), None
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        return None, Verdict(False, f"Your function raised {type(err).__name__}: {err} (line {where.lineno}). {hint}")


def check_serial_bytes(function: Callable[[Sequence[ExitRecord]], bytes], *, engine: str = "auto") -> Verdict:
    """Checks ``function(records) -> bytes``: given every exit of a guest, the bytes the guest
    printed on the serial port (COM1's transmit register, port 0x3f8)."""
    secret = random.choice(WORDS)
    records, console = _exits_of(serial_guest(secret), engine)
    got, failed = _call(function, records, hint="Print one record (print(records[0].fields)) to see what it holds.")
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


# --- the page walk -------------------------------------------------------------------------------

#: free low-RAM pages for the page tables the check adds (below the program and the stacks)
_NEW_TABLES = (0x20000, 0x21000, 0x22000)
ENTRY_ADDRESS = 0x000F_FFFF_FFFF_F000


#: where the check's probe device may go: pages of the legacy hole above the mailbox's
_PROBE_PAGES = range(MAILBOX_BASE + 0x1000, 0xC0000, 0x1000)


class _Probe:
    """A page of MMIO that accepts any access: where the check's writes land, so that their
    exits name a guest-physical address the learner cannot know in advance."""

    size = 0x1000

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class _GuestMemoryReader:
    """What the learner's walk gets: reads of guest memory, and nothing that says the answer."""

    def __init__(self, memory):
        self.read_u32, self.read_u64 = memory.read_u32, memory.read_u64


def _random_mapping(rng: random.Random) -> tuple[int, int, list[tuple[int, int]]]:
    """A virtual address in a 4 KiB page of its own, the physical page it maps to (a random page
    of the legacy hole), and the (table, index) of each level's entry: PML4, PDPT, PD, PT."""
    indices = [rng.randrange(1, 256), rng.randrange(512), rng.randrange(512), rng.randrange(512)]
    offset = rng.randrange(0, 0x1000, 8)
    virtual = (indices[0] << 39) | (indices[1] << 30) | (indices[2] << 21) | (indices[3] << 12) | offset
    tables = [PML4_ADDRESS, *_NEW_TABLES]
    return virtual, rng.choice(_PROBE_PAGES), list(zip(tables, indices))


def page_walk_machine(virtual_4k: int, page: int, levels: list[tuple[int, int]], identity: int, engine: str = "auto") -> Machine:
    """A long-mode machine whose program writes to ``virtual_4k`` (mapped with a 4 KiB page onto
    the probe page at ``page``) and to ``identity`` (kvmlab's own 2 MiB identity map), then halts."""
    m = Machine(vcpus=1, memory_mib=1, engine=engine)
    try:
        m.add_device(_Probe(), page, bus="mmio")
        m.load(f"mov rax, {virtual_4k:#x}\nmov dword ptr [rax], 1\nmov rax, {identity:#x}\nmov dword ptr [rax], 2\nhlt", mode="long")
        (_, i4), (pdpt, i3), (pd, i2), (pt, i1) = levels
        memory = m.memory
        memory.write_u64(PML4_ADDRESS + 8 * i4, pdpt | Pte.PRESENT | Pte.WRITE)
        memory.write_u64(pdpt + 8 * i3, pd | Pte.PRESENT | Pte.WRITE)
        memory.write_u64(pd + 8 * i2, pt | Pte.PRESENT | Pte.WRITE)
        memory.write_u64(pt + 8 * i1, page | Pte.PRESENT | Pte.WRITE)
    except BaseException:
        m.close()
        raise
    return m


def check_page_walk(function: Callable[[object, int, int], int], *, engine: str = "auto", seed: int | None = None) -> Verdict:
    """Checks ``function(memory, cr3, virtual) -> physical``, a 4-level page walk (4 KiB and
    2 MiB pages), against the guest-physical addresses the CPU itself reported: the program
    writes through two virtual addresses, and each write is an MMIO exit naming its physical one."""
    rng = random.Random(seed)
    virtual_4k, page, levels = _random_mapping(rng)
    identity = rng.choice([p for p in _PROBE_PAGES if p != page]) + rng.randrange(0, 0x1000, 8)  # another probe page, below 2 MiB
    with page_walk_machine(virtual_4k, page, levels, identity, engine) as m:
        m.add_device(_Probe(), identity & ~0xFFF, bus="mmio")
        physical = [r.fields["phys_addr"] for r in (m.step(), m.step()) if r.reason == "MMIO"]
        if len(physical) != 2:
            return Verdict(False, "The check's own guest did not make its two MMIO writes; this is a kvmlab bug, please report it")
        cr3 = m.special_registers(0)["cr3"]
        answers = []
        for virtual in (virtual_4k, identity):
            got, failed = _call(function, _GuestMemoryReader(m.memory), cr3, virtual, hint="memory has read_u32(address) and read_u64(address), nothing else.")
            if failed is not None:
                return failed
            answers.append(got)
    (hw_4k, hw_identity), (got_4k, got_identity) = physical, answers
    if not all(isinstance(a, int) for a in answers):
        return Verdict(False, "return the physical address as an int")
    if got_4k == hw_4k and got_identity == hw_identity:
        return Verdict(
            True,
            f"{virtual_4k:#x} is physical {hw_4k:#x} through four levels (PML4 {levels[0][1]}, PDPT {levels[1][1]}, PD "
            f"{levels[2][1]}, PT {levels[3][1]}), and {identity:#x} is itself through kvmlab's 2 MiB identity map "
            "(a PD entry with PS set ends the walk a level early). Both are what the CPU reported in the MMIO exits: "
            "KVM hands the VMM guest-physical addresses (Intel SDM Vol. 3A, section 4.5).",
        )
    if got_4k == hw_4k:
        return Verdict(
            False,
            f"Your 4 KiB walk is right, but {identity:#x} should be {hw_identity:#x}, not {got_identity:#x}: a page-directory entry with bit 7 "
            "(PS) set maps a 2 MiB page; stop there and add virtual & 0x1fffff.",
        )
    if got_4k is not None and got_4k & ~0xFFF == hw_4k & ~0xFFF:
        if got_4k == hw_4k & ~0xFFF:
            return Verdict(False, "The page is right but not the byte: add the offset within the page, virtual & 0xfff.")
        return Verdict(False, "The entries' low bits are flags (present, write, ...): keep entry & 0x000f_ffff_ffff_f000 as the next table's address.")
    return Verdict(
        False,
        f"{virtual_4k:#x} should be {hw_4k:#x}, not {got_4k!r}. Each level's index is 9 bits of the virtual address: "
        "(virtual >> 39) & 0x1ff for the PML4, then >> 30, >> 21 and >> 12; each entry is 8 bytes: table + 8 * index.",
    )


def reference_page_walk(memory, cr3: int, virtual: int) -> int:
    """The answer ``check_page_walk`` expects (for the tests)."""
    table = cr3 & ENTRY_ADDRESS
    for shift in (39, 30, 21, 12):
        entry = memory.read_u64(table + 8 * ((virtual >> shift) & 0x1FF))
        if shift in (30, 21) and entry & Pte.HUGE:
            size = 1 << shift
            return (entry & ENTRY_ADDRESS & ~(size - 1)) | (virtual & (size - 1))
        table = entry & ENTRY_ADDRESS
    return table | (virtual & 0xFFF)


# --- the Multiboot memory map --------------------------------------------------------------------

#: Multiboot 0.6.96, section 3.3: the information structure's mmap_length and mmap_addr fields
MBI_MMAP_LENGTH, MBI_MMAP_ADDR = 44, 48
MMAP_AVAILABLE = 1


def check_multiboot_ram(function: Callable[[object, int], int], *, engine: str = "auto", seed: int | None = None) -> Verdict:
    """Checks ``function(memory, info) -> bytes of RAM``: reading the memory map a Multiboot
    loader (kvmlab's ``boot()``) wrote for a kernel, at guest-physical ``info``."""
    from .guest.kernels import smp_demo

    rng = random.Random(seed)
    memory_mib = rng.choice((4, 6, 8, 12, 16, 24))
    with Machine(vcpus=1, memory_mib=memory_mib, engine=engine) as m:
        m.boot(smp_demo(step_exits=1))  # boot() writes the map; the kernel need not run
        info = m.registers(0)["rbx"]  # what the kernel gets: the structure's address in EBX
        ram = sum(r.size for r in m.memory.ranges)
        got, failed = _call(function, _GuestMemoryReader(m.memory), info, hint="memory has read_u32(address) and read_u64(address), nothing else.")
        if failed is not None:
            return failed
        length = m.memory.read_u32(info + MBI_MMAP_LENGTH)
        everything = sum(m.memory.read_u64(m.memory.read_u32(info + MBI_MMAP_ADDR) + at + 12) for at in range(0, length, 24))
    if got == ram:
        return Verdict(
            True,
            f"{ram:,} bytes: the {memory_mib} MiB machine's RAM below 640 KiB and from 1 MiB up. The map also lists what "
            "is not RAM (the legacy hole, and with the in-kernel irqchip the IOAPIC and LAPIC pages) as type 2, reserved, "
            "so a kernel never takes a device's addresses for memory (Multiboot specification 0.6.96, section 3.3).",
        )
    if got == everything:
        return Verdict(False, "You added every entry: count only type 1 (available RAM); type 2 is reserved (the legacy hole, the IOAPIC and LAPIC pages).")
    if got == memory_mib << 20:
        return Verdict(False, "That is the machine's memory_mib, not what the map says: the hole from 640 KiB to 1 MiB is not RAM.")
    if isinstance(got, int) and got * 1024 == ram:
        return Verdict(False, "Right number, wrong unit: the map's lengths are in bytes (mem_lower and mem_upper are the fields in KiB).")
    return Verdict(
        False,
        f"The map says {ram:,} bytes, you returned {got!r}. Each entry is size (4 bytes), base (8), length (8), type (4); "
        "size does not count itself, so the next entry starts size + 4 bytes further.",
    )


def reference_multiboot_ram(memory, info: int) -> int:
    """The answer ``check_multiboot_ram`` expects (for the tests)."""
    length, at = memory.read_u32(info + MBI_MMAP_LENGTH), memory.read_u32(info + MBI_MMAP_ADDR)
    total, end = 0, at + length
    while at < end:
        size = memory.read_u32(at)
        if memory.read_u32(at + 20) == MMAP_AVAILABLE:
            total += memory.read_u64(at + 12)
        at += size + 4
    return total


# --- the vCPU protocol ---------------------------------------------------------------------------

#: the states and events the protocol check asks about (Firecracker's vstate/vcpu.rs rules)
PROTOCOL_STATES = ("Running", "Paused", "Exited")
PROTOCOL_EVENTS = ("Pause", "Resume", "SaveState", "DumpCpuConfig")
#: why the vCPU answers what it does, for the hint on a wrong prediction
_WHY = {
    ("Running", "SaveState"): "a running vCPU's registers change under you: it must be paused first",
    ("Running", "DumpCpuConfig"): "the CPU configuration is read while paused, like the state",
    ("Running", "Resume"): "resuming a running vCPU is harmless and acknowledged",
    ("Paused", "Pause"): "pausing a paused vCPU is harmless and acknowledged",
    ("Exited", "Pause"): "an exited vCPU takes nothing but Finish and answers every other event with its exit",
}


def _wait_exited(m: Machine, index: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while m.states[index].state.value != "Exited":
        if time.monotonic() > deadline:
            raise MachineTimeoutError(f"the check's vCPU {index} did not halt within {timeout} s; this is a kvmlab bug, please report it")
        time.sleep(0.01)


def protocol_answers(engine: str = "auto") -> dict[tuple[str, str], str]:
    """What a real vCPU thread answers to each event in each state: vCPU 0 spins (Running,
    then Paused), vCPU 1 halts at once (Exited)."""
    from .vstate.protocol import VcpuEvent

    events = {event.value: event for event in VcpuEvent}
    answers = {}
    with Machine(vcpus=2, memory_mib=1, engine=engine) as m:
        m.load("cmp di, 1\nje done\nspin: mov ax, [0]\njmp spin\ndone: hlt", mode="real")
        m.start()
        _wait_exited(m, 1)
        for state in PROTOCOL_STATES:
            index = 1 if state == "Exited" else 0
            for name in PROTOCOL_EVENTS:
                if state == "Running":
                    m.resume(0)
                elif state == "Paused":
                    m.pause(0)
                handle = m.handle(index)
                answers[(state, name)] = handle.wait_response(handle.send_event(events[name]), timeout=m.timeout).name
    return answers


def check_vcpu_protocol(function: Callable[[str, str], str], *, engine: str = "auto") -> Verdict:
    """Checks ``function(state, event) -> response name`` against what real vCPU threads answer."""
    actual = protocol_answers(engine)
    wrong = []
    for (state, event), answer in actual.items():
        guess, failed = _call(function, state, event)
        if failed is not None:
            return failed
        if str(guess).strip().lower() != answer.lower():
            why = _WHY.get((state, "Pause") if state == "Exited" else (state, event), "")
            wrong.append(f"{state} + {event}: you said {guess!r}, the vCPU answered {answer}" + (f" ({why})" if why else ""))
    if not wrong:
        return Verdict(
            True,
            f"All {len(actual)} answers match what the vCPU threads said. This is Firecracker's protocol "
            "(src/vmm/src/vstate/vcpu.rs): events go in a queue with a kick, exactly one response comes back for each, "
            "and the state decides the response, so a controller never races the vCPU.",
        )
    return Verdict(False, f"{len(wrong)} of {len(actual)} differ: " + "; ".join(wrong[:4]) + ("; ..." if len(wrong) > 4 else ""))


def reference_vcpu_protocol(state: str, event: str) -> str:
    """The answer ``check_vcpu_protocol`` expects (for the tests)."""
    if state == "Exited":
        return "Exited"
    if event in ("SaveState", "DumpCpuConfig"):
        return "NotAllowed" if state == "Running" else {"SaveState": "SavedState", "DumpCpuConfig": "DumpedCpuConfig"}[event]
    return {"Pause": "Paused", "Resume": "Resumed"}[event]


# --- the CPU mode ---------------------------------------------------------------------------------

MODES = ("real", "protected", "long", "compatibility")


def mode_cases(engine: str = "auto") -> list[tuple[str, dict]]:
    """The special registers of a vCPU in each mode, as ``Machine.special_registers`` gives them.
    Compatibility mode is long mode with a 32-bit code segment (CS.L = 0, CS.D = 1): kvmlab
    makes it by rewriting CS of a long-mode vCPU, as a 64-bit kernel does to run 32-bit code."""
    cases = []
    for mode in MODES:
        with Machine(vcpus=1, memory_mib=1, engine=engine) as m:
            m.load("hlt", mode="long" if mode == "compatibility" else mode)
            if mode == "compatibility":
                backend = m._vmm.vcpus[0].backend  # the vCPU is not running: its registers are ours
                sregs = backend.get_sregs()
                sregs.cs.l, sregs.cs.db = 0, 1
                backend.set_sregs(sregs)
            read_back = m.special_registers(0)
            if mode == "compatibility" and read_back["cs"]["l"]:
                continue  # an engine that cannot run 32-bit code in long mode (the emulator) has no such case
            cases.append((mode, read_back))
    return cases


def check_cpu_mode(function: Callable[[dict], str], *, engine: str = "auto", seed: int | None = None) -> Verdict:
    """Checks ``function(sregs) -> mode name`` on vCPUs kvmlab put in each mode, in random order."""
    cases = mode_cases(engine)
    untested = "" if any(mode == "compatibility" for mode, _ in cases) else (
        " (This engine cannot run compatibility mode, so that case was not asked: does your function tell it from long mode by CS.L?)"
    )
    random.Random(seed).shuffle(cases)
    for mode, sregs in cases:
        got, failed = _call(function, sregs)
        if failed is not None:
            return failed
        if got == mode:
            continue
        if mode in ("long", "compatibility") and got == "protected":
            return Verdict(False, f"This is {mode} mode, and it has CR0.PE set too: look at EFER.LMA (bit 10) before deciding it is protected mode.")
        if mode == "compatibility" and got == "long":
            return Verdict(False, "This vCPU has EFER.LMA set but runs 32-bit code: with LMA, CS.L decides; L = 0 is compatibility mode.")
        if mode == "real":
            return Verdict(False, f"CR0.PE (bit 0) is clear here ({sregs['cr0']:#x}): that is real mode, whatever else is set.")
        return Verdict(False, f"A vCPU in {mode} mode (CR0 {sregs['cr0']:#x}, EFER {sregs['efer']:#x}, CS.L {sregs['cs']['l']}) got {got!r}.")
    return Verdict(
        True,
        "Real mode while CR0.PE is 0; protected mode with PE and no EFER.LMA; with LMA, CS.L chooses 64-bit long mode or "
        "compatibility mode, the two halves of IA-32e mode (Intel SDM Vol. 3A, section 2.2, \"Modes of Operation\"). A VMM sets all of these with "
        "KVM_SET_SREGS, LMA included." + untested,
    )


def reference_cpu_mode(sregs: dict) -> str:
    """The answer ``check_cpu_mode`` expects (for the tests)."""
    if not sregs["cr0"] & Cr0.PE:
        return "real"
    if sregs["efer"] & Efer.LMA:
        return "long" if sregs["cs"]["l"] else "compatibility"
    return "protected"


# --- the interrupt gate --------------------------------------------------------------------------

#: where the check's guest keeps its IDT: free low RAM, above the program and below the stacks
GATE_IDT_BASE = 0x20000
#: the 64-bit code segment selector of kvmlab's long mode (its GDT: null, code32, data, code64)
LONG_MODE_CODE_SELECTOR = 0x18
#: pages of RAM above 1 MiB where the check loads its guest, so the handler's address has bits
#: in 16-31 (a gate that drops the middle of the offset sends the CPU elsewhere)
_GATE_LOAD_PAGES = range(0x140000, 0x1C0000, 0x1000)


def gate_guest(count: int) -> Program:
    """A long-mode guest with an IDT at ``GATE_IDT_BASE`` (whose entries the check writes) that
    waits in HLT until its handler ran ``count`` times. The handler is the first thing after the
    program's opening jump, so the check finds its address by decoding that jump."""
    source = f"""
    jmp start
handler:
    inc dword ptr [RESULTS]
    iretq
start:
    lidt [idt_pointer]
wait:
    cli
    cmp dword ptr [RESULTS], {count}
    jae done
    sti
    hlt                         ; STI's shadow: an interrupt after the compare wakes this HLT
    jmp wait
done:
    hlt
idt_pointer:
    .word 256 * 16 - 1
    .quad {GATE_IDT_BASE:#x}
"""
    return from_source(source, "gate_guest.asm", results=("handled",))


def _gate_fields(entry: bytes) -> dict[str, int]:
    gate = GateDescriptor64.from_buffer_copy(entry)
    low = gate.low
    return {
        "offset 15:0 (bytes 0-1)": low.offset_low, "selector (bytes 2-3)": low.selector, "IST (byte 4, bits 0-2)": low.ist,
        "type (byte 5, bits 0-3)": low.type, "S (byte 5, bit 4)": low.s, "DPL (byte 5, bits 5-6)": low.dpl,
        "P (byte 5, bit 7)": low.present, "offset 31:16 (bytes 6-7)": low.offset_middle,
        "offset 63:32 (bytes 8-11)": gate.offset_high, "reserved (bytes 12-15)": gate.reserved,
    }  # fmt: skip


def check_interrupt_gate(function: Callable[[int, int], bytes], *, engine: str = "auto", seed: int | None = None) -> Verdict:
    """Checks ``function(handler, selector) -> bytes``: the 16-byte long-mode interrupt gate
    for a handler at ``handler`` in code segment ``selector``. The check writes the gate for a
    random vector into a guest's IDT, raises that vector a random number of times, and passes
    when the guest's handler ran exactly as often as the vector was injected."""
    rng = random.Random(seed)
    vector, count, address = rng.randrange(32, 256), rng.randrange(3, 9), rng.choice(_GATE_LOAD_PAGES)
    with Machine(vcpus=1, memory_mib=2, engine=engine, sample_hz=0) as m:
        loaded = m.load(gate_guest(count), mode="long", address=address)
        handler = address + len(disassemble(loaded.code, 64, address, 1)[0][1])
        got, failed = _call(function, handler, LONG_MODE_CODE_SELECTOR, hint="It gets two ints; return 16 bytes.")
        if failed is not None:
            return failed
        if not isinstance(got, (bytes, bytearray)) or len(got) != 16:
            what = f"{len(got)} bytes" if isinstance(got, (bytes, bytearray)) else type(got).__name__
            return Verdict(False, f"Return the gate as 16 bytes (a long-mode gate is 16 bytes, twice a protected-mode one), not {what}.")
        m.memory.write(GATE_IDT_BASE + 16 * vector, bytes(got))
        m.start()
        for _ in range(count):
            try:
                m.raise_irq(vector)
            except (VcpuExitedError, MachineStateError):
                break  # a wrong gate already stopped the guest: the verdict says why
        try:
            code = m.wait(10)
        except MachineTimeoutError:
            code = None
        handled, injected = m.results(0)["handled"], m.metrics.vcpu(0).interrupts_injected
        outcome = m.exit.reason if m.exit is not None else "the guest did not finish in 10 s"
    expected = _gate_fields(encode_gate(handler, LONG_MODE_CODE_SELECTOR, mode=Mode.LONG))
    wrong = [(name, value, expected[name]) for name, value in _gate_fields(bytes(got)).items() if value != expected[name]]
    ran = code == 0 and handled == injected == count
    if ran and not wrong:
        return Verdict(
            True,
            f"Vector {vector} went in {count} times (KVM_INTERRUPT, each when the guest could take it) and the CPU entered "
            f"your handler at {handler:#x} every time through your gate: present, DPL 0, type 0xE (a 64-bit interrupt gate, "
            "which clears IF on entry), code segment 0x18, the offset split over three fields (Intel SDM Vol. 3A, 6.14.1).",
        )
    if wrong:
        name, value, want = wrong[0]
        hints = {
            "type (byte 5, bits 0-3)": "0xE is a 64-bit interrupt gate; 0xF, a trap gate, leaves IF set, so a second "
                                       "interrupt could enter the handler before it returned",
            "P (byte 5, bit 7)": "a gate the CPU may use has P = 1",
            "selector (bytes 2-3)": "the handler runs in the code segment you were given",
            "offset 31:16 (bytes 6-7)": "the handler's address is split: bits 15:0 first, 31:16 in bytes 6-7, 63:32 in bytes 8-11",
            "offset 63:32 (bytes 8-11)": "bytes 8-11 hold bits 63:32 of the address",
            "offset 15:0 (bytes 0-1)": "bytes 0-1 hold bits 15:0 of the handler's address",
        }
        more = f" ({hints[name]})" if name in hints else ""
        if ran:  # a trap gate works here: the guest's handler is short and nothing else interrupts
            happened = f"The handler ran {handled} times, but your"
        else:
            happened = f"The guest stopped ({outcome.split(' A CPU would raise')[0]}). Your"
        return Verdict(
            False,
            f"{happened} gate's {name} is {value:#x}; an interrupt gate here needs {want:#x}{more}. "
            f"{len(wrong)} field(s) differ in all.",
        )
    return Verdict(False, f"Your gate looks right, yet the handler ran {handled} times for {injected} injections ({outcome}).")


def reference_interrupt_gate(handler: int, selector: int) -> bytes:
    """The answer ``check_interrupt_gate`` expects (for the tests)."""
    return struct.pack("<HHBBHII", handler & 0xFFFF, selector, 0, 0x8E, handler >> 16 & 0xFFFF, handler >> 32, 0)
