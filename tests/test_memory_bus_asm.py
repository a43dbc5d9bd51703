"""Guest memory bounds, bus overlaps and the assembler's errors (no KVM needed)."""

from __future__ import annotations

import pytest

from kvmlab.errors import AssemblyError, ConfigError, DeviceOverlapError, GuestMemoryError
from kvmlab.guest.asm import assemble, disassemble, strip_comment
from kvmlab.vstate.bus import Bus
from kvmlab.vstate.layout import Range, ram_ranges
from kvmlab.vstate.memory import GuestMemory, validate_memory_size


def test_layout_keeps_the_legacy_hole_free_of_ram():
    assert ram_ranges(2 << 20) == [Range(0, 0xA0000), Range(0x100000, 0x200000)]
    assert ram_ranges(0x40000) == [Range(0, 0x40000)]
    assert ram_ranges(0xC0000) == [Range(0, 0xA0000)]


@pytest.mark.parametrize("size", [0, -4096, 4095, 4097, 1.5, "2M"])
def test_memory_size_must_be_whole_pages(size):
    with pytest.raises(ConfigError, match="positive multiple of 4 KiB"):
        validate_memory_size(size)


def test_memory_size_has_a_cap():
    with pytest.raises(ConfigError, match="beyond kvmlab's cap"):
        validate_memory_size(4 << 30)


def test_memory_reads_and_writes_are_bounds_checked():
    memory = GuestMemory(2 << 20)
    try:
        memory.write(0x1000, b"hello")
        assert memory.read(0x1000, 5) == b"hello"
        memory.write_int(0x100000, 4, 0xDEADBEEF)
        assert memory.read_u32(0x100000) == 0xDEADBEEF
        with pytest.raises(GuestMemoryError, match=r"\[0x9fffe, 0xa0002\).*RAM is \[0x0, 0xa0000\) and \[0x100000, 0x200000\)"):
            memory.write(0x9FFFE, b"1234")  # straddles the end of low RAM
        with pytest.raises(GuestMemoryError, match="not inside RAM"):
            memory.read(0xA0000, 4)  # the device hole
        with pytest.raises(GuestMemoryError):
            memory.read(0x1FFFFF, 2)  # past the top
        with pytest.raises(GuestMemoryError, match="non-negative"):
            memory.read(-1, 1)
        assert memory.read(0x1000, 5) == b"hello", "nothing was lost"
    finally:
        memory.close()


class Nop:
    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        pass


def test_bus_rejects_overlaps_and_names_both_devices():
    bus = Bus("mmio", 1 << 32, forbidden=((Range(0, 0xA0000), "RAM"),))
    bus.insert(Nop(), 0xA0000, 0x1000, name="first")
    with pytest.raises(DeviceOverlapError, match=r"'second'.*overlaps 'first' at \[0xa0000, 0xa1000\)"):
        bus.insert(Nop(), 0xA0800, 0x1000, name="second")
    with pytest.raises(DeviceOverlapError, match="overlaps RAM"):
        bus.insert(Nop(), 0x9F000, 0x2000, name="ram-eater")
    with pytest.raises(ConfigError, match="length"):
        bus.insert(Nop(), 0xB0000, 0)
    with pytest.raises(ConfigError, match="not a bus device"):
        bus.insert(object(), 0xB0000, 4)
    bus.insert(Nop(), 0xA1000, 0x10, name="adjacent")  # touching is not overlapping
    assert [e.name for e in bus.entries] == ["first", "adjacent"]
    assert bus.resolve(0xA1000).name == "adjacent" and bus.resolve(0xA1010) is None


def test_pio_bus_ends_at_port_ffff():
    bus = Bus("pio", 0x10000)
    with pytest.raises(ConfigError, match="past the end"):
        bus.insert(Nop(), 0xFFFE, 4)


def test_assembles_in_every_mode():
    assert assemble("mov ax, 1\nhlt", 16) == bytes.fromhex("b80100f4")
    assert assemble("mov eax, 1\nhlt", 32) == bytes.fromhex("b801000000f4")
    assert assemble("mov rax, 1\nhlt", 64) == bytes.fromhex("48c7c001000000f4")
    code = assemble("start: jmp start", 32, 0x8000)
    assert disassemble(code, 32, 0x8000) == [(0x8000, code, "jmp 0x8000")]


def test_semicolons_are_comments_but_not_inside_strings():
    assert strip_comment('mov al, 1 ; note') == "mov al, 1"
    assert strip_comment('.ascii "a;b" # c') == '.ascii "a;b"'
    assert assemble('.ascii "a;b"  ; trailing', 16) == b"a;b"


@pytest.mark.parametrize(
    "source, line, message",
    [
        ("mov ax, 1\nbogus bogus\nhlt", 2, "Invalid mnemonic"),
        ("start: mov ax, 1\n  jmp nowhere\nhlt", 2, "Cannot find a symbol"),
        ("mov eax, 1\n\n; comment\nmov ecx, [esi+eax*3]\n", 4, "Invalid operand"),
        (".macro TWICE x\n  inc \\x\n  inc \\x\n.endm\nTWICE eax\nfrob eax", 6, "Invalid mnemonic"),
    ],
)
def test_assembly_errors_name_the_line(source, line, message):
    with pytest.raises(AssemblyError) as err:
        assemble(source, 32, name="cell.asm")
    assert err.value.line == line
    assert message in str(err.value) and f"cell.asm: line {line}:" in str(err.value)


def test_include_of_anything_but_a_guest_library_is_refused_instead_of_ignored():
    with pytest.raises(AssemblyError, match='line 2: .include "other.asm": kvmlab has no guest library of that name; it has idt.asm'):
        assemble('nop\n.include "other.asm"', 16)
    with pytest.raises(AssemblyError, match="line 1: .incbin, and .include of anything but kvmlab's guest libraries"):
        assemble('.incbin "blob.bin"', 16)


def test_a_guest_library_is_written_out_in_place_once():
    source = '.include "idt.asm"\n.include "idt.asm"\nIDT_LOAD\nhlt\nIDT_LIBRARY\n'
    for bits in (16, 32, 64):
        code = assemble(source, bits, 0x8000, defines={"BITS": bits})
        first = disassemble(code, bits, 0x8000, 1)[0][2]
        assert first.startswith("call"), f"the include itself adds no code: the program starts with IDT_LOAD's call, not {first}"
    assert len(assemble(source, 64, 0x8000, defines={"BITS": 64})) > 256 * 16, "long mode: the 4 KiB IDT is in the image"


def test_an_error_after_a_library_or_in_its_macros_names_the_program_line():
    with pytest.raises(AssemblyError, match=r"mine.asm: line 3: .*\n    bogus eax"):
        assemble('.include "idt.asm"\nnop\nbogus eax\n', 32, defines={"BITS": 32}, name="mine.asm")
    # The library is macros: what fails inside one is reported where the program uses it.
    with pytest.raises(AssemblyError, match=r"mine.asm: line 2: .*\n    IDT_LIBRARY"):
        assemble('.include "idt.asm"\nIDT_LIBRARY\n', 32, name="mine.asm")  # BITS undefined: the library's .if fails


def test_bad_mode_and_source_type():
    with pytest.raises(AssemblyError, match="16, 32 or 64"):
        assemble("nop", 8)
    with pytest.raises(AssemblyError, match="must be text"):
        assemble(b"\x90", 16)


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_defines_in_a_memory_operand_are_summed_not_dropped(bits):
    """keystone alone assembles [A + B] (two .equ symbols) as [B]: the defines go in as numbers."""
    code = assemble("mov dword ptr [BASE + OFFSET], ecx", bits, 0x1000, defines={"BASE": 0xA0000, "OFFSET": 0x100})
    address, raw, text = disassemble(code, bits, 0x1000)[0]
    if bits == 64:  # an absolute address in long mode is encoded RIP-relative
        assert text.startswith("mov dword ptr [rip + ") and address + len(raw) + int(text.split("+ ")[1].split("]")[0], 16) == 0xA0100
    else:
        assert text == "mov dword ptr [0xa0100], ecx"
    scaled = assemble("mov eax, [ebx*4 + BASE + OFFSET]", 32, defines={"BASE": 0xA0000, "OFFSET": 0x100})
    assert disassemble(scaled, 32)[0][2] == "mov eax, dword ptr [ebx*4 + 0xa0100]"
    text_unchanged = assemble('s: .asciz "[BASE + OFFSET]"', 32, defines={"BASE": 1, "OFFSET": 2})
    assert text_unchanged == b"[BASE + OFFSET]\0"


def test_a_memory_operand_with_two_symbols_of_the_text_is_refused_with_a_way_out():
    source = ".equ BASE, 0xa0000\n.equ DISP, 0x100\nmov dword ptr [BASE + DISP], ecx"
    with pytest.raises(AssemblyError, match=r"line 3: the memory operand \[BASE \+ DISP\] names 2 symbols .*silently drop.*\.equ BASE_DISP, BASE \+ DISP"):
        assemble(source, 32)
    fixed = ".equ BASE, 0xa0000\n.equ DISP, 0x100\n.equ BASE_DISP, BASE + DISP\nmov dword ptr [BASE_DISP], ecx"
    assert disassemble(assemble(fixed, 32), 32)[0][2] == "mov dword ptr [0xa0100], ecx"


@pytest.mark.parametrize("after", [False, True])
def test_an_error_is_found_on_its_line_before_or_after_a_macro_that_defines_labels(after):
    """The error search stubs every label; a macro's labels (IDT_LIBRARY's idt_set_gate) are
    stubbed for the lines that call them, and not for the line that defines them."""
    bad = "mov dword ptr [esp], offset h"  # keystone has no 'offset' for a label
    body = ["IDT_SET 0, h", "h: nop", "IDT_LIBRARY"]
    body.insert(3 if after else 2, bad)
    with pytest.raises(AssemblyError, match=rf"line {5 if after else 4}: Invalid operand"):
        assemble('.include "idt.asm"\n' + "\n".join(body), 32, 0x8000, defines={"BITS": 32})
