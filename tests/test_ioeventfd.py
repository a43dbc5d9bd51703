"""Doorbells (Machine.ioeventfd, issue 14 part 2) on both engines: guest writes that signal an
eventfd instead of exiting, served by the machine's I/O thread. Counts are exact; nothing here
measures time (waits have deadlines only)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kvmlab import programs
from kvmlab.errors import ConfigError, MachineStateError

from .procfs import kvmlab_threads, open_fds

BELL = 0xB0000  # outside RAM (1 MiB machines), no device: a bare doorbell
PORT = 0x90
DEVICE = 0xC0000
N = 1000

RING = """
start:
    mov ecx, COUNT
again:
    mov dword ptr [BELL], 1
    out PORT, al
    dec ecx
    jnz again
    hlt
"""

# writes 1 (matching) then 2 (not matching) COUNT times each to the device's register 0, and
# the same pair of values to its port
MATCH = """
start:
    mov ecx, COUNT
again:
    mov dword ptr [DEV], 1
    mov dword ptr [DEV], 2
    mov al, 1
    out PORT, al
    mov al, 2
    out PORT, al
    dec ecx
    jnz again
    hlt
"""

# rings register 0 of the device until its register 4 reads non-zero, then stores the number
# of rings in its results and halts
UNTIL_TOLD = """
start:
    mov ebx, RESULTS
    xor ecx, ecx
again:
    mov dword ptr [DEV], 1
    inc ecx
    mov eax, dword ptr [DEV + 4]
    test eax, eax
    jz again
    mov dword ptr [ebx], ecx
    hlt
"""


def wait_until(predicate, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.002)


class Register:
    """Counts the writes to each offset by value; offset 4 reads ``told``."""

    size = 8

    def __init__(self):
        self.writes: dict[tuple[int, int], int] = {}
        self.told = 0

    def read(self, offset: int, size: int) -> int:
        return self.told if offset == 4 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes[offset, value] = self.writes.get((offset, value), 0) + 1


class Calls:
    """A handler that records each count it was given (from the I/O thread)."""

    def __init__(self):
        self.counts: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, count: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.counts.append(count)


def test_a_guest_rings_n_times_without_a_single_exit_for_it(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    mmio, pio = Calls(), Calls()
    bell = m.ioeventfd(BELL, size=4, handler=mmio)
    port = m.ioeventfd(PORT, size=1, handler=pio, bus="pio")
    m.load(programs.from_source(RING, "ring", count=N, bell=BELL, port=PORT), mode="protected")
    m.start()
    assert m.wait(20) == 0
    metrics = m.metrics.vcpu(0)
    assert (metrics.exit_mmio_write, metrics.exit_io_out, metrics.unhandled_accesses) == (0, 0, 0), "no write left the guest"
    assert sum(mmio.counts) == sum(pio.counts) == N, "the handler's counts add up to the writes exactly"
    assert (bell.counters.signals, bell.counters.wakeups) == (N, len(mmio.counts))
    assert (port.counters.signals, port.counters.wakeups) == (N, len(pio.counts))
    assert mmio.threads == pio.threads == {"kvmlab I/O thread"}
    totals = m.metrics.current(0)
    assert totals["ioeventfd_signals"] == 2 * N and totals["ioeventfd_wakeups"] == len(mmio.counts) + len(pio.counts)
    table = m.metrics.ioeventfds()
    assert table[["bus", "address", "size", "signals"]].values.tolist() == [["mmio", BELL, 4, N], ["pio", PORT, 1, N]]
    assert table["datamatch"].tolist() == [None, None]


def test_with_datamatch_only_that_value_rings_and_the_others_reach_the_device(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    register, port_device = Register(), Register()
    m.add_device(register, DEVICE)
    m.add_device(port_device, PORT, bus="pio")
    mmio, pio = Calls(), Calls()
    bell = m.ioeventfd(DEVICE, size=4, datamatch=1, handler=mmio)
    port = m.ioeventfd(PORT, size=1, datamatch=1, handler=pio, bus="pio")
    m.load(programs.from_source(MATCH, "match", count=N, dev=DEVICE, port=PORT), mode="protected")
    m.start()
    assert m.wait(20) == 0
    assert register.writes == {(0, 2): N} and port_device.writes == {(0, 2): N}, "only the other value reached the device"
    assert sum(mmio.counts) == sum(pio.counts) == bell.counters.signals == port.counters.signals == N
    metrics = m.metrics.vcpu(0)
    assert (metrics.exit_mmio_write, metrics.exit_io_out) == (N, N)
    assert m.metrics.ioeventfds()["datamatch"].tolist() == [1, 1]


def test_a_non_matching_write_where_no_device_lives_is_open_bus(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    bell = m.ioeventfd(DEVICE, size=4, datamatch=1)  # no handler: it only counts
    m.load(programs.from_source(MATCH, "match", count=10, dev=DEVICE, port=PORT), mode="protected")
    m.start()
    assert m.wait(20) == 0
    metrics = m.metrics.vcpu(0)
    assert (bell.counters.signals, metrics.absent_mmio_write, metrics.absent_io_write) == (10, 10, 20)


def test_a_raising_handler_is_a_device_error_and_the_thread_goes_on(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    seen: list[int] = []

    def broken(count: int) -> None:
        seen.append(count)
        raise RuntimeError("doorbell handler bug")

    bell = m.ioeventfd(BELL, size=4, handler=broken)
    m.ioeventfd(PORT, size=1, bus="pio")
    m.load(programs.from_source(RING, "ring", count=N, bell=BELL, port=PORT), mode="protected")
    m.start()
    assert m.wait(20) == 0
    assert sum(seen) == bell.counters.signals == N, "every ring served although each call raised"
    assert bell.counters.errors == bell.counters.wakeups == len(seen)
    errors = m.device_errors
    assert len(errors) == len(seen) and {(e.vcpu, e.kind, e.address) for e in errors} == {(None, "doorbell", BELL)}
    assert str(errors[0]).startswith(f"the I/O thread: device 'doorbell MMIO {BELL:#x}/4' raised RuntimeError('doorbell handler bug')")
    assert m.metrics.current(0)["ioeventfd_errors"] == len(seen)


def test_registering_while_the_vcpus_run(engine, machines):
    """Allowed: KVM's io bus changes under SRCU, the emulated engine's table is swapped whole.
    Every guest write went either to the device (before) or to the doorbell (after)."""
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    register = Register()
    m.add_device(register, DEVICE)
    m.load(programs.from_source(UNTIL_TOLD, "until told", dev=DEVICE, results=("rings",)), mode="protected")
    m.start()
    wait_until(lambda: register.writes.get((0, 1), 0) >= 10, what="rings reaching the device")
    calls = Calls()
    bell = m.ioeventfd(DEVICE, size=4, handler=calls)
    wait_until(lambda: bell.counters.signals >= 10, what="rings reaching the doorbell")
    register.told = 1
    assert m.wait(20) == 0
    rings = m.results(0)["rings"]
    assert register.writes[0, 1] + bell.counters.signals == rings, "each write went one way, exactly once"
    assert sum(calls.counts) == bell.counters.signals


def test_close_deassigns_serves_what_is_left_and_gives_every_fd_back(engine):
    from kvmlab import Machine

    before = open_fds()
    calls = Calls()
    m = Machine(memory_mib=1, engine=engine)
    bell = m.ioeventfd(BELL, size=4, handler=calls)
    m.ioeventfd(PORT, size=2, bus="pio")
    os.eventfd_write(bell.fileno(), 5)  # rung, maybe not yet served when close comes
    m.close()
    assert sum(calls.counts) == bell.counters.signals == 5, "served, never lost"
    assert not bell.assigned and open_fds() == before
    assert not [t for t in kvmlab_threads() if t == "kvmlab I/O thread"]


def test_a_doorbell_closed_while_running_exits_again(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    register = Register()
    m.add_device(register, DEVICE)
    bell = m.ioeventfd(DEVICE, size=4)
    m.load(programs.from_source(UNTIL_TOLD, "until told", dev=DEVICE, results=("rings",)), mode="protected")
    m.start()
    wait_until(lambda: bell.counters.signals >= 10, what="rings reaching the doorbell")
    bell.close()
    wait_until(lambda: register.writes.get((0, 1), 0) >= 10, what="rings reaching the device again")
    register.told = 1
    assert m.wait(20) == 0
    assert register.writes[0, 1] + bell.counters.signals == m.results(0)["rings"]


def test_bad_doorbells_are_refused_with_the_reason(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    cases = [
        (dict(address=BELL, size=3), "ioeventfd(720896, size=3): size=3: a MMIO doorbell matches writes of 1, 2, 4, 8 bytes"),
        (dict(address=PORT, size=8, bus="pio"), "ioeventfd(144, size=8, bus='pio'): size=8: a PIO doorbell matches writes of 1, 2, 4 bytes"),
        (dict(address=BELL, size=4, bus="dma"), "bus='dma': 'mmio' (a guest-physical address) or 'pio' (a port)"),
        (dict(address=0x10000, size=1, bus="pio"), "address=65536: a port 0 to 0xffff, room for 1 bytes"),
        (dict(address=-1), "address=-1: a guest-physical address below 2**52, room for 4 bytes"),
        (dict(address=BELL, size=1, datamatch=0x100), "datamatch=256 does not fit in a 1-byte write (0 to 0xff), so no write could ever match it"),
        (dict(address=BELL, datamatch=-1), "datamatch=-1 does not fit in a 4-byte write"),
        (dict(address=BELL, handler=42), "handler=42 is not callable"),
        (dict(address=0x1000), "0x1000 is guest RAM (0x0-0x9ffff); a store to RAM never leaves the guest"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as err:
            m.ioeventfd(**kwargs)
        assert message in str(err.value), str(err.value)
    first = m.ioeventfd(BELL, size=4, datamatch=1)
    m.ioeventfd(BELL, size=4, datamatch=2)  # another value at the same address: virtio's notify
    collisions = [
        (dict(address=BELL, size=4, datamatch=1), "already takes these writes (KVM refuses it too: EEXIST)"),
        (dict(address=BELL, size=4), "already takes these writes"),  # any value collides with each
        (dict(address=BELL, size=2, datamatch=1), "is at the same address with another size"),
        (dict(address=BELL + 2, size=4), "overlaps <Doorbell MMIO 0xb0000/4 = 0x1, assigned, 0 signals>"),
    ]
    for kwargs, message in collisions:
        with pytest.raises(ConfigError) as err:
            m.ioeventfd(**kwargs)
        assert message in str(err.value), str(err.value)
    m.ioeventfd(BELL & 0xFFFF, size=4, bus="pio")  # port 0 on the other bus: no collision
    first.close()
    m.ioeventfd(BELL, size=4, datamatch=1)  # free again once closed
    m.stop()
    with pytest.raises(MachineStateError, match="the machine is stopped"):
        m.ioeventfd(BELL + 8)
    m.close()
    with pytest.raises(MachineStateError, match="ioeventfd\\(\\): the machine is closed"):
        m.ioeventfd(BELL + 8)


def test_the_doorbell_metrics_are_registry_metrics_with_units(engine, machines):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    for name, unit in (("ioeventfd_signals", "writes"), ("ioeventfd_wakeups", "wakeups"), ("ioeventfd_errors", "errors")):
        spec = m.metrics.spec(name)
        assert (spec.kind, spec.unit, spec.cumulative, spec.combine) == ("line", unit, True, "same")
        assert "vCPU" in spec.help
    assert m.capabilities.ioeventfd


def test_a_registration_the_engine_refuses_leaves_no_fd_and_no_doorbell(engine, machines, monkeypatch):
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    backend = m._vmm.vm.backend

    def refuse(*args):
        raise OSError(17, "File exists")

    monkeypatch.setattr(backend, "ioeventfd", refuse)
    before = open_fds()
    with pytest.raises(OSError):
        m.ioeventfd(BELL)
    assert open_fds() == before and m.metrics.ioeventfds().empty
    monkeypatch.undo()
    m.ioeventfd(BELL)  # nothing was left registered in kvmlab's table


def test_an_engine_without_doorbells_refuses_them_by_name():
    """The boundary's default: a VmBackend that does not implement ioeventfd refuses it, and
    the check above it refuses before any fd is made when the capability is off."""
    import dataclasses

    from kvmlab.engines.base import VmBackend
    from kvmlab.engines.emulated import CAPABILITIES
    from kvmlab.errors import EngineCapabilityError
    from kvmlab.metrics.lines import LineMetrics
    from kvmlab.vstate.doorbells import Doorbells

    class Bare(VmBackend):
        capabilities = dataclasses.replace(CAPABILITIES, ioeventfd=False)
        irqchip = False

        def map_memory(self, memory): ...

        def create_vcpu(self, index, count): ...

        def close(self): ...

    with pytest.raises(EngineCapabilityError, match=r"^ioeventfd\(\): the emulated engine has no ioeventfd \(KVM_IOEVENTFD\)"):
        Bare().ioeventfd(0, BELL, 4, False, None)
    before = open_fds()
    with pytest.raises(EngineCapabilityError, match=r"^ioeventfd\(720896, size=4\): the emulated engine has no ioeventfd"):
        Doorbells(Bare(), lambda: [], LineMetrics()).register(BELL)
    assert open_fds() == before


def test_a_handler_may_close_its_own_doorbell_or_stop_the_machine(engine, machines):
    """A one-shot doorbell closes itself from its handler, and a handler may stop the machine:
    neither waits on the handler that is running (the I/O thread would deadlock on itself)."""
    m = machines(memory_mib=1, engine=engine, sample_hz=0)
    calls: list[int] = []

    def once(count: int) -> None:
        calls.append(count)
        bell.close()  # its writes exit again, to the open bus

    bell = m.ioeventfd(BELL, size=4, handler=once)
    m.ioeventfd(PORT, size=1, bus="pio")
    m.load(programs.from_source(RING, "ring", count=N, bell=BELL, port=PORT), mode="protected")
    m.start()
    assert m.wait(20) == 0
    assert len(calls) >= 1 and bell.counters.signals + m.metrics.vcpu(0).absent_mmio_write == N, "every write rang or exited"

    m2 = machines(memory_mib=1, engine=engine, sample_hz=0)
    stopped = threading.Event()

    def stop(count: int) -> None:
        m2.stop()
        stopped.set()

    m2.ioeventfd(BELL, size=4, handler=stop)
    m2.ioeventfd(PORT, size=1, bus="pio")
    m2.load(programs.from_source(RING, "ring", count=N, bell=BELL, port=PORT), mode="protected")
    m2.start()
    assert stopped.wait(10), "the handler's stop() returned"
    assert m2.phase == "stopped"
    m2.close()
