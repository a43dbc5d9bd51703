"""Firecracker's vCPU tests (``src/vmm/src/vstate/vcpu.rs``, ``mod tests``), ported to kvmlab on real KVM,
each followed by a multi-vCPU version."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

import pytest

from kvmlab import programs
from kvmlab.errors import FaultyKvmExit, UnhandledKvmExit
from kvmlab.kvm import constants as kc
from kvmlab.kvm import structs as ks
from kvmlab.vstate import exits as ex
from kvmlab.vstate.exits import Emulation, Stopped, handle_kvm_exit
from kvmlab.vstate.kick import KICK_SIGNAL, install_kick_handler, signal_thread
from kvmlab.vstate.protocol import (
    DumpedCpuConfig,
    NotAllowed,
    Paused,
    Resumed,
    SavedState,
    VcpuEvent,
    VcpuResponse,
)
from kvmlab.vstate.vcpu import request_all

from .vmkit import RECV_TIMEOUT, make_vm, running_vcpus

pytestmark = pytest.mark.kvm

DEVICE_BASE = 0xD000_0000  # an MMIO window outside RAM for the dummy device


class DummyDevice:
    """Firecracker's DummyDevice, plus a record of what it saw."""

    def __init__(self):
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return 0x1122334455667788

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


@pytest.fixture
def vcpu():
    vm = make_vm(1)
    yield vm.vcpus[0]
    vm.close()


def _set_exit(vcpu, reason: int, **fields):
    """Writes a synthetic exit into the vCPU's real kvm_run page, as KVM would."""
    run = vcpu.backend.fd.run_struct
    run.exit_reason = reason
    for path, value in fields.items():
        target = run.exit
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)


def test_handle_kvm_exit(vcpu):
    p = vcpu.peripherals
    _set_exit(vcpu, kc.ExitReason.HLT)
    assert handle_kvm_exit(p, 0) == Stopped(0, "HLT", machine_wide=False)

    _set_exit(vcpu, kc.ExitReason.SHUTDOWN)
    result = handle_kvm_exit(p, 0)
    # Firecracker: Ok (its guests reboot by triple-faulting); kvmlab: an error (ExitCode docs)
    assert isinstance(result, Stopped) and result.machine_wide and result.code == 3

    _set_exit(vcpu, kc.ExitReason.FAIL_ENTRY, fail_entry__hardware_entry_failure_reason=0, fail_entry__cpu=0)
    with pytest.raises(FaultyKvmExit) as err:
        handle_kvm_exit(p, 0)
    assert str(err.value) == "FailEntry(0, 0)"

    _set_exit(vcpu, kc.ExitReason.INTERNAL_ERROR, internal__suberror=1, internal__ndata=0)
    with pytest.raises(FaultyKvmExit, match=r"^InternalError\(suberror=1 EMULATION"):
        handle_kvm_exit(p, 0)

    _set_exit(vcpu, kc.ExitReason.SYSTEM_EVENT, system_event__type=2, system_event__ndata=0)
    assert handle_kvm_exit(p, 0) == Stopped(0, "system event RESET", machine_wide=True)
    _set_exit(vcpu, kc.ExitReason.SYSTEM_EVENT, system_event__type=1, system_event__ndata=0)
    assert handle_kvm_exit(p, 0) == Stopped(0, "system event SHUTDOWN", machine_wide=True)
    _set_exit(vcpu, kc.ExitReason.SYSTEM_EVENT, system_event__type=3, system_event__ndata=0)
    with pytest.raises(FaultyKvmExit) as err:
        handle_kvm_exit(p, 0)
    assert str(err.value) == "SystemEvent(3, [])"

    # An unhandled exit reason.
    _set_exit(vcpu, kc.ExitReason.UNKNOWN)
    with pytest.raises(UnhandledKvmExit) as err:
        handle_kvm_exit(p, 0)
    assert str(err.value) == "Unexpected kvm exit received: UNKNOWN"

    _set_exit(vcpu, kc.ExitReason.DIRTY_RING_FULL)
    assert handle_kvm_exit(p, 0) is Emulation.DIRTY_RING_FULL

    assert handle_kvm_exit(p, errno.EAGAIN) is Emulation.HANDLED
    with pytest.raises(FaultyKvmExit) as err:
        handle_kvm_exit(p, errno.ENOSYS)
    assert str(err.value) == "Received ENOSYS error because KVM failed to emulate an instruction."
    with pytest.raises(FaultyKvmExit) as err:
        handle_kvm_exit(p, errno.EINVAL)
    assert str(err.value) == "Invalid argument (os error 22)"
    failures = p.metrics.failures
    with pytest.raises(FaultyKvmExit, match="Bad address"):
        handle_kvm_exit(p, errno.EFAULT)
    assert p.metrics.failures == failures, "Firecracker does not count EFAULT as a failure"

    dummy = DummyDevice()
    vcpu.peripherals.mmio_bus.insert(dummy, DEVICE_BASE, 0x10)
    _set_exit(vcpu, kc.ExitReason.MMIO, mmio__phys_addr=DEVICE_BASE + 4, mmio__len=4, mmio__is_write=0)
    assert handle_kvm_exit(p, 0) is Emulation.HANDLED
    assert dummy.reads == [(4, 4)]
    assert vcpu.backend.fd.run_struct.exit.mmio.data[:4] == [0x88, 0x77, 0x66, 0x55], "the read's data goes back to KVM"
    _set_exit(vcpu, kc.ExitReason.MMIO, mmio__phys_addr=DEVICE_BASE + 8, mmio__len=2, mmio__is_write=1)
    vcpu.backend.fd.run_struct.exit.mmio.data[0:8] = [0x34, 0x12, 0xFF, 0xFF, 0, 0, 0, 0]
    assert handle_kvm_exit(p, 0) is Emulation.HANDLED
    assert dummy.writes == [(8, 2, 0x1234)], "only len bytes of the data are the write"
    assert (p.metrics.exit_mmio_read, p.metrics.exit_mmio_write) == (1, 1)


def test_failures_are_counted_as_in_the_seed(vcpu):
    p = vcpu.peripherals
    for reason, fields in (
        (kc.ExitReason.FAIL_ENTRY, {}),
        (kc.ExitReason.INTERNAL_ERROR, {"internal__ndata": 0}),
        (kc.ExitReason.SYSTEM_EVENT, {"system_event__type": 3, "system_event__ndata": 0}),
    ):
        _set_exit(vcpu, reason, **fields)
        with pytest.raises(FaultyKvmExit):
            handle_kvm_exit(p, 0)
    for err in (errno.ENOSYS, errno.EINVAL):
        with pytest.raises(FaultyKvmExit):
            handle_kvm_exit(p, err)
    assert p.metrics.failures == 5


def test_port_io_exits_reach_the_pio_bus(vcpu):
    p = vcpu.peripherals
    dummy = DummyDevice()
    p.pio_bus.insert(dummy, 0x500, 8)
    fd = vcpu.backend.fd
    data_offset = 0x1000
    _set_exit(vcpu, kc.ExitReason.IO, io__direction=kc.KVM_EXIT_IO_OUT, io__size=1, io__port=0x503, io__count=3, io__data_offset=data_offset)
    fd.run_u8[data_offset : data_offset + 3] = b"abc"
    assert handle_kvm_exit(p, 0) is Emulation.HANDLED
    assert dummy.writes == [(3, 1, ord("a")), (3, 1, ord("b")), (3, 1, ord("c"))], "string I/O: one call per element"
    _set_exit(vcpu, kc.ExitReason.IO, io__direction=kc.KVM_EXIT_IO_IN, io__size=2, io__port=0x500, io__count=1, io__data_offset=data_offset)
    assert handle_kvm_exit(p, 0) is Emulation.HANDLED
    assert bytes(fd.run_u8[data_offset : data_offset + 2]) == b"\x88\x77"
    _set_exit(vcpu, kc.ExitReason.IO, io__direction=kc.KVM_EXIT_IO_IN, io__size=1, io__port=0x9999, io__count=1, io__data_offset=data_offset)
    assert handle_kvm_exit(p, 0) is Emulation.HANDLED
    assert fd.run_u8[data_offset] == 0xFF, "a port nobody decodes floats high"
    m = p.metrics
    assert (m.exit_io_out, m.exit_io_in, m.unhandled_accesses) == (1, 2, 1)
    assert m.io_out_by_port == {0x503: 1} and m.io_in_by_port == {0x500: 1, 0x9999: 1}


def test_set_mmio_bus(vcpu):
    # Firecracker's test checks the bus can be attached; here every vCPU shares the VM's buses.
    assert vcpu.peripherals.mmio_bus is not None
    dummy = DummyDevice()
    entry = vcpu.peripherals.mmio_bus.insert(dummy, DEVICE_BASE, 0x10)
    assert vcpu.peripherals.mmio_bus.resolve(DEVICE_BASE + 0xF) is entry
    assert vcpu.peripherals.mmio_bus.resolve(DEVICE_BASE + 0x10) is None


def test_vcpu_kick():
    """The kick (immediate_exit + SIGRTMIN) gets a thread out of a KVM_RUN that would never
    return by itself: the vCPU runs a loop with no exits."""
    install_kick_handler()
    vm = make_vm(1)
    try:
        from kvmlab.guest.loader import load_program

        from .vmkit import LAYOUT

        load_program(vm, programs.busy_loop(), "protected", LAYOUT)
        fd = vm.vcpus[0].backend.fd
        result = {}
        entered = threading.Event()

        def run():
            entered.set()
            result["errno"] = fd.run()

        thread = threading.Thread(target=run, name="kvmlab test kick")
        thread.start()
        entered.wait()
        time.sleep(0.2)  # well inside KVM_RUN by now
        assert thread.is_alive(), "KVM_RUN returned by itself from a loop with no exits"
        fd.set_kvm_immediate_exit(1)
        signal_thread(thread.ident)
        thread.join(2)
        assert not thread.is_alive() and result["errno"] == errno.EINTR
        # The loop really ran inside the guest before the kick.
        assert vm.memory.read_u32(0x500) > 0
    finally:
        vm.close()


def test_vcpu_rtsig_offset():
    assert KICK_SIGNAL == signal.SIGRTMIN
    assert signal.SIGRTMIN <= KICK_SIGNAL <= signal.SIGRTMAX
    install_kick_handler()
    assert signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def queue_event_expect_response(handle, event: VcpuEvent, response_type: type[VcpuResponse]) -> VcpuResponse:
    """Firecracker's helper: send an event, expect a particular response within the timeout."""
    response = handle.request(event, RECV_TIMEOUT)
    assert isinstance(response, response_type), f"{event} -> {response!r}, expected {response_type.__name__}"
    return response


def test_immediate_exit_shortcircuits_execution():
    vm = make_vm(1)
    try:
        vcpu = vm.vcpus[0]
        stats = vcpu.backend.kernel_stats()
        exits_before = stats.read()["exits"]
        vcpu.backend.fd.set_kvm_immediate_exit(1)
        assert vcpu.run_emulation() is Emulation.INTERRUPTED, "the immediate-exit short-circuit should have prevented KVM_RUN"
        assert stats.read()["exits"] == exits_before, "KVM was entered after all"
        assert vcpu.backend.fd.immediate_exit == 0

        vcpu.events.put((VcpuEvent.RESUME, 1))
        vcpu.backend.fd.set_kvm_immediate_exit(1)
        # paused is expected to coerce immediate_exit to 0 when receiving a Resume
        assert vcpu.paused() == vcpu.running
        assert vcpu.backend.fd.immediate_exit == 0, "Immediate Exit should have been disabled by sending Resume to a paused vCPU"
        assert isinstance(vcpu.responses.get_nowait(), Resumed)
    finally:
        vm.close()


@pytest.mark.parametrize("vcpus", [1, 4])
def test_vcpu_pause_resume(vcpus):
    with running_vcpus(programs.mmio_counter(iterations=0), "protected", vcpus=vcpus) as (vm, handles):
        for handle in handles:
            queue_event_expect_response(handle, VcpuEvent.RESUME, Resumed)
            queue_event_expect_response(handle, VcpuEvent.PAUSE, Paused)
        # The vCPUs handled the EINTR gracefully and did not exit.
        with pytest.raises(BlockingIOError):
            os.eventfd_read(vm.exit_evt)
        sequence = [
            (VcpuEvent.PAUSE, Paused),
            (VcpuEvent.RESUME, Resumed),
            (VcpuEvent.RESUME, Resumed),
            (VcpuEvent.PAUSE, Paused),
            (VcpuEvent.RESUME, Resumed),
        ]
        for event, response_type in sequence:
            answers = request_all(handles, event, RECV_TIMEOUT)
            assert all(isinstance(a, response_type) for a in answers), answers
        # While resumed, every vCPU makes progress on its own counter.
        counts = [vm.vcpus[i].peripherals.metrics.exit_mmio_write for i in range(vcpus)]
        time.sleep(0.1)
        assert all(vm.vcpus[i].peripherals.metrics.exit_mmio_write > counts[i] for i in range(vcpus))


@pytest.mark.parametrize("vcpus", [1, 3])
def test_vcpu_save_state_events(vcpus):
    with running_vcpus(programs.mmio_counter(iterations=0), "long", vcpus=vcpus) as (vm, handles):
        for handle in handles:
            queue_event_expect_response(handle, VcpuEvent.RESUME, Resumed)
            response = queue_event_expect_response(handle, VcpuEvent.SAVE_STATE, NotAllowed)
            assert response.reason == "save/restore unavailable while running"
            queue_event_expect_response(handle, VcpuEvent.PAUSE, Paused)
            saved = queue_event_expect_response(handle, VcpuEvent.SAVE_STATE, SavedState).state
            assert saved.vcpu == handle.index
            assert saved.regs["rdi"] == handle.index, "each vCPU has its index in RDI"
            assert saved.sregs["efer"] & 0x500 == 0x500 and saved.sregs["cs"]["l"] == 1, "long mode"


def test_vcpu_dump_cpu_config():
    with running_vcpus(programs.mmio_counter(iterations=0), "real", vcpus=2) as (vm, handles):
        for handle in handles:
            config = queue_event_expect_response(handle, VcpuEvent.DUMP_CPU_CONFIG, DumpedCpuConfig).config
            assert config.vcpu == handle.index
            # The CPUID actually set on each vCPU carries its own APIC ID.
            assert config.cpuid_leaf(1).ebx >> 24 == handle.index
            assert config.cpuid_leaf(0xB, 0).edx == handle.index
            assert config.msrs, "MSR values were read from the vCPU"
        for handle in handles:
            queue_event_expect_response(handle, VcpuEvent.RESUME, Resumed)
            # The DumpCpuConfig event is only allowed while paused.
            response = queue_event_expect_response(handle, VcpuEvent.DUMP_CPU_CONFIG, NotAllowed)
            assert response.reason == "cpu config dump is unavailable while running"


def test_two_queued_events_are_both_answered_on_a_loop_without_exits():
    """Two events sent back to back (two kicks, one possibly landing outside KVM_RUN) must
    both be read even though the guest never exits by itself."""
    with running_vcpus(programs.busy_loop(), "protected") as (vm, (handle,)):
        queue_event_expect_response(handle, VcpuEvent.RESUME, Resumed)
        for _ in range(50):
            first = handle.send_event(VcpuEvent.SAVE_STATE)
            second = handle.send_event(VcpuEvent.PAUSE)
            assert isinstance(handle.wait_response(first, RECV_TIMEOUT), NotAllowed)
            assert isinstance(handle.wait_response(second, RECV_TIMEOUT), Paused)
            queue_event_expect_response(handle, VcpuEvent.RESUME, Resumed)
