"""The devices as a guest driver programs them, register by register (no VM needed: these are
the device models themselves; test_boot runs a real driver against them on KVM)."""

from __future__ import annotations

import pytest

from kvmlab.devices import Console, DebugExit, Serial16550
from kvmlab.vstate.bus import GuestRequestedExit

THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
DLL, DLM = 0, 1


@pytest.fixture
def uart():
    return Serial16550(Console())


def test_divisor_latch_is_behind_dlab(uart):
    uart.write(LCR, 1, 0x83)  # DLAB on, 8N1
    uart.write(DLL, 1, 0x0C)  # 9600 baud
    uart.write(DLM, 1, 0x00)
    assert (uart.read(DLL, 1), uart.read(DLM, 1), uart.divisor) == (0x0C, 0x00, 12)
    uart.write(LCR, 1, 0x03)  # DLAB off: offsets 0/1 are THR/IER again
    uart.write(IER, 1, 0xFF)
    assert uart.read(IER, 1) == 0x0F, "IER has four interrupt enable bits"
    assert uart.divisor == 12 and uart.console.text == ""
    assert uart.read(LCR, 1) == 0x03


def test_lsr_always_has_thre_and_temt_and_dr_while_input_waits(uart):
    assert uart.read(LSR, 1) == 0x60
    uart.feed(b"ok")
    assert uart.read(LSR, 1) == 0x61
    assert bytes([uart.read(THR, 1), uart.read(THR, 1)]) == b"ok"
    assert uart.read(LSR, 1) == 0x60


def test_fcr_enables_fifos_in_iir_and_clears_the_receiver(uart):
    assert uart.read(IIR_FCR, 1) == 0x01  # no interrupt pending, 16450 mode
    uart.feed(b"stale")
    uart.write(IIR_FCR, 1, 0xC7)  # enable, clear both FIFOs, 14-byte trigger
    assert uart.read(IIR_FCR, 1) == 0xC1
    assert uart.read(LSR, 1) & 0x01 == 0


def test_loopback_feeds_thr_to_rbr_and_mirrors_mcr_in_msr(uart):
    assert uart.read(MSR, 1) == 0xB0  # DCD, DSR, CTS: a cable is there
    uart.write(MCR, 1, 0x10 | 0x0B)  # loopback, OUT2, RTS, DTR
    assert uart.read(MSR, 1) == 0x80 | 0x20 | 0x10  # DCD <- OUT2, DSR <- DTR, CTS <- RTS
    uart.write(THR, 1, ord("x"))
    assert uart.read(THR, 1) == ord("x") and uart.console.text == ""
    uart.write(MCR, 1, 0x0B)
    uart.write(THR, 1, ord("y"))
    assert uart.console.text == "y"


LSR_OE = 0x02
SENT = 1000


def _loopback_flood(uart, fcr: int) -> None:
    """The guest sends SENT bytes to itself in loopback and never reads RBR."""
    uart.write(IIR_FCR, 1, fcr)
    uart.write(MCR, 1, 0x10)
    for i in range(SENT):
        uart.write(THR, 1, i & 0xFF)


def test_loopback_overrun_keeps_a_fifo_full_and_flags_oe_until_lsr_is_read(uart):
    _loopback_flood(uart, 0x01)  # FIFOs on: the 16550's 16-byte receive FIFO
    assert uart.read(LSR, 1) == 0x60 | LSR_OE | 0x01
    assert uart.read(LSR, 1) == 0x60 | 0x01, "reading LSR clears OE"
    assert uart.rx_dropped == SENT - 16
    assert [uart.read(THR, 1) for _ in range(16)] == list(range(16)), "the bytes that arrived first are kept"
    assert uart.read(LSR, 1) == 0x60 and uart.console.text == ""


def test_loopback_overrun_without_fifos_keeps_the_last_byte_in_rbr(uart):
    _loopback_flood(uart, 0x00)  # 16450 mode: RBR holds one byte, the next overwrites it
    assert uart.read(LSR, 1) == 0x60 | LSR_OE | 0x01
    assert uart.rx_dropped == SENT - 1
    assert uart.read(THR, 1) == (SENT - 1) & 0xFF
    assert uart.read(LSR, 1) == 0x60


def test_scratch_register_round_trips(uart):
    uart.write(SCR, 1, 0x5A)
    assert uart.read(SCR, 1) == 0x5A


def test_debug_exit_write_ends_with_the_full_32_bit_code():
    device = DebugExit()
    with pytest.raises(GuestRequestedExit) as stop:
        device.write(0, 4, 0x12345678)
    assert stop.value.code == 0x12345678 and device.last_code == 0x12345678


def test_turning_the_fifos_off_or_on_clears_what_they_hold(uart):
    _loopback_flood(uart, 0x01)
    uart.read(LSR, 1)
    uart.write(IIR_FCR, 1, 0x00)  # FIFOs off: the datasheet clears both FIFOs
    assert uart.read(LSR, 1) & 0x01 == 0, "nothing left to read"
    uart.write(THR, 1, 0x41)
    uart.write(IIR_FCR, 1, 0x01)  # and on again
    assert uart.read(LSR, 1) & 0x01 == 0
