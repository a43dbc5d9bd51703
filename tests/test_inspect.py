"""The inspector's decoding and the page-table walker, on hand-built states and tables."""

from __future__ import annotations

import pytest

from kvmlab.guest.paging import NotMapped, translate
from kvmlab.lab import inspect
from kvmlab.vstate.memory import GuestMemory


@pytest.fixture
def memory():
    m = GuestMemory(4 << 20)
    yield m
    m.close()


def sregs(cr0=0, cr3=0, cr4=0, efer=0, l=0, db=0):
    return {"cr0": cr0, "cr3": cr3, "cr4": cr4, "efer": efer, "cs": {"l": l, "db": db, "base": 0}}


def test_paging_off_is_identity(memory):
    assert translate(memory, sregs(cr0=1), 0x12345) == 0x12345


def test_32_bit_paging_with_4k_and_4m_pages(memory):
    directory, table = 0x10000, 0x11000
    memory.write_int(directory + 4 * 1, 4, table | 1)  # linear 0x00400000-0x007fffff -> table
    memory.write_int(table + 4 * 5, 4, 0x200000 | 1)  # page 5 of it -> physical 0x200000
    memory.write_int(directory + 4 * 2, 4, 0x000000 | 0x81)  # a 4 MiB page at linear 0x800000 -> 0
    s = sregs(cr0=1 | (1 << 31), cr3=directory, cr4=1 << 4)
    assert translate(memory, s, 0x00405ABC) == 0x200ABC
    assert translate(memory, s, 0x00812345) == 0x012345
    with pytest.raises(NotMapped, match="page directory entry not present"):
        translate(memory, s, 0x00C00000)
    with pytest.raises(NotMapped, match="page table entry not present"):
        translate(memory, s, 0x00406000)


def test_pae_paging_with_2m_pages(memory):
    pdpt, directory = 0x20000, 0x21000
    memory.write_u64(pdpt + 8 * 1, directory | 1)  # 1-2 GiB
    memory.write_u64(directory + 8 * 3, 0x600000 | 0x81)  # a 2 MiB page (2 MiB-aligned frame)
    s = sregs(cr0=1 | (1 << 31), cr3=pdpt, cr4=1 << 5)
    assert translate(memory, s, 0x40000000 + 3 * 0x200000 + 0x1234) == 0x601234


def test_long_mode_4_level_walk_with_4k_pages(memory):
    pml4, pdpt, pd, pt = 0x30000, 0x31000, 0x32000, 0x33000
    linear = (1 << 39) * 0 + (1 << 30) * 2 + (1 << 21) * 7 + (1 << 12) * 9 + 0x55
    memory.write_u64(pml4, pdpt | 3)
    memory.write_u64(pdpt + 8 * 2, pd | 3)
    memory.write_u64(pd + 8 * 7, pt | 3)
    memory.write_u64(pt + 8 * 9, 0x123000 | 3)
    s = sregs(cr0=1 | (1 << 31), cr3=pml4, cr4=1 << 5, efer=(1 << 8) | (1 << 10), l=1)
    assert translate(memory, s, linear) == 0x123055
    with pytest.raises(NotMapped, match="not present at level 4"):
        translate(memory, s, 1 << 39)


@pytest.mark.parametrize(
    "state, mode",
    [
        (sregs(), "real mode"),
        (sregs(cr0=1, db=0), "16-bit protected mode"),
        (sregs(cr0=1, db=1), "32-bit protected mode"),
        (sregs(cr0=1 | 1 << 31, efer=1 << 10, l=1), "64-bit long mode, paging on"),
        (sregs(cr0=1 | 1 << 31, efer=1 << 10, l=0, db=1), "compatibility mode (long mode, 32-bit code), paging on"),
    ],
)
def test_cpu_mode_names(state, mode):
    assert inspect.cpu_mode(state) == mode


def test_flag_decoding():
    assert inspect.decode_rflags(0x246) == "PF ZF IF"
    assert inspect.decode_rflags(0x3002) == "IOPL=3"
    assert inspect.flag_names(0x80050033, inspect.CR0_BITS) == ["PE", "MP", "ET", "NE", "WP", "AM", "PG"]
    assert inspect.flag_names(0x500, inspect.EFER_BITS) == ["LME", "LMA"]


# --- code at RIP stops where the program ends (issue 11, part 4) ------------------------------------


def test_code_at_rip_stops_at_the_end_of_the_loaded_program(memory):
    from types import SimpleNamespace

    from kvmlab.vstate.layout import Range

    code = bytes.fromhex("90 90 f4")  # nop; nop; hlt, then zeros
    memory.write(0x1000, code)
    state = SimpleNamespace(regs={"rip": 0x1000, "rflags": 2}, sregs={**sregs(), "cs": {"l": 0, "db": 0, "base": 0}})
    view = inspect.code_at_rip(state, memory, program=Range(0x1000, 0x1000 + len(code)))
    assert [text for _, _, text in view.instructions] == ["nop", "nop", "hlt"]
    assert view.program_end == 0x1003
    assert "add byte ptr" not in view.text(), "the zeros after the program are not shown as code"
    assert view.text().splitlines()[-1].strip() == "0x00001003  -- end of the loaded program: what follows is not code"
    # RIP outside the program: the listing says its bytes may not be code
    outside = inspect.code_at_rip(SimpleNamespace(regs={"rip": 0x2000, "rflags": 2}, sregs=state.sregs), memory, program=Range(0x1000, 0x1003))
    assert "is outside the loaded program [0x1000, 0x1003)" in outside.text()


def test_newly_saved_names_the_vcpu_whose_history_grew():
    a, b, c = object(), object(), object()
    assert inspect.newly_saved({}, {1: (a,)}) == 1
    assert inspect.newly_saved({0: (a,), 1: (b,)}, {0: (a,), 1: (b, c)}) == 1
    assert inspect.newly_saved({0: (a,)}, {0: (a,)}) is None
