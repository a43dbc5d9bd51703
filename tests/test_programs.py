"""Each bundled program's observable result (console text, mailbox values, results area,
exit codes, exit counters), asserted exactly, in real, protected and long mode, on both engines."""

from __future__ import annotations

import time

import pytest

from kvmlab import bench, programs
from kvmlab.errors import ConfigError
from kvmlab.devices.mailbox import COUNTERS, MAILBOX_BASE
from kvmlab.vstate.exits import ExitCode
from kvmlab.vstate.protocol import VcpuState

MODES = ["real", "protected", "long"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vcpus", [1, 2, 3])
def test_hello_prints_one_line_per_vcpu_in_order(engine, machines, mode, vcpus):
    m = machines(vcpus=vcpus, memory_mib=2, engine=engine)
    m.load(programs.hello(), mode=mode)
    m.start()
    code = m.wait(10)
    expected = "".join(f"Hello from vCPU {i}\n" for i in range(vcpus))
    assert m.console.text == expected
    assert code == 0 and code.reason == "every vCPU halted"
    assert code.vcpu_codes == {i: 0 for i in range(vcpus)}
    for i, status in enumerate(m.states):
        assert status.state is VcpuState.FINISHED and status.exit_code == 0 and status.reason == "HLT"
        line = len(f"Hello from vCPU {i}\n")
        assert m.results(i) == {"chars_sent": line, "status_polls": line}
        # one OUT to THR and one IN from LSR per character, then one HLT
        metrics = m.metrics[i]
        assert (metrics.exit_io_out, metrics.exit_io_in, metrics.exit_hlt) == (line, line, 1)
        assert metrics.io_out_by_port == {0x3F8: line} and metrics.io_in_by_port == {0x3FD: line}


def test_hello_counts_past_two_digits(engine, machines):
    m = machines(vcpus=101, memory_mib=1, engine=engine)
    m.load(programs.hello(), mode="protected")
    m.start()
    assert m.wait(30) == 0
    lines = m.console.text.splitlines()
    assert lines == [f"Hello from vCPU {i}" for i in range(101)]


@pytest.mark.parametrize("mode", MODES)
def test_mmio_counter_counts_exactly(engine, machines, mode):
    iterations, read_every = 3000, 8
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.mmio_counter(iterations=iterations, read_every=read_every), mode=mode)
    m.start()
    assert m.wait(20) == 0
    reads = iterations // read_every
    for i in range(2):
        assert m.results(i) == {"mmio_writes": iterations, "mmio_reads": reads, "mismatches": 0}
        assert m.mailbox.counter(i) == iterations
        metrics = m.metrics[i]
        register = MAILBOX_BASE + COUNTERS + 4 * i
        assert (metrics.exit_mmio_write, metrics.exit_mmio_read) == (iterations, reads)
        assert metrics.mmio_write_by_addr == {register: iterations}
        assert metrics.mmio_read_by_addr == {register: reads}
        assert metrics.exit_mmio_write_agg.count == iterations and metrics.exit_mmio_write_agg.min_ns > 0


@pytest.mark.parametrize("mode", MODES)
def test_mailbox_pingpong_completes_every_round(engine, machines, mode):
    rounds = 400
    m = machines(vcpus=3, memory_mib=2, engine=engine)
    m.load(programs.mailbox_pingpong(rounds=rounds), mode=mode)
    m.start()
    assert m.wait(20) == 0
    assert (m.mailbox.ping, m.mailbox.pong) == (rounds, rounds)
    results = m.results()
    assert results[0]["rounds"] == results[1]["rounds"] == rounds
    assert results[2] == {"rounds": 0, "polls": 0}, "vCPU 2 has no part and halts at once"
    ping, pong = m.metrics[0], m.metrics[1]
    assert ping.exit_mmio_write == rounds and pong.exit_mmio_write == rounds
    assert ping.exit_mmio_read == results[0]["polls"] >= rounds
    assert pong.exit_mmio_read == results[1]["polls"] >= rounds


def test_pausing_the_pong_vcpu_stops_the_rounds_but_not_the_polling(engine, machines):
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.mailbox_pingpong(rounds=0), mode="protected")
    m.start()
    time.sleep(0.1)
    m.pause(1)
    rounds_then = m.mailbox.pong
    polls_then = m.metrics[0].exit_mmio_read
    time.sleep(0.2)
    assert m.mailbox.pong == rounds_then, "no round completes while vCPU 1 is paused"
    assert m.metrics[0].exit_mmio_read > polls_then + 100, "vCPU 0 keeps polling"
    assert [s.state for s in m.states] == [VcpuState.RUNNING, VcpuState.PAUSED]
    m.resume(1)
    time.sleep(0.1)
    assert m.mailbox.pong > rounds_then


@pytest.mark.parametrize("mode", MODES)
def test_busy_loop_never_exits_yet_pauses(engine, machines, mode):
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.busy_loop(), mode=mode)
    m.start()
    time.sleep(0.2)
    m.pause()
    counts = [r["iterations_low"] for r in m.results()]
    assert all(c > 0 for c in counts), "the loop ran"
    time.sleep(0.1)
    assert [r["iterations_low"] for r in m.results()] == counts, "paused vCPUs do not run"
    assert all(mt.exit_mmio_read + mt.exit_mmio_write + mt.exit_io_in + mt.exit_io_out == 0 for mt in m.metrics)
    assert all(mt.interrupted >= 1 for mt in m.metrics), "only kicks got them out of KVM_RUN"
    m.resume()
    time.sleep(0.1)
    assert all(r["iterations_low"] > c for r, c in zip(m.results(), counts))


@pytest.mark.parametrize("mode", MODES)
def test_triple_fault_ends_the_machine_and_says_why(engine, machines, mode):
    # Measured on kvm_pvm and documented for hardware KVM alike: KVM_EXIT_SHUTDOWN.
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.triple_fault(), mode=mode)
    m.start()
    code = m.wait(10)
    assert code == ExitCode.TRIPLE_FAULT == 3, "a crash, not a success (Firecracker says 0: its guests reboot that way)"
    assert code.reason in ("vCPU 0: SHUTDOWN (triple fault)", "vCPU 1: SHUTDOWN (triple fault)")
    assert sum(mt.exit_shutdown for mt in m.metrics) >= 1
    assert [s.state for s in m.states] == [VcpuState.FINISHED] * 2


@pytest.mark.parametrize("mode", MODES)
def test_exit_code_stops_every_vcpu_with_the_guest_code(engine, machines, mode):
    m = machines(vcpus=3, memory_mib=2, engine=engine)
    m.load(programs.exit_code(code=42, delay=2000), mode=mode)
    m.start()
    code = m.wait(10)
    assert code == 42 and "debug-exit port write (42)" in code.reason
    assert code.vcpu_codes == {0: 42, 1: None, 2: None}, "vCPUs 1 and 2 were finished while spinning"
    assert [s.state for s in m.states] == [VcpuState.FINISHED] * 3
    assert m.results(0) == {"reported": 1}
    assert m.debug_exit.last_code == 42


@pytest.mark.parametrize("mode", MODES)
def test_exit_cost_times_every_exit_it_makes(engine, machines, mode):
    m = machines(vcpus=2, memory_mib=2, engine=engine)
    m.load(programs.exit_cost(iterations=300), mode=mode)
    m.start()
    assert m.wait(30) == 0
    for index, results in enumerate(m.results()):
        assert results["exits"] == 300 and m.metrics.vcpu(index).exit_io_out == 300
        mean, fewest = bench.cycles_per_exit(results)
        assert 0 < fewest <= mean < 1e9, f"vCPU {index}: mean {mean}, fewest {fewest} cycles"
    assert m.serial.scr == 1, "the last write (ECX = 1) went to the UART's scratch register"
    assert m.console.text == ""


def test_a_program_above_1_mib_is_clear_of_the_stacks_and_one_over_them_is_refused(machines):
    """The vCPU stacks sit at the top of low RAM (below 640 KiB): a program loaded above
    1 MiB cannot overlap them, one loaded across them can."""
    m = machines(vcpus=2, memory_mib=2, sample_hz=0)
    m.load("mov dword ptr [RESULTS], 7\ncli\nhlt", mode="long", address=0x150000)
    m.start()
    assert m.wait(10) == 0 and m.memory.read_u32(0x500) == 7
    over = machines(vcpus=2, memory_mib=2, sample_hz=0)
    with pytest.raises(ConfigError, match="vCPU stacks of 4 KiB need"):
        over.load("nop\n" * 64 + "hlt", mode="long", address=0x9E000 - 32)
