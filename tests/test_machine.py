"""``Machine``: the public API, every bad input the issue names, and the never-hang rules."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import pytest

from kvmlab import (
    AssemblyError,
    ConfigError,
    DeviceOverlapError,
    EngineUnavailableError,
    KvmUnavailableError,
    Machine,
    MachineStateError,
    MachineTimeoutError,
    VcpuExitedError,
    VcpuFinishedError,
    VcpuNotAllowedError,
    programs,
)
from kvmlab.devices import Device
from kvmlab.vstate.protocol import VcpuEvent, VcpuState

from .nobody import as_nobody



def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_issue_example_runs(engine, machines):
    m = machines(engine=engine, vcpus=2, memory_mib=2)
    m.load(programs.mmio_counter(iterations=0), mode="real")
    m.start()
    assert [s.state for s in m.states] == [VcpuState.RUNNING] * 2
    m.pause()
    assert [str(s) for s in m.states] == ["Paused", "Paused"]
    cfg = m.dump_cpu_config(0)
    assert cfg.vendor() in ("AuthenticAMD", "GenuineIntel") and cfg.msrs
    st = m.save_state(1)
    assert st.regs["rdi"] == 1 and st.sregs["cr0"] & 1 == 0, "vCPU 1 in real mode"
    m.resume()
    assert [str(s) for s in m.states] == ["Running", "Running"]
    m.pause(1)
    assert [str(s) for s in m.states] == ["Running", "Paused"]
    assert m.console.text == ""
    m.close()
    assert m.closed


@pytest.mark.kvm
def test_save_state_holds_real_data(machines):
    m = machines(vcpus=2, memory_mib=2)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    m.start()
    m.pause()
    for i in range(2):
        st = m.save_state(i)
        assert 0x8000 <= st.rip < 0x8100, "paused inside the program"
        assert st.sregs["cr0"] & 1 and st.sregs["cs"]["selector"] == 0x08 and st.sregs["gdt"]["base"] == 0x1000
        assert st.regs["rsp"] == 0xA0000 - i * 0x1000, "each vCPU has its own stack"
        assert st.fpu["fcw"] == 0x37F, "the x87 control word's reset value"
        assert len(st.xsave) >= 4096 and st.xcrs.get(0, 0) & 1, "XCR0 has x87 enabled"
        assert st.mp_state == 0, "RUNNABLE"
        assert st.debug_regs["dr7"] == 0x400
        assert 0x174 in st.msrs and 0xC0000081 in st.msrs, "SYSENTER_CS and STAR were read"
        assert st.lapic is None, "no in-kernel irqchip, so KVM keeps no LAPIC"


@pytest.mark.kvm
def test_save_state_includes_the_lapic_with_an_irqchip(machines):
    m = machines(vcpus=2, memory_mib=2, irqchip=True)
    m.load(programs.busy_loop(), mode="long")
    m.start()
    m.pause()
    for i in range(2):
        lapic = m.save_state(i).lapic
        assert len(lapic) == 1024
        assert int.from_bytes(lapic[0x20:0x24], "little") >> 24 == i, "the LAPIC ID register holds the vCPU's APIC ID"
        assert int.from_bytes(lapic[0x30:0x34], "little") & 0xFF in (0x14, 0x15), "an integrated APIC's version"


def test_save_state_and_dump_are_refused_while_running(engine, machines):
    m = machines(engine=engine, vcpus=1)
    m.load(programs.busy_loop(), mode="real")
    m.start()
    with pytest.raises(VcpuNotAllowedError, match="save/restore unavailable while running; pause it first"):
        m.save_state(0)
    with pytest.raises(VcpuNotAllowedError, match="cpu config dump is unavailable while running"):
        m.dump_cpu_config(0)
    m.pause(0)
    assert m.save_state(0).vcpu == 0


# --- bad input -------------------------------------------------------------------------------


def test_missing_kvm_says_why_and_what_to_do():
    with pytest.raises(EngineUnavailableError, match=r"engine='kvm': /dev/no-such-kvm does not exist: this machine has no KVM.*kvmlab\[emulate\]"):
        Machine(engine="kvm", kvm_path="/dev/no-such-kvm")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.kvm
def test_unpermitted_kvm_says_why_and_what_to_do():
    from kvmlab.kvm import Kvm

    def open_kvm() -> str:  # nobody may not open /dev/kvm (crw------- root)
        Kvm()
        return "opened"

    message = as_nobody(open_kvm)
    assert message.startswith("KvmUnavailableError"), message
    assert "not permitted for this user" in message and "usermod -aG kvm" in message


@pytest.mark.parametrize("vcpus", [0, -1, 1.5, True, "2"])
def test_vcpus_must_be_a_positive_whole_number(vcpus):
    with pytest.raises(ConfigError, match="vcpus="):
        Machine(vcpus=vcpus)


@pytest.mark.kvm
def test_vcpus_above_kvm_maximum():
    from kvmlab.kvm import Kvm

    with Kvm() as kvm:
        limit = kvm.max_vcpus()
    with pytest.raises(ConfigError, match=f"from 1 to {limit} \\(KVM's maximum\\)"):
        Machine(vcpus=limit + 1)


@pytest.mark.parametrize("memory_mib, message", [(0, "positive"), (-2, "positive"), (0.001, "4 KiB"), (1e-7, "whole number of bytes"), (4096, "cap")])
def test_memory_size_is_checked(memory_mib, message):
    with pytest.raises(ConfigError, match=message):
        Machine(memory_mib=memory_mib)


def test_bad_input_leaks_no_fds():
    before = _open_fds()
    for bad in ({"memory_mib": 0.001}, {"vcpus": 5000}, {"engine": "kvm", "kvm_path": "/nope"}, {"engine": "quantum"}):
        with pytest.raises((ConfigError, KvmUnavailableError)):
            Machine(**bad)
    gc.collect()
    assert _open_fds() == before


def test_program_larger_than_memory(engine, machines):
    m = machines(engine=engine, vcpus=1, memory_mib=1)
    big = "nop\n.fill 0x98000, 1, 0x90\nhlt"
    with pytest.raises(ConfigError, match=r"does not fit in RAM|stacks"):
        m.load(programs.from_source(big, "big.asm"))
    huge = ".fill 0x100000, 1, 0x90"
    with pytest.raises(ConfigError, match="does not fit in RAM"):
        m.load(huge)


def test_too_many_vcpus_for_the_stacks(engine, machines):
    m = machines(engine=engine, vcpus=60, memory_mib=0.25)  # low RAM ends at 256 KiB
    with pytest.raises(ConfigError, match="60 vCPU stacks.*Use fewer vCPUs"):
        m.load(programs.from_source(".fill 0x10000, 1, 0x90", "wide.asm"))


def test_program_over_a_device_window(engine, machines):
    m = machines(engine=engine, vcpus=1)
    with pytest.raises(ConfigError, match="over the device window of 'mailbox'"):
        m.load(programs.hello(), address=0xA0000)


def test_overlapping_devices_are_refused(engine, machines):
    m = machines(engine=engine, vcpus=1)
    with pytest.raises(DeviceOverlapError, match="overlaps 'mailbox' at \\[0xa0000, 0xa1000\\)"):
        m.add_device(Device(), 0xA0800, 0x1000)
    with pytest.raises(DeviceOverlapError, match="overlaps RAM"):
        m.add_device(Device(), 0x100000, 0x1000)
    with pytest.raises(DeviceOverlapError, match="overlaps 'serial'"):
        m.add_device(Device(), 0x3FC, 8, bus="pio")
    m.add_device(Device(), 0xA1000, 0x1000)  # right after the mailbox is fine


def test_assembly_error_names_the_line(engine, machines):
    m = machines(engine=engine, vcpus=1)
    with pytest.raises(AssemblyError, match=r"line 3: Invalid mnemonic.*\n    frobnicate eax"):
        m.load("mov eax, 1\ninc eax\nfrobnicate eax\nhlt", mode="protected")
    m.load("mov eax, 1\nhlt", mode="protected")  # nothing was lost: the machine still loads


def test_program_needing_more_vcpus(engine, machines):
    m = machines(engine=engine, vcpus=1)
    with pytest.raises(ConfigError, match="needs at least 2 vCPUs"):
        m.load(programs.mailbox_pingpong())


@pytest.mark.parametrize("factory, args", [(programs.mmio_counter, {"iterations": -1}), (programs.mmio_counter, {"read_every": 3}),
                                           (programs.exit_code, {"code": 2**32}), (programs.mailbox_pingpong, {"rounds": "many"})])  # fmt: skip
def test_program_parameters_are_checked(factory, args):
    with pytest.raises(ConfigError):
        factory(**args)


def test_unknown_mode_and_vcpu(engine, machines):
    m = machines(engine=engine, vcpus=2)
    with pytest.raises(ConfigError, match="choose 'real', 'protected' or 'long'"):
        m.load(programs.hello(), mode="unreal")
    m.load(programs.busy_loop())
    m.start()
    with pytest.raises(ConfigError, match="vCPUs 0 to 1"):
        m.pause(2)


def test_lifecycle_errors(engine, machines):
    m = machines(engine=engine, vcpus=1)
    with pytest.raises(MachineStateError, match="nothing is loaded"):
        m.start()
    with pytest.raises(MachineStateError, match="has not started"):
        m.pause()
    with pytest.raises(MachineStateError, match="has not started"):
        m.wait(0.1)
    m.load(programs.busy_loop())
    m.start()
    with pytest.raises(MachineStateError, match="only while the machine is created"):
        m.load(programs.hello())
    with pytest.raises(MachineStateError, match="starts once"):
        m.start()
    with pytest.raises(MachineTimeoutError, match="still running after 0.2 s.*call stop"):
        m.wait(0.2)
    code = m.stop()
    assert code == 0 and code.reason == "stopped by the controller"
    assert m.wait(0) is code
    with pytest.raises(MachineStateError, match="stopped"):
        m.pause()
    m.close()
    with pytest.raises(MachineStateError, match="closed"):
        m.wait(1)


def test_event_to_a_finished_vcpu_is_an_error_not_a_hang(engine, machines):
    m = machines(engine=engine, vcpus=2)
    m.load(programs.busy_loop())
    m.start()
    handles = m._vmm.handles
    m.stop()
    started = time.monotonic()
    with pytest.raises(VcpuFinishedError, match="vCPU 1 has finished.*cannot take Pause"):
        handles[1].request(VcpuEvent.PAUSE, timeout=5)
    assert time.monotonic() - started < 0.5


def test_event_to_an_exited_vcpu_gets_exited(engine, machines):
    # vCPU 0 halts at once; vCPU 1 spins, so the machine keeps running.
    m = machines(engine=engine, vcpus=2)
    m.load("test edi, edi\njz done\nspin: jmp spin\ndone: hlt", mode="protected")
    m.start()
    deadline = time.monotonic() + 5
    while m.states[0].state is not VcpuState.EXITED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert str(m.states[0]) == "Exited(0: HLT)" and m.states[1].state is VcpuState.RUNNING
    with pytest.raises(VcpuExitedError, match="vCPU 0 has exited with code 0 \\(HLT\\); it cannot take Pause"):
        m.pause(0)
    with pytest.raises(VcpuExitedError):
        m.save_state(0)
    m.pause()  # pauses the vCPUs still alive
    assert [str(s) for s in m.states] == ["Exited(0: HLT)", "Paused"]


class Exploding(Device):
    """A device whose read handler raises; writes are recorded."""

    name = "exploding"
    size = 0x10

    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        raise RuntimeError(f"boom at {offset:#x}")

    def write(self, offset, size, value):
        self.writes.append(value)


def test_a_device_that_raises_is_counted_logged_and_survived(engine, machines, caplog):
    m = machines(engine=engine, vcpus=1)
    device = Exploding()
    m.add_device(device, 0xB0000)
    source = """
        mov ebx, 0xb0000
        mov eax, 0x12345678
        mov eax, dword ptr [ebx + 4]      ; the device raises: the guest must read zeros
        mov dword ptr [ebx + 8], eax      ; write back what it read
        mov dword ptr [ebx + 8], 7        ; and keep going
        hlt
    """
    with caplog.at_level(logging.ERROR, logger="kvmlab.vcpu"):
        m.load(source, mode="protected")
        m.start()
        code = m.wait(5)
    assert code == 0 and code.reason == "every vCPU halted", "the vCPU kept running and halted normally"
    assert device.writes == [0, 7], "the failed read gave the guest zeros"
    assert m.metrics[0].device_errors == 1
    (failure,) = m.device_errors
    assert failure.device == "exploding" and failure.address == 0xB0004 and "boom at 0x4" in str(failure.error)
    assert "Traceback" in failure.traceback and "RuntimeError: boom at 0x4" in failure.traceback
    assert any("RuntimeError: boom at 0x4" in r.getMessage() for r in caplog.records), "logged with its traceback"


def test_a_device_returning_garbage_is_a_device_error(engine, machines):
    class Garbage(Device):
        size = 4

        def read(self, offset, size):
            return "not a number"

    m = machines(engine=engine, vcpus=1)
    m.add_device(Garbage(), 0xB0000)
    m.load("mov ebx, 0xb0000\nmov eax, [ebx]\nhlt", mode="protected")
    m.start()
    assert m.wait(5) == 0
    assert m.metrics[0].device_errors == 1 and "TypeError" in m.device_errors[0].traceback


# --- never hang --------------------------------------------------------------------------------


def test_close_is_fast_even_with_every_vcpu_spinning_without_exits(engine):
    m = Machine(engine=engine, vcpus=4, memory_mib=2)
    m.load(programs.busy_loop(), mode="long")
    m.start()
    time.sleep(0.2)
    started = time.monotonic()
    m.close()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"close() took {elapsed:.2f} s"
    assert not [t for t in threading.enumerate() if t.name.startswith("kvmlab")]
    m.close()  # twice is harmless


def test_close_before_start_and_twice(engine):
    m = Machine(engine=engine, vcpus=2)
    m.close()
    m.close()
    assert m.closed


def test_a_dropped_machine_releases_its_fds_and_threads(engine):
    before = _open_fds()

    def run_and_forget():
        m = Machine(engine=engine, vcpus=3, memory_mib=2)
        m.load(programs.busy_loop(), mode="protected")
        m.start()
        assert len(_open_fds()) > len(before)

    run_and_forget()
    gc.collect()
    deadline = time.monotonic() + 3
    while (_open_fds() != before or [t for t in threading.enumerate() if t.name.startswith("kvmlab")]) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert _open_fds() == before, "file descriptors leaked"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("kvmlab")]


def test_machine_as_context_manager_closes(engine):
    with Machine(engine=engine, vcpus=1) as m:
        m.load(programs.busy_loop())
        m.start()
    assert m.closed


def test_stress_4_vcpus_500_pause_resume_cycles(engine, machines):
    m = machines(engine=engine, vcpus=4, memory_mib=2)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    m.start()
    started = time.monotonic()
    for _ in range(500):
        m.pause()
        assert all(s.state is VcpuState.PAUSED for s in m.states)
        m.resume()
    elapsed = time.monotonic() - started
    for handle in m._vmm.handles:
        # every event got exactly one answer: nothing stale, nothing unasked, nothing left over
        assert handle.stale == [] and handle.unsolicited == []
        assert handle._responses.empty()
        assert next(handle._seq) == 1 + 1 + 1000, "1 resume at start + 500 pauses + 500 resumes"
    assert all(mt.exit_mmio_write > 0 for mt in m.metrics)
    assert elapsed < 60


def test_first_machine_off_the_main_thread_says_what_to_do():
    # In a fresh interpreter (here the handler is already installed by earlier tests).
    import subprocess
    import sys

    probe = (
        "import threading\nfrom kvmlab import Machine\nfrom kvmlab.errors import KickUnavailableError\nout = []\n"
        "def make():\n    try:\n        Machine()\n    except KickUnavailableError as e:\n        out.append(str(e))\n"
        "t = threading.Thread(target=make); t.start(); t.join(); print(out[0])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "must be installed from the main thread" in result.stdout, result.stdout + result.stderr
    assert "create the first Machine on the main thread" in result.stdout
