"""Each checked exercise, run with the reference answer (passes) and with the usual wrong
answers (fails, with the hint aimed at that mistake), on both engines."""

from __future__ import annotations

import struct

import pytest

from kvmlab import exercises
from kvmlab.kvm.constants import IoDirection


def _io(records, keep):
    return b"".join(r.fields["data"] for r in records if r.reason == "IO" and keep(r))


def test_the_reference_answer_passes(engine):
    verdict = exercises.check_serial_bytes(exercises.reference_serial_bytes, engine=engine)
    assert verdict and str(verdict).startswith("Right. The guest printed")


def test_every_out_exit_is_the_port_mistake(engine):
    verdict = exercises.check_serial_bytes(lambda rs: _io(rs, lambda r: r.fields["direction"] == IoDirection.OUT), engine=engine)
    assert not verdict and "POST codes written to port 0x80" in verdict.message


def test_every_exit_at_the_port_is_the_direction_mistake(engine):
    verdict = exercises.check_serial_bytes(lambda rs: _io(rs, lambda r: r.fields["port"] == 0x3F8), engine=engine)
    assert not verdict and "IN exits carry what the device answered" in verdict.message


def test_a_crash_in_the_answer_is_a_hint_not_a_traceback(engine):
    verdict = exercises.check_serial_bytes(lambda rs: rs[0].missing, engine=engine)
    assert not verdict and "raised AttributeError" in verdict.message


def test_a_guess_cannot_pass(engine):
    """The secret is drawn per check: several different words come up, so a constant answer fails."""
    printed = set()
    for _ in range(8):
        exercises.check_serial_bytes(lambda rs: printed.add(exercises.reference_serial_bytes(rs)) or b"", engine=engine)
    assert len(printed) >= 3


def test_a_page_walk_guess_cannot_pass(engine):
    """The physical page is drawn per check: answering 'the mailbox' is wrong."""
    assert not check_page_walk(lambda memory, cr3, v: 0xA0000 | (v & 0xFFF), engine=engine, seed=5)


def test_the_memory_map_must_be_read(engine):
    verdict = check_multiboot_ram(lambda memory, info: sum(r.size for r in memory.ranges), engine=engine, seed=3)
    assert not verdict and "read_u32(address) and read_u64(address), nothing else" in verdict.message


def test_the_verdict_shows_as_html():
    html = exercises.Verdict(False, "a hint")._repr_html_()
    assert "Not yet." in html and "a hint" in html and "--jp-" in html


# --- the page walk ------------------------------------------------------------------------------

from kvmlab.exercises import ENTRY_ADDRESS, check_page_walk, reference_page_walk  # noqa: E402


def _walk(memory, cr3, virtual, *, huge=True, mask=True, offset=True, stride=8):
    table = cr3 & ENTRY_ADDRESS
    for shift in (39, 30, 21, 12):
        entry = memory.read_u64(table + stride * ((virtual >> shift) & 0x1FF))
        if huge and shift == 21 and entry & 0x80:
            return (entry & ENTRY_ADDRESS & ~0x1FFFFF) | (virtual & 0x1FFFFF)
        table = entry & ENTRY_ADDRESS if mask else entry & ~0xFFF if shift != 12 else entry
    return table | (virtual & 0xFFF) if offset else table


def test_the_reference_page_walk_passes(engine):
    verdict = check_page_walk(reference_page_walk, engine=engine)
    assert verdict and "what the CPU reported in the MMIO exits" in verdict.message


def test_each_usual_page_walk_mistake_gets_its_hint(engine):
    cases = {
        "add the offset within the page": dict(offset=False),
        "bit 7 (PS) set maps a 2 MiB page": dict(huge=False),
        "low bits are flags": dict(mask=False),
        "each entry is 8 bytes": dict(stride=1),
    }
    for hint, mistake in cases.items():
        verdict = check_page_walk(lambda m, cr3, v, mistake=mistake: _walk(m, cr3, v, **mistake), engine=engine, seed=7)
        assert not verdict and hint in verdict.message, (mistake, verdict.message)
    assert check_page_walk(lambda m, cr3, v: _walk(m, cr3, v), engine=engine, seed=7)


# --- the Multiboot memory map -------------------------------------------------------------------

from kvmlab.exercises import check_multiboot_ram, reference_multiboot_ram  # noqa: E402


def _map_sum(memory, info, *, stride=24, only_ram=True):
    length, at = memory.read_u32(info + 44), memory.read_u32(info + 48)
    return sum(memory.read_u64(at + i + 12) for i in range(0, length, stride) if not only_ram or memory.read_u32(at + i + 20) == 1)


def test_the_reference_memory_map_reader_passes(engine):
    assert check_multiboot_ram(reference_multiboot_ram, engine=engine, seed=3)


def test_each_usual_memory_map_mistake_gets_its_hint(engine):
    cases = {
        "count only type 1": dict(only_ram=False),
        "size does not count itself": dict(stride=20),
    }
    for hint, mistake in cases.items():
        verdict = check_multiboot_ram(lambda memory, info, mistake=mistake: _map_sum(memory, info, **mistake), engine=engine, seed=3)
        assert not verdict and hint in verdict.message, (mistake, verdict.message)
    in_kib = check_multiboot_ram(lambda memory, info: _map_sum(memory, info) // 1024, engine=engine, seed=3)
    assert not in_kib and "wrong unit" in in_kib.message


# --- the vCPU protocol --------------------------------------------------------------------------

from kvmlab.exercises import check_vcpu_protocol, reference_vcpu_protocol  # noqa: E402


def test_the_reference_protocol_passes(engine):
    assert check_vcpu_protocol(reference_vcpu_protocol, engine=engine)


def test_forgetting_notallowed_and_exited_gets_the_reasons(engine):
    naive = {"Pause": "Paused", "Resume": "Resumed", "SaveState": "SavedState", "DumpCpuConfig": "DumpedCpuConfig"}
    verdict = check_vcpu_protocol(lambda state, event: naive[event], engine=engine)
    assert not verdict and "6 of 12 differ" in verdict.message
    assert "registers change under you" in verdict.message and "nothing but Finish" in verdict.message


# --- the CPU mode ---------------------------------------------------------------------------------

from kvmlab.exercises import check_cpu_mode, reference_cpu_mode  # noqa: E402


def test_the_reference_cpu_mode_passes(engine):
    assert check_cpu_mode(reference_cpu_mode, engine=engine)


def test_each_usual_cpu_mode_mistake_gets_its_hint(engine):
    pe_only = check_cpu_mode(lambda s: "protected" if s["cr0"] & 1 else "real", engine=engine, seed=2)
    assert not pe_only and "it has CR0.PE set too: look at EFER.LMA" in pe_only.message
    if engine == "kvm":  # the emulator cannot run compatibility mode (notebook 04 says so)
        no_l = check_cpu_mode(lambda s: "real" if not s["cr0"] & 1 else "long" if s["efer"] & 0x400 else "protected", engine=engine, seed=2)
        assert not no_l and "CS.L decides" in no_l.message


# --- the interrupt gate (notebook 08) ------------------------------------------------------------

from kvmlab.exercises import check_interrupt_gate, reference_interrupt_gate  # noqa: E402


def test_the_reference_gate_passes(engine):
    verdict = check_interrupt_gate(reference_interrupt_gate, engine=engine)
    assert verdict, verdict
    assert "went in" in verdict.message and "type 0xE" in verdict.message


@pytest.mark.parametrize(
    "gate, hint",
    [
        (lambda h, s: bytes(16), "offset 15:0 (bytes 0-1) is 0x0"),
        (lambda h, s: struct.pack("<HHBBHII", h & 0xFFFF, s, 0, 0x8E, 0, 0, 0), "offset 31:16 (bytes 6-7) is 0x0"),
        (lambda h, s: struct.pack("<HHBBHII", h & 0xFFFF, s, 0, 0x0E, h >> 16, 0, 0), "P (byte 5, bit 7) is 0x0"),
        (lambda h, s: struct.pack("<HHBBHII", h & 0xFFFF, 0x08, 0, 0x8E, h >> 16, 0, 0), "selector (bytes 2-3) is 0x8"),
    ],
    ids=["zeros", "no-middle-offset", "not-present", "32-bit-code-segment"],
)
def test_a_wrong_gate_names_its_wrong_field(engine, gate, hint):
    verdict = check_interrupt_gate(gate, engine=engine, seed=4)
    assert not verdict and hint in verdict.message, verdict


def test_a_trap_gate_runs_but_is_not_the_answer(engine):
    trap = lambda h, s: struct.pack("<HHBBHII", h & 0xFFFF, s, 0, 0x8F, h >> 16, 0, 0)  # noqa: E731
    verdict = check_interrupt_gate(trap, engine=engine, seed=2)
    assert not verdict and "The handler ran" in verdict.message and "leaves IF set" in verdict.message


def test_a_gate_of_the_wrong_size_or_type_is_refused_before_the_guest_runs(engine):
    assert "16 bytes" in check_interrupt_gate(lambda h, s: bytes(8), engine=engine).message
    assert "raised ZeroDivisionError" in check_interrupt_gate(lambda h, s: 1 // 0, engine=engine).message
