"""The emulated engine: what differs from KVM, its bad inputs, and the exactly-once guarantee
(kicks never duplicate or lose a device access) on both engines."""

from __future__ import annotations

import contextlib

import time

import pytest

from kvmlab import ConfigError, programs
from kvmlab.guest.modes import results_address
from kvmlab.vstate.exits import ExitCode
from kvmlab.vstate.protocol import VcpuState

pytestmark = pytest.mark.emulated


def test_the_machine_says_it_runs_emulated(machines):
    m = machines(vcpus=1, engine="emulated")
    assert m.engine == "emulated"
    assert "the emulated engine (Unicorn" in m.engine_note and "kvm.*" in m.engine_note
    assert m.metrics.kernel_stats_absent == "this engine has no KVM binary stats fd"
    assert not [name for name in m.metrics.names if name.startswith("kvm.")]


def test_irqchip_is_refused(machines):
    with pytest.raises(ConfigError, match="the emulated engine has no in-kernel interrupt controllers; use engine='kvm'"):
        machines(vcpus=1, engine="emulated", irqchip=True)


def test_an_instruction_the_emulator_cannot_run_ends_the_vcpu_and_says_where(machines):
    m = machines(vcpus=2, engine="emulated")
    m.load("test edi, edi\njnz spin\nmov eax, 1\nvaddps zmm0, zmm1, zmm2\nhlt\nspin: jmp spin", mode="long")
    m.start()
    code = m.wait(10)
    assert code == 1
    status = m.states[0]
    assert status.exit_code == 1
    assert "the emulated engine cannot run the instruction at 0x8009: 62 f1 74 48 58 c2 (vaddps zmm0, zmm1, zmm2); run this guest on KVM" in status.reason
    assert m.metrics.vcpu(0).failures == 1
    assert m.states[1].state is VcpuState.FINISHED, "vCPU 1 was stopped with the machine"


def test_an_exception_the_idt_cannot_deliver_is_a_triple_fault(engine, machines, caplog):
    # divide by zero with an empty IDT, in protected mode: KVM and the emulator both shut down
    m = machines(vcpus=1, engine=engine)
    m.load("mov eax, idt\nlidt [eax]\nxor ecx, ecx\nmov eax, 1\ndiv ecx\nhlt\nidt: .word 0\n.quad 0xbf000", mode="protected")
    m.start()
    code = m.wait(10)
    assert code == ExitCode.TRIPLE_FAULT and code.reason == "vCPU 0: SHUTDOWN (triple fault)"
    if engine == "emulated":
        # The emulator knows why, and says so: #DE could not be delivered, and the #GP that
        # caused is a second contributory fault, so the CPU goes straight to #DF, which fails too.
        (line,) = [r.getMessage() for r in caplog.records if "triple fault" in r.getMessage()]
        assert line.startswith("vCPU 0: triple fault (KVM_EXIT_SHUTDOWN): interrupt vector 0 (0x0) cannot be delivered: its entry")
        assert "; then interrupt vector 8 (0x8) cannot be delivered" in line and "vector 13" not in line
        assert "IDTR base 0xbf000, limit 0x0 (protected mode, 8-byte entries)" in line


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_stepping_exit_by_exit(machines, mode):
    m = machines(vcpus=1, engine="emulated")
    m.load(programs.hello(), mode=mode)
    records = [m.step() for _ in range(4)]
    assert [str(r).split(": ", 1)[1] for r in records] == [
        "KVM_EXIT_IO in port 0x3fd, 1 byte(s) x 1, data 0x60",
        "KVM_EXIT_IO out port 0x3f8, 1 byte(s) x 1, data b'H'",
        "KVM_EXIT_IO in port 0x3fd, 1 byte(s) x 1, data 0x60",
        "KVM_EXIT_IO out port 0x3f8, 1 byte(s) x 1, data b'e'",
    ]
    assert m.console.text == "He"
    while (record := m.step()).reason != "HLT":
        pass
    assert m.console.text == "Hello from vCPU 0\n"


def test_a_step_with_no_exit_times_out(machines):
    m = machines(vcpus=1, engine="emulated")
    m.load(programs.busy_loop(), mode="protected")
    from kvmlab import MachineTimeoutError

    with pytest.raises(MachineTimeoutError, match="made no exit within 0.3 s"):
        m.step(timeout=0.3)


def test_saved_state_and_cpu_config_come_from_the_emulator(machines):
    m = machines(vcpus=2, engine="emulated")
    m.load(programs.mmio_counter(iterations=0), mode="long")
    m.start()
    time.sleep(0.1)
    m.pause()
    state = m.save_state(1)
    assert state.regs["rdi"] == 1 and 0x8000 <= state.rip < 0x8100
    assert state.sregs["cr0"] & 0x80000001 == 0x80000001 and state.sregs["efer"] & 0x500 == 0x500
    assert state.sregs["cs"]["selector"] == 0x18 and state.sregs["cs"]["l"] == 1, "decoded from the guest's GDT"
    assert state.lapic is None and state.xsave is None
    assert 0x277 in state.msrs
    config = m.dump_cpu_config(0)
    leaf0 = config.cpuid_leaf(0)
    assert config.vendor() == "GenuineIntel" and leaf0.eax >= 1, "what CPUID answers inside the emulator"
    assert config.cpuid_leaf(1).edx & (1 << 0), "FPU present"
    assert any(e.function == 0x80000001 for e in config.cpuid)


def test_registers_after_the_machine_stopped(engine, machines):
    m = machines(vcpus=2, engine=engine)
    m.load(programs.mmio_counter(iterations=64), mode="protected")
    m.start()
    m.wait(10)
    for i in range(2):
        regs = m.registers(i)
        assert regs["rcx"] == 64 and regs["rdi"] == i and regs["rdx"] == 0xA0100 + 4 * i


@pytest.mark.parametrize("mode", ["real", "long"])
def test_kicks_never_duplicate_or_lose_an_access(engine, machines, mode):
    """Hundreds of pause/resume kicks land in the middle of a stream of MMIO accesses; at the
    end the guest's own tally, kvmlab's counters and the device register agree exactly."""
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.mmio_counter(iterations=40000, read_every=2), mode=mode)
    m.start()
    kicks = 0
    while m.exit is None and kicks < 200:
        try:
            m.pause()
            m.resume()
        except Exception:  # the program ended meanwhile: one vCPU exited, and refused
            for index in range(2):  # the other may be paused still: let it finish
                with contextlib.suppress(Exception):
                    m.resume(index)
            break
        kicks += 1
    assert m.wait(60) == 0
    assert kicks > 20, "the program ended before the kicks could test anything"
    for i in range(2):
        metrics = m.metrics.vcpu(i)
        assert (metrics.exit_mmio_write, metrics.exit_mmio_read) == (40000, 20000)
        assert m.results(i) == {"mmio_writes": 40000, "mmio_reads": 20000, "mismatches": 0}
        assert m.mailbox.counter(i) == 40000
        # A vCPU that reached its HLT early took no more kicks (the others may run on, and
        # how far each gets between kicks depends on the load): a floor, not a share.
        assert metrics.interrupted >= 10, "the kicks really interrupted this vCPU's runs"


def test_kicks_in_a_polling_loop_keep_the_pingpong_exact(engine, machines):
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.mailbox_pingpong(rounds=0), mode="long")
    m.start()
    for _ in range(100):
        m.pause()
        m.resume()
    m.pause()
    for i in range(2):
        # The guest counts a poll just before making it: paused in between (KVM can stop a
        # vCPU between any two instructions), it is one ahead. The emulated engine stops only
        # at block starts, and the count and the poll are in one block: there it is exact.
        polls = m.results(i)["polls"]
        least = polls if engine == "emulated" else polls - 1
        assert least <= m.metrics.vcpu(i).exit_mmio_read <= polls, "every poll the guest counted, and no more"


def test_cr2_stays_what_the_guest_wrote_across_kicks(engine, machines):
    """Before: each emulated run ended with Unicorn walking the guest's page tables for its
    'until' address, which faulted and left CR2 = 0xffff_ffff_ffff_fffe (and a #PF 'in
    flight', so the next #PF or #GP came as #DF): a page-fault handler kicked before it read
    CR2 read that instead."""
    source = """
    mov rax, 0x12345678
    mov cr2, rax
    mov rbx, RESULTS
wait:
    cmp dword ptr [rbx + 4], 0
    je wait
    mov rax, cr2
    mov dword ptr [rbx], eax
    cli
    hlt
"""
    m = machines(vcpus=1, engine=engine, sample_hz=0)
    m.load(programs.from_source(source, "cr2", results=("cr2", "go")), mode="long")
    m.start()
    for _ in range(5):
        m.pause()
        m.resume()
    m.memory.write(results_address(0) + 4, (1).to_bytes(4, "little"))
    assert int(m.wait(10)) == 0
    assert m.results(0)["cr2"] == 0x12345678
