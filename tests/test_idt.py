"""Interrupt tables as the CPU reads them (``kvmlab.guest.idt``): gates written with
``encode_gate`` read back with ``read_gate``, and every table a CPU could not deliver through
refused with the exception it would raise instead and a message saying what to set up.
No machine: guest memory and a ``kvm_sregs``-shaped dict."""

from __future__ import annotations

import pickle
import re

import pytest

from kvmlab.errors import UndeliverableVector, VcpuError
from kvmlab.guest.idt import ENTRY_SIZES, encode_gate, read_gate
from kvmlab.guest.modes import GDT_ADDRESS, GDT_ENTRIES, PML4_ADDRESS, Mode, write_tables
from kvmlab.vstate.memory import GuestMemory
from kvmlab.x86 import Cr0, Cr4, Efer, GateType, SelectorError, Vector

IDT = 0x3000
HANDLER = 0x8123


def sregs(mode: Mode, limit: int, base: int = IDT) -> dict:
    cr0, cr4, efer, cr3 = 0x10, 0, 0, 0
    if mode is not Mode.REAL:
        cr0 |= Cr0.PE
    if mode is Mode.LONG:
        cr0 |= Cr0.PG
        cr4 |= Cr4.PAE
        efer |= Efer.LME | Efer.LMA
        cr3 = PML4_ADDRESS
    return {
        "cr0": cr0, "cr3": cr3, "cr4": cr4, "efer": efer,
        "idt": {"base": base, "limit": limit}, "gdt": {"base": GDT_ADDRESS, "limit": 8 * len(GDT_ENTRIES) - 1},
    }  # fmt: skip


@pytest.fixture
def memory():
    m = GuestMemory(2 << 20)
    write_tables(m, Mode.LONG)  # the GDT (and the page tables long mode walks)
    return m


CODE = {Mode.REAL: 0, Mode.PROTECTED: 0x08, Mode.LONG: 0x18}


@pytest.mark.parametrize("mode", list(Mode))
def test_a_gate_written_is_read_back(memory, mode):
    size = ENTRY_SIZES[mode]
    memory.write(IDT + 0x40 * size, encode_gate(HANDLER, CODE[mode], mode=mode, type=GateType.TRAP))
    gate = read_gate(memory, sregs(mode, 256 * size - 1), 0x40)
    assert (gate.vector, gate.mode, gate.address, gate.selector, gate.offset) == (0x40, mode, IDT + 0x40 * size, CODE[mode], HANDLER)
    assert gate.clears_if is (mode is Mode.REAL)  # a trap gate keeps IF; real mode always clears it
    assert str(gate).startswith("vector 64 (0x40): ")


def test_the_layouts_are_the_sdms():
    assert encode_gate(0x12345678, 0x08) == bytes.fromhex("7856 0800 00 8e 3412")
    assert encode_gate(0xFFFF_FFFF_8123_4567, 0x18, mode="long", ist=2, type=GateType.TRAP) == bytes.fromhex("6745 1800 02 8f 2381 ffffffff 00000000")
    assert encode_gate(0x8123, 0x0700, mode="real") == bytes.fromhex("2381 0007")


@pytest.mark.parametrize("mode", list(Mode))
def test_an_entry_beyond_the_limit_is_a_gp_that_names_the_entry(memory, mode):
    with pytest.raises(UndeliverableVector) as caught:
        read_gate(memory, sregs(mode, 0), 0x40)
    err = caught.value
    assert (err.vector, err.fault, err.error_code) == (0x40, Vector.GP, 0x40 << 3 | SelectorError.IDT | SelectorError.EXT)
    message = str(err)
    assert message.startswith("interrupt vector 64 (0x40) cannot be delivered: its entry (bytes")
    assert f"is beyond the table's limit; IDTR base {IDT:#x}, limit 0x0 ({mode.label} mode, {ENTRY_SIZES[mode]}-byte entries)" in message
    assert "triple-fault" in message and ("lidt" in message)


def test_an_int_n_has_no_ext_bit_in_its_error_code(memory):
    with pytest.raises(UndeliverableVector) as caught:
        read_gate(memory, sregs(Mode.PROTECTED, 0), 0x21, external=False)
    assert caught.value.error_code == 0x21 << 3 | SelectorError.IDT


@pytest.mark.parametrize(
    ("gate", "fault", "reason"),
    [
        (bytes(8), Vector.GP, "is not a gate (type 0x0: an empty entry reads 0)"),
        (encode_gate(HANDLER, 0x08, present=False), Vector.NP, "is not present (P=0)"),
        (encode_gate(HANDLER, 0), Vector.GP, "has a null code segment selector"),
        (encode_gate(HANDLER, 0x10), Vector.GP, "selector 0x10 is not a code segment"),
        (encode_gate(HANDLER, 0x28), Vector.GP, "selector 0x28 is beyond the GDT limit 0x1f"),
        (encode_gate(HANDLER, 0x0C), Vector.GP, "points into the LDT"),
    ],
)
def test_a_protected_mode_gate_the_cpu_cannot_use_is_refused_with_what_it_would_raise(memory, gate, fault, reason):
    memory.write(IDT + 8 * 0x40, gate)
    with pytest.raises(UndeliverableVector, match=re.escape(reason)) as caught:
        read_gate(memory, sregs(Mode.PROTECTED, 0x7FF), 0x40)
    assert caught.value.fault == fault


def test_a_task_gate_and_16_bit_gates_are_gates_in_protected_mode_only(memory):
    memory.write(IDT + 8 * 0x40, encode_gate(0, 0x28, type=GateType.TASK))
    assert read_gate(memory, sregs(Mode.PROTECTED, 0x7FF), 0x40).kind == "task gate"
    memory.write(IDT + 16 * 0x40, encode_gate(HANDLER, 0x18, mode="long", type=GateType.INTERRUPT_16))
    with pytest.raises(UndeliverableVector, match=r"not a 64-bit interrupt \(type 0xe\) or trap \(0xf\) gate"):
        read_gate(memory, sregs(Mode.LONG, 0xFFF), 0x40)


def test_a_long_mode_gate_needs_a_64_bit_code_segment_and_a_canonical_handler(memory):
    memory.write(IDT + 16 * 0x40, encode_gate(HANDLER, 0x08, mode="long"))  # the 32-bit code segment
    with pytest.raises(UndeliverableVector, match=r"selector 0x8 is not a 64-bit code segment \(L=0, D=1\)"):
        read_gate(memory, sregs(Mode.LONG, 0xFFF), 0x40)
    memory.write(IDT + 16 * 0x40, encode_gate(0x0000_8000_0000_0000, 0x18, mode="long"))
    with pytest.raises(UndeliverableVector, match="is not canonical"):
        read_gate(memory, sregs(Mode.LONG, 0xFFF), 0x40)


def test_a_table_in_a_page_the_guest_does_not_map_is_a_page_fault(memory):
    unmapped = 1 << 33  # beyond the 4 GiB kvmlab's long-mode page tables map
    with pytest.raises(UndeliverableVector, match="in a page the guest's page tables do not map") as caught:
        read_gate(memory, sregs(Mode.LONG, 0xFFF, base=unmapped), 0x40)
    assert (caught.value.fault, caught.value.cr2) == (Vector.PF, unmapped + 16 * 0x40)


def test_a_table_outside_ram_is_refused(memory):
    with pytest.raises(UndeliverableVector, match="is not in guest RAM"):
        read_gate(memory, sregs(Mode.REAL, 0x3FF, base=0xBF000), 0x40)


def test_the_error_is_a_vcpu_error_and_survives_pickling(memory):
    with pytest.raises(VcpuError) as caught:
        read_gate(memory, sregs(Mode.PROTECTED, 0), 0x40)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.vector, copy.fault, copy.error_code) == (str(caught.value), 0x40, Vector.GP, caught.value.error_code)
