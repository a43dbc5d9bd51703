"""Parity: every bundled program, on KVM and on the emulated engine, makes the same exits
(kind, address or port, size, data), ends with the same registers and prints the same text."""

from __future__ import annotations

import pandas as pd
import pytest

from kvmlab import programs
from kvmlab.parity import EngineRun, canonical_exits, compare, differences

PROGRAMS = {
    "hello": (programs.hello(), 3, True),
    "mmio_counter": (programs.mmio_counter(iterations=500, read_every=4), 2, True),
    "mailbox_pingpong": (programs.mailbox_pingpong(rounds=150), 2, True),
    "triple_fault": (programs.triple_fault(), 1, False),  # registers after a triple fault are undefined
    "exit_code": (programs.exit_code(code=9, delay=50), 2, False),  # vCPU 1 is stopped mid-loop
    "mailbox_irq": (programs.mailbox_irq(rounds=100), 2, True),
    "exceptions": (programs.exceptions(repeat=3), 1, True),
}


@pytest.mark.kvm
@pytest.mark.emulated
@pytest.mark.parametrize("mode", ["real", "protected", "long"])
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_both_engines_run_the_program_the_same_way(name, mode):
    program, vcpus, registers = PROGRAMS[name]
    report = compare(program, mode, vcpus=vcpus, compare_registers=registers)
    assert report.ok, f"{report}\nfirst divergence: {report.first_divergence}"
    kvm, emulated = report.runs["kvm"], report.runs["emulated"]
    if name != "exit_code":
        assert sum(len(seq) for seq in kvm.exits.values()) > 0, "there was something to compare"
    assert kvm.console == emulated.console


def test_polling_reads_collapse_to_their_outcome():
    trace = pd.DataFrame(
        {
            "vcpu": ["0"] * 6,
            "reason": ["mmio_write", "mmio_read", "mmio_read", "mmio_read", "mmio_write", "hlt"],
            "address": [0xA0004, 0xA0008, 0xA0008, 0xA0008, 0xA0004, 0],
            "size": [4, 4, 4, 4, 4, 0],
            "data": [1, 0, 0, 1, 2, 0],
        }
    )
    assert canonical_exits(trace, 1) == {0: [("mmio_write", 0xA0004, 4, 1), ("mmio_read", 0xA0008, 4, 1), ("mmio_write", 0xA0004, 4, 2), ("hlt", 0, 0, 0)]}


def test_a_hlt_the_vcpu_was_woken_from_is_a_wait_and_only_the_last_is_compared():
    trace = pd.DataFrame(
        {
            "vcpu": ["0"] * 5,
            "reason": ["mmio_write", "hlt", "mmio_read", "hlt", "hlt"],
            "address": [0xA0010, 0, 0xA0008, 0, 0],
            "size": [4, 0, 4, 0, 0],
            "data": [1, 0, 7, 0, 0],
        }
    )
    assert canonical_exits(trace, 1) == {0: [("mmio_write", 0xA0010, 4, 1), ("mmio_read", 0xA0008, 4, 7), ("hlt", 0, 0, 0)]}


def test_a_divergence_is_reported_at_the_first_differing_exit():
    same = [("io_out", 0x3F8, 1, 0x48), ("io_out", 0x3F8, 1, 0x69)]
    runs = {
        "kvm": EngineRun("kvm", 0, "every vCPU halted", "Hi", {0: same + [("hlt", 0, 0, 0)]}, {0: {"rax": 1, "rflags": 2}}),
        "emulated": EngineRun("emulated", 0, "every vCPU halted", "Ha", {0: same[:1] + [("io_out", 0x3F8, 1, 0x61)]}, {0: {"rax": 2, "rflags": 2}}),
    }
    found = differences(runs, 1)
    assert found[0] == "vCPU 0, exit #1: kvm io_out 0x3f8/1 data 0x69, emulated io_out 0x3f8/1 data 0x61"
    assert "kvm vs emulated: console 'Hi' vs 'Ha'" in found
    assert "vCPU 0: final rax 0x1 on kvm, 0x2 on emulated" in found


@pytest.mark.kvm
@pytest.mark.emulated
@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_exceptions_through_the_guests_table_run_the_same_way(mode):
    """The guest's own exceptions, each handler printing a letter: the same exits (the
    letters, then the HLT), the same final registers (the stack after every IRET, the flags
    the last IRET restored) and the same text on both engines (issue 13, part 4)."""
    from .conftest import KVM_PVM
    from .idtkit import exceptions

    int_n = not (KVM_PVM and mode != "real")  # kvm_pvm runs INT n in real mode only (measured)
    report = compare(exceptions(mode, int_n=int_n, chars=True), mode, vcpus=1)
    assert report.ok, f"{report}\nfirst divergence: {report.first_divergence}"
    assert report.runs["kvm"].console == "DDDU" + ("I" if int_n else "") + ("G" if mode == "long" else "")
