"""Issue 11, part 1 and 2: a stopped or closed machine tells the truth about its vCPUs, and a
vCPU that died can still be looked at (``Machine.final_state``), on both engines."""

from __future__ import annotations

import pickle
import time

import pytest

from kvmlab import programs
from kvmlab.errors import MachineStateError, VcpuExitedError
from kvmlab.lab import inspect
from kvmlab.vstate.exits import ExitCode
from kvmlab.vstate.protocol import VcpuState

from .procfs import open_fds


def test_states_after_close_are_each_vcpus_final_status(engine, machines):
    """Before: ``Vm.close`` emptied ``vm.vcpus``, so ``m.states`` was [] after close."""
    m = machines(engine=engine, vcpus=2)
    m.load(programs.busy_loop(), mode="real")
    m.start()
    m.stop()
    m.close()
    assert [s.state for s in m.states] == [VcpuState.FINISHED] * 2
    halted = machines(engine=engine, vcpus=2)
    halted.load(programs.hello(), mode="real")
    halted.start()
    halted.wait(5)
    halted.close()
    assert [str(s) for s in halted.states] == ["Finished(0: HLT)"] * 2


def test_a_triple_faulted_vcpu_keeps_its_final_state_after_close(engine, machines):
    """Before: no final state at all; an exited vCPU refuses SaveState, and after close its
    registers were gone with its fd."""
    m = machines(engine=engine, vcpus=1, trace=True)
    m.load(programs.triple_fault(), mode="real")
    m.start()
    assert m.wait(10) == ExitCode.TRIPLE_FAULT
    fds = open_fds()
    m.close()
    assert len(open_fds()) < len(fds), "close released the fds"
    final = m.final_state(0)
    assert (final.exit_code, final.reason, final.exited) == (ExitCode.TRIPLE_FAULT, "SHUTDOWN (triple fault)", True)
    assert final.last_exit.reason == "SHUTDOWN"
    assert final.trace and final.trace[-1]["kind"] == "shutdown"
    code = inspect.decode_code(final.snapshot, final.code)
    assert code.instructions[0][2] == "ud2", code.text()  # the instruction that killed it
    assert code.mode == "real mode"
    assert str(final) == f"vCPU 0 exited: SHUTDOWN (triple fault), exit code 3, RIP {final.snapshot.rip:#x}"
    assert pickle.loads(pickle.dumps(final)) == final, "plain data: no fd, no mapping, no memoryview"


def test_final_state_of_a_live_vcpu_is_refused_and_a_finished_one_has_no_exit(engine, machines):
    m = machines(engine=engine, vcpus=2)
    m.load(programs.busy_loop(), mode="real")
    with pytest.raises(MachineStateError, match=r"final_state\(1\): vCPU 1 is Created"):
        m.final_state(1)
    m.start()
    m.pause(1)
    with pytest.raises(MachineStateError, match=r"pause it and call save_state\(1\)"):
        m.final_state(1)
    paused_at = m.save_state(1).rip
    m.stop()
    final = m.final_state(1)
    assert (final.exit_code, final.reason, final.exited) == (None, None, False)
    assert final.snapshot.rip == paused_at, "recorded by its own thread as it ended after Finish"
    assert str(final).startswith("vCPU 1 finished (stopped by the machine)")


def test_an_exited_vcpu_refuses_save_state_and_points_at_final_state(engine, machines):
    m = machines(engine=engine, vcpus=2)
    # vCPU 0 halts at once; vCPU 1 spins, so the machine keeps running
    m.load("test di, di\njnz spin\nhlt\nspin: jmp spin", mode="real")
    m.start()
    deadline = time.monotonic() + 5
    while m.states[0].state is not VcpuState.EXITED and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(VcpuExitedError, match=r"its last state is kept: final_state\(0\)"):
        m.save_state(0)
    assert m.final_state(0).reason == "HLT" and m.phase == "started"
