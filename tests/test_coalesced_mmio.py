"""Coalesced MMIO on both engines: writes to a zone wait in a ring and reach the device
exactly once and in order, at the next exit, a pause, the stop or the close; a read that exits
sees every earlier write; bad zones and registers with side effects are refused with the reason.

The device log is the mailbox's bus entry wrapped: every write that reaches the device, in the
order it reached it. The guest (``programs.mmio_counter``) writes 1, 2, 3, ... to its counter.
"""

from __future__ import annotations

import time

import pytest

from kvmlab import ConfigError, Machine, programs
from kvmlab.devices.base import Device
from kvmlab.devices.mailbox import COUNTERS, MAILBOX_BASE
from kvmlab.errors import MachineStateError
from kvmlab.metrics import trace as kinds
from kvmlab.vstate.coalesced import RING_ENTRIES
from kvmlab.kvm.constants import KVM_COALESCED_MMIO_MAX


def _log_writes(m: Machine) -> dict[int, list[int]]:
    """Wraps the mailbox's bus entry: offset -> values written, in arrival order."""
    entry = next(e for e in m.mmio_bus.entries if e.device is m.mailbox)
    log: dict[int, list[int]] = {}
    write = entry.write

    def logged(offset, size, value):
        log.setdefault(offset, []).append(value)
        write(offset, size, value)

    entry.write = logged
    return log


def _machine(engine, iterations, read_every=0, vcpus=1, **kwargs) -> tuple[Machine, dict]:
    m = Machine(vcpus=vcpus, memory_mib=2, engine=engine, **kwargs)
    m.load(programs.mmio_counter(iterations=iterations, read_every=read_every), mode="real")
    return m, _log_writes(m)


def test_ring_layout_matches_kvm():
    assert RING_ENTRIES == KVM_COALESCED_MMIO_MAX == 170


def test_exact_accounting_and_fewer_exits(engine):
    n = 5000
    m, log = _machine(engine, n)
    with m:
        zone = m.coalesce_mmio(m.mailbox, register="COUNTER0")
        assert (zone.address, zone.size, zone.register) == (MAILBOX_BASE + COUNTERS, 4, "COUNTER0")
        m.start()
        assert m.wait(60) == 0
        v = m.metrics.vcpu(0)
        assert log[COUNTERS] == list(range(1, n + 1))  # every write once, in order
        assert m.mailbox.counter(0) == n
        assert m.results(0)["mmio_writes"] == n
        assert v.exit_mmio_write + v.coalesced_mmio_write == n
        assert v.exit_mmio_write <= n // (RING_ENTRIES - 10) + 2  # one exit per full ring, about
        assert v.coalesced_drains >= 1
        zones = m.metrics.coalesced_zones()
        assert zones.loc[0, "writes"] == v.coalesced_mmio_write
        assert zones.loc[0, "drains"] == v.coalesced_drains
        assert m.metrics.totals()["coalesced_mmio_write"].iloc[-1] == v.coalesced_mmio_write


def test_without_a_zone_every_write_exits(engine):
    m, log = _machine(engine, 2000)
    with m:
        assert all(vcpu.peripherals.coalesced is None for vcpu in m._vmm.vcpus)  # the exit path's one test
        m.start()
        m.wait(60)
        v = m.metrics.vcpu(0)
        assert (v.exit_mmio_write, v.coalesced_mmio_write, v.coalesced_drains) == (2000, 0, 0)


def test_a_read_that_exits_sees_every_earlier_write(engine):
    n = 4000
    m, log = _machine(engine, n, read_every=8)
    with m:
        m.coalesce_mmio(m.mailbox, register="COUNTER0")
        m.start()
        m.wait(60)
        results = m.results(0)
        assert results == {"mmio_writes": n, "mmio_reads": n // 8, "mismatches": 0}
        assert log[COUNTERS] == list(range(1, n + 1))
        v = m.metrics.vcpu(0)
        assert v.exit_mmio_read == n // 8
        assert v.exit_mmio_write < n // 8  # the reads drain the ring, so writes rarely find it full


def test_two_vcpus_one_zone_over_both_counters(engine):
    n = 3000
    m, log = _machine(engine, n, vcpus=2)
    with m:
        m.coalesce_mmio(MAILBOX_BASE + COUNTERS, 8)
        m.start()
        m.wait(60)
        assert log[COUNTERS] == list(range(1, n + 1))
        assert log[COUNTERS + 4] == list(range(1, n + 1))
        total = sum(m.metrics.vcpu(i).exit_mmio_write + m.metrics.vcpu(i).coalesced_mmio_write for i in range(2))
        assert total == 2 * n
        assert m.metrics.coalesced_zones().loc[0, "writes"] == sum(m.metrics.vcpu(i).coalesced_mmio_write for i in range(2))


def test_pause_resume_storm_loses_nothing(engine):
    m, log = _machine(engine, 0)  # forever
    with m:
        m.coalesce_mmio(m.mailbox, register="COUNTER0")
        m.start()
        for _ in range(40):
            time.sleep(0.002)
            m.pause()
            made = m.results(0)["mmio_writes"]  # the guest counts a write in RAM just after making it
            seen = log[COUNTERS] if COUNTERS in log else []
            # a Pause is answered after a drain: the device has every write the guest made
            assert len(seen) in (made, made + 1)
            assert m.mailbox.counter(0) == len(seen)
            m.resume()
        m.stop()
        seen = log[COUNTERS]
        assert seen == list(range(1, len(seen) + 1))
        v = m.metrics.vcpu(0)
        assert v.exit_mmio_write + v.coalesced_mmio_write == len(seen)


def test_close_drains_every_write(engine):
    m, log = _machine(engine, 0)
    zone = m.coalesce_mmio(m.mailbox, register="COUNTER0")
    m.start()
    time.sleep(0.05)
    m.close()  # stops a running machine: what the ring held reaches the device
    seen = log[COUNTERS]
    assert len(seen) > RING_ENTRIES
    assert seen == list(range(1, len(seen) + 1))
    assert m.mailbox.counter(0) == len(seen)
    v = m.metrics.vcpu(0)
    assert v.exit_mmio_write + v.coalesced_mmio_write == len(seen)
    assert zone.writes == v.coalesced_mmio_write


def test_register_and_unregister_while_running(engine):
    """Allowed: a zone registered while the guest runs coalesces from then on, one removed
    while it runs delivers what it queued first; the device still sees every write once, in order."""
    n = 200_000 if engine == "kvm" else 100_000
    m, log = _machine(engine, n)
    with m:
        m.start()
        time.sleep(0.02)
        zone = m.coalesce_mmio(m.mailbox, register="COUNTER0")
        time.sleep(0.05)
        m.uncoalesce_mmio(zone)
        assert not zone.open
        m.wait(60)
        assert log[COUNTERS] == list(range(1, n + 1))
        v = m.metrics.vcpu(0)
        assert v.exit_mmio_write + v.coalesced_mmio_write == n
        assert v.coalesced_mmio_write > 0
        assert m.metrics.coalesced_zones().loc[0, "open"] == False  # noqa: E712 (a numpy bool)


def test_trace_has_one_row_per_coalesced_write(engine):
    n = 1000
    m, log = _machine(engine, n, trace=True)
    with m:
        m.coalesce_mmio(m.mailbox, register="COUNTER0")
        m.start()
        m.wait(60)
        frame = m.metrics.trace_dataframe()
        assert (frame["reason"] == "coalesced_mmio_write").sum() == m.metrics.vcpu(0).coalesced_mmio_write
        assert (frame["reason"] == "mmio_write").sum() == m.metrics.vcpu(0).exit_mmio_write
        writes = frame[frame["reason"].isin(["mmio_write", "coalesced_mmio_write"])]
        assert [int(value) for value in writes["data"]] == list(range(1, n + 1))  # the trace in the device's order
        assert kinds.KIND_NAMES[kinds.COALESCED_MMIO_WRITE] == "coalesced_mmio_write"


@pytest.mark.parametrize(
    "register, reason",
    [
        ("PING", "PING: its write is the ping-pong's hand-over"),
        ("PONG", "PONG: its write is the ping-pong's hand-over"),
        ("DOORBELL", "DOORBELL: its write raises an interrupt at once"),
        ("IRQ_ACK", "IRQ_ACK: its write acknowledges an interrupt"),
        ("IRQ_VECTOR", "IRQ_VECTOR: it programs the vector"),
        ("ID", "ID: read only"),
    ],
)
def test_registers_with_side_effects_are_refused_with_the_reason(engine, register, reason):
    m, _ = _machine(engine, 10)
    with m:
        with pytest.raises(ConfigError, match=f"on the mailbox: refused, {reason}"):
            m.coalesce_mmio(m.mailbox, register=register)
        assert m.metrics.coalesced_zones().empty


def test_bad_zones_are_refused(engine):
    m, _ = _machine(engine, 10)
    with m:
        base = MAILBOX_BASE + COUNTERS
        with pytest.raises(ConfigError, match="a zone needs at least one byte"):
            m.coalesce_mmio(base, 0)
        with pytest.raises(ConfigError, match="a zone needs at least one byte"):
            m.coalesce_mmio(base, -4)
        with pytest.raises(ConfigError, match=r"overlaps RAM at 0x0-0xa0000; only MMIO exits can be coalesced"):
            m.coalesce_mmio(0x1000, 4)
        with pytest.raises(ConfigError, match="not inside one device's window"):
            m.coalesce_mmio(0xB0000, 4)
        with pytest.raises(ConfigError, match="not inside one device's window"):
            m.coalesce_mmio(MAILBOX_BASE + 0xFFC, 8)
        with pytest.raises(ConfigError, match="give the zone's size"):
            m.coalesce_mmio(base)
        with pytest.raises(ConfigError, match="has no register 'COUNTER99'"):
            m.coalesce_mmio(m.mailbox, register="COUNTER99")
        with pytest.raises(ConfigError, match="name the register"):
            m.coalesce_mmio(m.mailbox)
        with pytest.raises(ConfigError, match="PING: its write"):
            m.coalesce_mmio(MAILBOX_BASE + 4, 0x10)  # a range that takes in registers with side effects
        m.coalesce_mmio(base, 8)
        with pytest.raises(ConfigError, match=r"overlaps the zone 0xa0100-0xa0108"):
            m.coalesce_mmio(m.mailbox, register="COUNTER1")
        m.coalesce_mmio(m.mailbox, register="COUNTER2")  # next to it: fine
        assert len(m.metrics.coalesced_zones()) == 2


def test_a_zone_needs_the_vcpus():
    m = Machine(vcpus=1, memory_mib=2, engine="emulated")
    with m:
        with pytest.raises(MachineStateError, match="load a program first"):
            m.coalesce_mmio(m.mailbox, register="COUNTER0")


def test_device_declares_what_may_be_coalesced():
    class Plain(Device):
        size = 0x10
        registers = {0: "DATA", 4: "GO"}
        coalescible = frozenset({0})
        side_effects = {4: "starts the transfer"}

    d = Plain()
    assert d.coalesce_refusal(0, 4) is None
    assert d.coalesce_refusal(0, 8) == "GO: starts the transfer"
    assert d.coalesce_refusal(8, 4) == "offset 0x8 is not declared plain storage (Device.coalescible)"
    assert "leaves the device's" in d.coalesce_refusal(0xC, 8)
    assert Device().coalesce_refusal(0, 1) is not None  # a device declares nothing by default


def test_mmio_counter_read_every():
    assert programs.mmio_counter(10, read_every=0).params["READ_EVERY"] == 0
    for bad in (-1, 3, 6, True, 2.0):
        with pytest.raises(ConfigError, match="need 0 \\(never read back\\) or a power of two"):
            programs.mmio_counter(10, read_every=bad)


WRITE_THEN_SPIN = """
    mov ax, MAILBOX >> 4
    mov es, ax
    xor ecx, ecx
again:
    inc ecx
    mov dword ptr es:[MB_COUNTERS], ecx   ; coalesced: no exit
    cmp ecx, WRITES
    jne again
    mov dword ptr [RESULTS], ecx          ; in RAM: the writes are made
spin:
    jmp spin                               ; no exit from here on
"""


def test_writes_wait_until_a_sample_drains_them(engine):
    """Batched writes wait in the ring while the guest makes no exit, and a metrics sample
    delivers them (a sample counts every write made before it)."""
    writes = 50  # fewer than the ring holds: no write finds it full
    m = Machine(vcpus=1, memory_mib=2, engine=engine, sample_hz=0)
    with m:
        m.load(programs.from_source(WRITE_THEN_SPIN, "spin", results=("made",), writes=writes), mode="real")
        log = _log_writes(m)
        m.coalesce_mmio(m.mailbox, register="COUNTER0")
        m.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            made = m.results(0)["made"]
            if made == writes:
                break
            time.sleep(0.005)
        assert made == writes
        assert COUNTERS not in log and m.mailbox.counter(0) == 0  # waiting in the ring
        m.metrics.sample()
        assert log[COUNTERS] == list(range(1, writes + 1))
        v = m.metrics.vcpu(0)
        assert (v.exit_mmio_write, v.coalesced_mmio_write, v.coalesced_drains) == (0, writes, 1)
        assert m.metrics.current(0)["coalesced_mmio_write"] == writes  # the sample saw them


class PortLog(Device):
    """A port device whose DATA port only stores (and logs) what is written; STATUS reads back
    how many writes it has seen."""

    name = "portlog"
    size = 2
    registers = {0: "DATA", 1: "STATUS"}
    register_width = 1
    coalescible = frozenset({0})
    side_effects = {1: "a status port, read for what the writes did"}

    def __init__(self):
        self.log: list[int] = []

    def write(self, offset, size, value):
        if offset == 0:
            self.log.append(value)

    def read(self, offset, size):
        return len(self.log) & 0xFF if offset == 1 else 0


OUT_LOOP = """
    mov dx, PORT
    xor ecx, ecx
again:
    inc ecx
    mov al, cl
    out dx, al                      ; coalesced: no exit
    cmp ecx, WRITES
    jne again
    inc dx
    in al, dx                       ; exits: the device has seen every write before it
    mov byte ptr [RESULTS], al
    hlt
"""


def test_coalesced_port_writes(engine):
    writes, port = 1000, 0x700
    m = Machine(vcpus=1, memory_mib=2, engine=engine)
    with m:
        if not m.capabilities.coalesced_pio:
            pytest.skip("this KVM has no KVM_CAP_COALESCED_PIO")
        m.load(programs.from_source(OUT_LOOP, "out", results=("status",), writes=writes, port=port), mode="real")
        device = PortLog()
        m.add_device(device, port, bus="pio")
        with pytest.raises(ConfigError, match="STATUS: a status port"):
            m.coalesce_pio(device, register="STATUS")
        with pytest.raises(ConfigError, match="outside the 64 Ki ports"):
            m.coalesce_pio(0xFFFF, 4)
        with pytest.raises(ConfigError, match="on the serial.*refused, THR/RBR is not declared plain storage"):
            m.coalesce_pio(m.serial, register="THR/RBR", size=1)
        zone = m.coalesce_pio(device, register="DATA")
        assert (zone.address, zone.size, zone.pio) == (port, 1, True)
        m.coalesce_mmio(m.mailbox, register="COUNTER0")  # an MMIO zone beside it: separate
        m.start()
        assert m.wait(60) == 0
        assert device.log == [i & 0xFF for i in range(1, writes + 1)]
        assert m.results(0)["status"] & 0xFF == writes & 0xFF  # the IN saw every OUT before it
        v = m.metrics.vcpu(0)
        assert v.exit_io_out + v.coalesced_pio_write == writes
        assert v.coalesced_mmio_write == 0
        assert v.exit_io_out <= writes // (RING_ENTRIES - 10) + 2
        zones = m.metrics.coalesced_zones()
        assert list(zones["bus"]) == ["pio", "mmio"]
        assert zones.loc[0, "writes"] == v.coalesced_pio_write


def test_a_doorbell_and_a_coalesced_zone_never_claim_the_same_write(engine, machines):
    """KVM puts both on one io bus, and which one takes a write would be the bus's order:
    kvmlab refuses the second, either way round, saying which holds the address."""
    from kvmlab.devices.mailbox import COUNTERS, MAILBOX_BASE

    m = machines(engine=engine, vcpus=1, sample_hz=0)
    m.load("hlt", mode="protected")
    zone = m.coalesce_mmio(m.mailbox, register="COUNTER0")
    with pytest.raises(ConfigError, match="inside the coalesced zone 0xa0100-0xa0104"):
        m.ioeventfd(MAILBOX_BASE + COUNTERS, size=4)
    m.uncoalesce_mmio(zone)
    bell = m.ioeventfd(MAILBOX_BASE + COUNTERS + 4, size=4)
    with pytest.raises(ConfigError, match="covers the doorbell"):
        m.coalesce_mmio(m.mailbox, register="COUNTER1")
    bell.close()
    m.coalesce_mmio(m.mailbox, register="COUNTER1")
