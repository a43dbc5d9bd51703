"""Issue 11, part 2: a 16-bit memory operand whose address needs more than 16 bits is refused
(keystone silently kept the low 16 bits: ``[0xa0004]`` became ``[0x0004]``, the interrupt
table, and the program died much later of a triple fault)."""

from __future__ import annotations

import pytest

from kvmlab.errors import AssemblyError, KvmlabError
from kvmlab.guest.asm import assemble


@pytest.mark.parametrize(
    "source, address",
    [
        ("mov eax, [0xa0004]", "0xa0004"),
        ("mov eax, dword ptr [0xa0004]", "0xa0004"),
        (".equ DEVICE, 0xa0000\nmov eax, [DEVICE + 4]", "0xa0004"),
        ("mov al, [bx + 0x12345]", "0x12345"),
        ("mov [MAILBOX + 4], al", "0xa0004"),  # a machine layout constant, as load() passes them
    ],
)
def test_a_16_bit_address_beyond_64_kib_is_refused_with_what_to_write(source, address):
    with pytest.raises(AssemblyError, match="does not fit in 16 bits") as caught:
        assemble(source, 16, defines={"MAILBOX": 0xA0000})
    message = str(caught.value)
    assert f"is address {address}" in message and "mov es, ax" in message, message
    assert isinstance(caught.value, KvmlabError)


def test_the_refusal_names_the_truncated_address_and_the_segment_to_use():
    with pytest.raises(AssemblyError) as caught:
        assemble("nop\nmov eax, [0xa0004]", 16, name="student.asm")
    message = str(caught.value)
    assert "line 2" in message and "silently keep 0x4 (in real mode: the interrupt vector table)" in message
    assert "mov ax, 0xa000 / mov es, ax / then es:[0x4]" in message


def test_beyond_real_modes_reach_says_to_change_mode():
    with pytest.raises(AssemblyError, match="real mode cannot reach it at all.*protected or long mode"):
        assemble("mov eax, [0x200000]", 16)


@pytest.mark.parametrize(
    "source",
    [
        "mov eax, [0xffff]",  # the largest 16-bit offset
        "mov ax, [bx - 2]",  # a negative displacement is a 16-bit one
        "mov eax, es:[0x4]",  # the right way
        "mov eax, [eax + 0xa0004]",  # 32-bit addressing (0x67): a 32-bit displacement, kept whole
        "mov al, [data]\ndata: .byte 0",  # a label: not checked (programs load below 64 KiB)
    ],
)
def test_addresses_that_fit_or_use_32_bit_addressing_assemble(source):
    assert assemble(source, 16)


def test_32_and_64_bit_code_is_not_checked():
    assert assemble("mov eax, [0xa0004]", 32) == bytes.fromhex("a104000a00")
    assert assemble("mov eax, [0xa0004]", 64)


def test_loading_such_a_program_in_real_mode_is_refused(engine, machines):
    m = machines(engine=engine, vcpus=1)
    with pytest.raises(AssemblyError, match="does not fit in 16 bits"):
        m.load("mov eax, [0xa0004]\nhlt", mode="real")
    m.load("mov eax, [0xa0004]\nhlt", mode="protected")  # flat 32-bit: the address is whole
