"""Interrupts with KVM's in-kernel irqchip (issue 13, part 2): a device's line into the PIC and
IOAPIC (``Machine.irq_line``, KVM_IRQ_LINE), the same line through an eventfd from any thread
without a vCPU exit (``Machine.irqfd``, KVM_IRQFD, resampled at the guest's EOI when
level-triggered), ``raise_irq`` as an MSI to a LAPIC (KVM_SIGNAL_MSI), and the timers KVM runs
itself (``programs.timer_ticks``).

The guests program the controllers themselves: the 8259 PIC in real mode, the IOAPIC's
redirection entries and the LAPIC in protected mode, and count what their handlers ran in
the results area; their protected-mode tables and returns come from kvmlab's guest library
idt.asm (whose INTERRUPT_RETURN says why 32-bit code does not IRET under kvm_pvm).

Level-triggered lines under kvm_pvm (measured): its LAPIC acknowledges a level-triggered
interrupt to the IOAPIC as it delivers it, not at the guest's EOI (in the handler the ISR
reads 0 and the EOI write finds nothing in service). A line still asserted at that moment is
delivered again at once, so a device lowered by its handler interrupts twice per raise, the
second time with nothing pending (a spurious interrupt, which a driver that checks its device
ignores); a resampling irqfd is resampled before the handler ran, and kvmlab's resampler may
trigger it once more. On hardware KVM the IOAPIC hears of it at the EOI: once per raise. The
tests count real and spurious acknowledges apart and expect what this machine's KVM does.
"""

from __future__ import annotations

import threading
import time

import pytest

from kvmlab import Machine, programs
from kvmlab.devices import Device
from kvmlab.errors import ConfigError, EngineCapabilityError, MachineStateError
from kvmlab.guest.programs import Program

from .conftest import KVM_PVM
from .procfs import kvmlab_threads, open_fds

#: how long stop/close may take, storms included (the issue's bound)
PROMPT_S = 2.0
#: the port a test device answers the guest's acknowledge on
ACK_PORT = 0x10
#: where the host tells a guest to go on (RAM below the GDT, outside one vCPU's results)
GATE = 0xF00

# --- guests ------------------------------------------------------------------------------------

#: Real mode: both PICs initialized (IRQ0-7 at 0x20), IRQ ``IRQ`` unmasked, an IVT entry for it;
#: the handler counts and sends the PIC its EOI. Results: handled, ready.
PIC_GUEST = """
    cli
    xor ax, ax
    mov ds, ax
    mov word ptr [VECTOR * 4], handler
    mov word ptr [VECTOR * 4 + 2], 0
    mov al, 0x11
    out 0x20, al
    out 0xA0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1
    out 0x21, al
    out 0xA1, al
    mov al, PIC_MASK
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    mov dword ptr [RESULTS + 4], 1
wait:
    sti
    hlt
    jmp wait
handler:
    inc dword ptr [RESULTS]
    push ax
    mov al, 0x20
    out 0x20, al
    pop ax
    iret
"""


def pic_program(irq: int) -> Program:
    return Program("pic_edge.asm", PIC_GUEST, params={"VECTOR": 0x20 + irq, "PIC_MASK": 0xFF & ~(1 << irq)}, results_fields=("handled", "ready"))


#: Protected mode: the PICs masked, an IDT, the LAPIC software-enabled, IOAPIC pin LEVEL_PIN
#: level-triggered at LEVEL_VECTOR and pin EDGE_PIN edge-triggered at EDGE_VECTOR (both masked
#: until the host opens GATE when MASKED), an MSI vector. The level handler acknowledges the
#: device (OUT to ACK_PORT, an exit) unless ACK is 0. Results: level, edge, msi handled, ready.
IOAPIC_GUEST = """
.include "idt.asm"
.equ SPURIOUS, 0xFF
    cli
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
    IDT_SET LEVEL_VECTOR, on_level
    IDT_SET EDGE_VECTOR, on_edge
    IDT_SET MSI_VECTOR, on_msi
    IDT_SET SPURIOUS, on_spurious
    IDT_LOAD
    mov esi, LAPIC
    mov dword ptr [esi + 0xF0], SPURIOUS + 0x100
    mov ebx, IOAPIC
    mov dword ptr [ebx], LEVEL_PIN * 2 + 0x11
    mov dword ptr [ebx + 0x10], 0
    mov dword ptr [ebx], LEVEL_PIN * 2 + 0x10
    mov dword ptr [ebx + 0x10], LEVEL_FIRST
    mov dword ptr [ebx], EDGE_PIN * 2 + 0x11
    mov dword ptr [ebx + 0x10], 0
    mov dword ptr [ebx], EDGE_PIN * 2 + 0x10
    mov dword ptr [ebx + 0x10], EDGE_FIRST
    mov dword ptr [RESULTS + 12], 1
.if MASKED
closed:
    cmp dword ptr [GATE], 0
    je closed
    mov dword ptr [ebx], LEVEL_PIN * 2 + 0x10
    mov dword ptr [ebx + 0x10], LEVEL_ENTRY
    mov dword ptr [ebx], EDGE_PIN * 2 + 0x10
    mov dword ptr [ebx + 0x10], EDGE_ENTRY
.endif
    sti
wait:
    hlt
    jmp wait
on_level:
    inc dword ptr [RESULTS]
.if ACK
    out ACK_PORT, al
.endif
    jmp eoi
on_edge:
    inc dword ptr [RESULTS + 4]
    jmp eoi
on_msi:
    inc dword ptr [RESULTS + 8]
eoi:
    mov dword ptr [esi + 0xB0], 0
on_spurious:
    INTERRUPT_RETURN
IDT_LIBRARY
"""
LEVEL_PIN, LEVEL_VECTOR = 5, 0x45
EDGE_PIN, EDGE_VECTOR = 6, 0x46
MSI_VECTOR = 0x40
TRIGGER_LEVEL, MASK = 1 << 15, 1 << 16


def ioapic_program(*, ack: bool = True, masked: bool = False) -> Program:
    level, edge = LEVEL_VECTOR | TRIGGER_LEVEL, EDGE_VECTOR
    params = {
        "LEVEL_VECTOR": LEVEL_VECTOR, "EDGE_VECTOR": EDGE_VECTOR, "MSI_VECTOR": MSI_VECTOR,
        "LEVEL_PIN": LEVEL_PIN, "EDGE_PIN": EDGE_PIN, "LEVEL_ENTRY": level, "EDGE_ENTRY": edge,
        "LEVEL_FIRST": level | (MASK if masked else 0), "EDGE_FIRST": edge | (MASK if masked else 0),
        "MASKED": int(masked), "ACK": int(ack), "ACK_PORT": ACK_PORT, "GATE": GATE,
    }  # fmt: skip
    return Program("ioapic.asm", IOAPIC_GUEST, params=params, results_fields=("level", "edge", "msi", "ready"))


# --- devices -------------------------------------------------------------------------------------


class AckedLevelDevice(Device):
    """A level-triggered device on IOAPIC pin LEVEL_PIN: ``fire(n)`` makes n events pending and
    asserts its line; each guest acknowledge (OUT to ACK_PORT) takes one, and the line is lowered
    with the last one. An acknowledge with nothing pending is a spurious interrupt, counted and
    otherwise ignored, as a driver that reads its device's status would. ``use_irqfd=True``
    drives the line through a resampling irqfd instead of KVM_IRQ_LINE."""

    name = "acked level device"
    size = 1

    def __init__(self, use_irqfd: bool = False):
        self.use_irqfd = use_irqfd
        self.pending = 0
        self.acks = 0  # acknowledges that took an event
        self.spurious = 0  # acknowledges with nothing pending
        self.lock = threading.Lock()
        self.line = None

    def connect(self) -> None:
        self.line = self.irqfd(LEVEL_PIN, level=True) if self.use_irqfd else self.irq_line(LEVEL_PIN)

    def fire(self, events: int = 1) -> None:
        with self.lock:
            self.pending += events
        if self.use_irqfd:
            self.line.trigger()
        else:
            self.line.raise_()

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            if self.pending == 0:
                self.spurious += 1
                return
            self.acks += 1
            self.pending -= 1
            done = self.pending == 0
        if done:
            self.line.lower()

    @property
    def deliveries(self) -> int:
        return self.acks + self.spurious


#: deliveries of a level interrupt whose handler lowers the line (see the module docstring)
PER_LEVEL_RAISE = 2 if KVM_PVM else 1


# --- helpers -------------------------------------------------------------------------------------

USER_EXITS = ("exit_mmio_read", "exit_mmio_write", "exit_io_in", "exit_io_out", "exit_hlt", "exit_shutdown", "exit_debug", "irq_window_exits")


def user_exits(m: Machine) -> int:
    """Exits that reached kvmlab (user space) on vCPU 0."""
    counters = m.metrics.vcpu(0)
    return sum(getattr(counters, name) for name in USER_EXITS)


def wait_until(predicate, timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.0005)


def started(m: Machine, program: Program, mode: str, ready: str = "ready") -> Machine:
    m.load(program, mode=mode)
    m.start()
    wait_until(lambda: m.results(0)[ready] == 1, what="the guest to program its interrupt controllers")
    return m


def timed(action) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


# --- KVM_IRQ_LINE: edge through the PIC ------------------------------------------------------------


@pytest.mark.kvm
def test_an_edge_on_a_pic_line_is_handled_once_per_pulse_in_real_mode(machines):
    m = started(machines(irqchip=True, sample_hz=0), pic_program(irq=4), "real")
    line = m.irq_line(4)
    assert line is m.irq_line(4)  # one line per GSI
    exits = user_exits(m)
    for n in range(1, 21):
        assert line.pulse() > 0  # KVM_IRQ_LINE_STATUS: delivered
        wait_until(lambda: m.results(0)["handled"] == n, what=f"pulse {n}")
    assert line.level is False
    assert m.results(0)["handled"] == 20 == line.counters.pulses
    assert user_exits(m) == exits, "the PIC, its EOI and the HLT all stay inside KVM"
    now = m.metrics.current(0)
    assert (now["line_pulses"], now["line_coalesced"], now["kvm.irq_injections"]) == (20, 0, 20)


@pytest.mark.kvm
def test_pulses_faster_than_the_guest_are_handled_or_reported_coalesced(machines):
    """Every pulse is either delivered once or reported coalesced by KVM (the PIC holds one
    pending request per line): handled + coalesced == pulses, exactly."""
    m = started(machines(irqchip=True, sample_hz=0), pic_program(irq=3), "real")
    line = m.irq_line(3)
    pulses = 300

    def pulse_many():
        for _ in range(pulses):
            line.pulse()

    raisers = [threading.Thread(target=pulse_many) for _ in range(2)]
    for thread in raisers:
        thread.start()
    for thread in raisers:
        thread.join()
    total = 2 * pulses
    wait_until(lambda: m.results(0)["handled"] + line.counters.coalesced == total, what="every pulse accounted for")
    time.sleep(0.05)
    assert m.results(0)["handled"] + line.counters.coalesced == total
    assert m.metrics.current()["line_pulses"] == total


# --- KVM_IRQ_LINE: level through the IOAPIC --------------------------------------------------------


@pytest.mark.kvm
def test_a_level_device_is_lowered_by_the_guests_acknowledge_and_interrupts_once_per_raise(machines):
    m = machines(irqchip=True, sample_hz=0)
    device = AckedLevelDevice()
    m.add_device(device, ACK_PORT, bus="pio")
    started(m, ioapic_program(), "protected")
    device.connect()
    for n in range(1, 11):
        device.fire()
        wait_until(lambda: device.acks == n and m.results(0)["level"] == n * PER_LEVEL_RAISE, what=f"interrupt {n} acknowledged")
        assert not device.line.level
    time.sleep(0.05)  # a line left asserted would have been delivered again by now
    now = m.metrics.current(0)
    assert (m.results(0)["level"], device.acks, device.spurious) == (10 * PER_LEVEL_RAISE, 10, 10 * (PER_LEVEL_RAISE - 1))
    assert (now["line_raises"], now["line_lowers"], now["kvm.irq_injections"]) == (10, 10, 10 * PER_LEVEL_RAISE)
    assert now["exit_io_out"] == device.deliveries, "the acknowledges are the only exits"


@pytest.mark.kvm
def test_a_level_line_raised_while_masked_waits_for_the_unmask_and_an_edge_does_not(machines):
    m = machines(irqchip=True, sample_hz=0)
    device = AckedLevelDevice()
    m.add_device(device, ACK_PORT, bus="pio")
    started(m, ioapic_program(masked=True), "protected")
    device.connect()
    edge = m.irq_line(EDGE_PIN)
    device.fire()
    assert device.line.last_status < 0  # the IOAPIC entry is masked (the PIC too): ignored
    assert edge.pulse() < 0
    time.sleep(0.05)
    assert m.results(0)["level"] == m.results(0)["edge"] == 0 and device.line.level
    m.memory.write(GATE, (1).to_bytes(4, "little"))  # the guest unmasks both entries
    wait_until(lambda: device.acks == 1 and not device.line.level, what="the level interrupt after the unmask")
    time.sleep(0.05)
    assert m.results(0)["level"] == PER_LEVEL_RAISE
    assert m.results(0)["edge"] == 0, "an edge that came while masked is gone"
    assert edge.pulse() > 0
    wait_until(lambda: m.results(0)["edge"] == 1, what="an edge after the unmask")
    assert m.metrics.current()["line_masked"] == 2


@pytest.mark.kvm
def test_a_level_line_the_guest_never_acknowledges_is_a_storm_that_stop_and_close_still_end(machines):
    m = machines(irqchip=True, sample_hz=0)
    started(m, ioapic_program(ack=False), "protected")
    line = m.irq_line(LEVEL_PIN)
    line.raise_()
    wait_until(lambda: m.results(0)["level"] > 1000, what="the storm")
    exits = user_exits(m)
    time.sleep(0.1)
    now = m.metrics.current(0)
    assert now["kvm.irq_injections"] > 1000 and now["line_raises"] == 1, "one raise, thousands of deliveries"
    assert user_exits(m) == exits, "all inside KVM"
    assert timed(m.stop) < PROMPT_S
    assert timed(m.close) < PROMPT_S
    assert m.metrics.totals().loc["0", "kvm.irq_injections"] > 1000  # still readable after close


# --- KVM_IRQFD ----------------------------------------------------------------------------------


@pytest.mark.kvm
def test_an_irqfd_raises_an_edge_from_another_thread_without_a_single_exit(machines):
    m = started(machines(irqchip=True, sample_hz=0), pic_program(irq=4), "real")
    irqfd = m.irqfd(4)
    exits = user_exits(m)
    errors = []

    def trigger_from_here():
        try:
            for n in range(1, 31):
                irqfd.trigger()
                wait_until(lambda: m.results(0)["handled"] == n, what=f"trigger {n}")
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=trigger_from_here)
    thread.start()
    thread.join(20)
    assert errors == [] and m.results(0)["handled"] == 30
    assert user_exits(m) == exits, "an eventfd write, not an exit"
    now = m.metrics.current(0)
    assert (now["irqfd_triggers"], now["kvm.irq_injections"]) == (30, 30)


@pytest.mark.kvm
def test_a_level_irqfd_is_resampled_at_eoi_and_triggered_again_only_while_the_device_asserts(machines):
    m = machines(irqchip=True, sample_hz=0)
    device = AckedLevelDevice(use_irqfd=True)
    m.add_device(device, ACK_PORT, bus="pio")
    started(m, ioapic_program(), "protected")
    device.connect()
    counters = device.line.counters
    for n in range(1, 6):  # one event each: acknowledged, lowered, quiet after its EOI
        device.fire()
        wait_until(lambda: device.acks == n and not device.line.asserted, what=f"event {n}")
    device.fire(3)  # three events behind one trigger: only the resampler can deliver the others
    wait_until(lambda: device.acks == 8 and not device.line.asserted, what="three events behind one trigger")
    time.sleep(0.05)  # the last resample comes and goes: nothing is triggered again
    settled = (counters.triggers, counters.resamples, m.results(0)["level"])
    time.sleep(0.05)
    assert (counters.triggers, counters.resamples, m.results(0)["level"]) == settled
    assert m.results(0)["level"] == device.deliveries == counters.triggers == counters.resamples
    assert counters.triggers == 6 + counters.retriggers and counters.retriggers >= 2
    if not KVM_PVM:  # resampled at the EOI, after the handler lowered it: never a spurious one
        assert (device.spurious, counters.retriggers) == (0, 2)
    now = m.metrics.current()
    assert (now["irqfd_triggers"], now["irqfd_resamples"], now["irqfd_retriggers"]) == (counters.triggers, counters.resamples, counters.retriggers)


@pytest.mark.kvm
def test_a_level_irqfd_never_lowered_storms_through_the_resampler_and_close_ends_it(machines):
    m = machines(irqchip=True, sample_hz=0)
    started(m, ioapic_program(ack=False), "protected")
    irqfd = m.irqfd(LEVEL_PIN, level=True)
    irqfd.trigger()
    wait_until(lambda: irqfd.counters.retriggers > 100, what="the resampler's storm")
    assert timed(m.close) < PROMPT_S
    assert not [t for t in kvmlab_threads() if "resampler" in t]


# --- raise_irq as an MSI -------------------------------------------------------------------------


@pytest.mark.kvm
def test_raise_irq_with_the_irqchip_is_an_msi_to_the_vcpus_lapic(machines):
    m = started(machines(irqchip=True, sample_hz=0), ioapic_program(), "protected")
    exits = user_exits(m)
    for n in range(1, 11):
        m.raise_irq(MSI_VECTOR)
        wait_until(lambda: m.results(0)["msi"] == n, what=f"MSI {n}")
    now = m.metrics.current(0)
    assert (now["msis_sent"], now["kvm.irq_injections"], now["interrupts_injected"]) == (10, 10, 0)
    assert user_exits(m) == exits


# --- the timers KVM runs --------------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.parametrize(("mode", "timer"), [("real", "PIT"), ("protected", "LAPIC timer"), ("long", "LAPIC timer")])
def test_timer_ticks_counts_the_timer_kvm_runs_at_about_the_programmed_rate(machines, mode, timer):
    m = machines(sample_hz=0)
    m.load(programs.timer_ticks(ticks=40, period_us=2000), mode=mode)
    assert m.irqchip is True  # load() created it for the program
    m.start()
    assert int(m.wait(10)) == 0
    report = programs.timer_report(m)
    assert (report.timer, report.ticks, len(report.intervals_us)) == (timer, 40, 39)
    assert abs(report.programmed_us - 2000) < 1
    # Generous bounds (a loaded host delays ticks, KVM catches up): the rate, not its speed.
    assert 0.5 < report.ratio < 1.5, str(report)
    assert report.tsc_khz == m.tsc_khz() > 100_000
    now = m.metrics.current(0)
    assert now["exit_io_out"] == 1 and user_exits(m) == 1, "the debug-exit write is the one exit"
    assert now["kvm.irq_injections"] >= 40


@pytest.mark.kvm
def test_timer_report_refuses_a_machine_that_did_not_run_timer_ticks(machines):
    m = machines()
    m.load(programs.hello())
    with pytest.raises(ConfigError, match=r"timer_report\(\): the machine did not load programs.timer_ticks\(\)"):
        programs.timer_report(m)
    t = machines()
    t.load(programs.timer_ticks(ticks=2))
    with pytest.raises(ConfigError, match="counted 0 of 2 ticks"):
        programs.timer_report(t)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"ticks": 1}, "ticks=1: need a whole number from 2 to 2000"),
        ({"ticks": 2.0}, "ticks=2.0"),
        ({"period_us": 0}, "period_us=0: need a number of microseconds from 1 to 54924"),
        ({"period_us": 60_000}, "period_us=60000"),
        ({"period_us": True}, "period_us=True"),
    ],
)
def test_timer_ticks_refuses_what_its_timers_cannot_do(arguments, message):
    with pytest.raises(ConfigError, match=message):
        programs.timer_ticks(**arguments)


@pytest.mark.kvm
def test_timer_ticks_on_a_machine_without_the_irqchip_is_refused(machines):
    m = machines(irqchip=False)
    with pytest.raises(ConfigError, match=r"load\(timer_ticks.asm\): the program programs KVM's in-kernel irqchip .* irqchip=True"):
        m.load(programs.timer_ticks())
    assert not m.built


@pytest.mark.kvm
def test_kvm_declares_the_irqchips_inputs(machines):
    caps = machines().capabilities
    assert caps.irq_lines and caps.irqfd and caps.irqfd_resample and caps.msi and caps.pit and caps.tsc_khz


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.parametrize("gsi", [24, -1, 1 << 32, 1.5, True, "4", None])
def test_a_line_number_out_of_range_is_refused(machines, gsi):
    m = machines(irqchip=True)
    with pytest.raises(ConfigError, match=rf"gsi={gsi!r}: KVM's in-kernel irqchip has lines \(GSIs\) 0 to 23: 0-15 reach both the PIC and the IOAPIC, 16-23 only the IOAPIC"):
        m.irq_line(gsi)
    with pytest.raises(ConfigError, match=r"gsi=.*0 to 23"):
        m.irqfd(gsi)


@pytest.mark.kvm
def test_lines_and_irqfds_without_an_irqchip_are_refused(machines):
    m = machines(irqchip=False)
    m.load(pic_program(irq=4), mode="real")
    expected = r"this machine has no in-kernel irqchip, whose PIC and IOAPIC the lines lead to \(KVM refuses lines and irqfds without one\); create the Machine with irqchip=True"
    with pytest.raises(ConfigError, match=r"irqfd\(4\): " + expected):
        m.irqfd(4)
    with pytest.raises(ConfigError, match=r"irq_line\(\): " + expected):
        m.irq_line(4)


@pytest.mark.emulated
def test_the_emulated_engine_refuses_lines_irqfds_and_timer_ticks_by_capability(machines):
    m = machines(engine="emulated")
    caps = m.capabilities
    assert not (caps.irq_lines or caps.irqfd or caps.irqfd_resample or caps.msi or caps.pit or caps.tsc_khz)
    with pytest.raises(EngineCapabilityError, match=r"irq_line\(\): the emulated engine has no interrupt lines \(KVM_IRQ_LINE\); use engine='kvm' and irqchip=True"):
        m.irq_line(4)
    with pytest.raises(EngineCapabilityError, match=r"irqfd\(4\): the emulated engine has no irqfd \(KVM_IRQFD\); use engine='kvm' and irqchip=True"):
        m.irqfd(4)
    with pytest.raises(EngineCapabilityError, match=r"load\(timer_ticks.asm\): the emulated engine has no in-kernel interrupt controllers .*; use engine='kvm' and irqchip=True"):
        m.load(programs.timer_ticks())
    m.load(programs.hello())
    with pytest.raises(EngineCapabilityError, match=r"tsc_khz\(\): the emulated engine has no TSC frequency"):
        m.tsc_khz()


@pytest.mark.kvm
def test_raising_on_a_stopped_or_closed_machine_is_refused(machines):
    m = started(machines(irqchip=True, sample_hz=0), pic_program(irq=4), "real")
    line, irqfd = m.irq_line(4), m.irqfd(5)
    m.stop()
    with pytest.raises(MachineStateError, match=r"IRQ line 4: pulse\(\): the machine is stopped \(exit code 0: stopped by the controller\)"):
        line.pulse()
    with pytest.raises(MachineStateError, match=r"irqfd of GSI 5: trigger\(\): the machine is stopped"):
        irqfd.trigger()
    m.close()
    for action, what in ((line.raise_, r"IRQ line 4: raise_\(\)"), (line.lower, r"IRQ line 4: lower\(\)"), (irqfd.trigger, r"irqfd of GSI 5: trigger\(\)")):
        with pytest.raises(MachineStateError, match=what + ": the machine is stopped"):
            action()  # the stop is what it first refused for; still refused
    with pytest.raises(MachineStateError, match=r"irq_line\(\): the machine is closed"):
        m.irq_line(4)
    with pytest.raises(MachineStateError, match=r"irqfd\(\): the machine is closed"):
        m.irqfd(6)


@pytest.mark.kvm
def test_a_machine_closed_without_stopping_refuses_as_closed(machines):
    m = machines(irqchip=True)
    line = m.irq_line(7)
    m.close()
    with pytest.raises(MachineStateError, match=r"IRQ line 7: pulse\(\): the machine is stopped \(exit code 0: closed \(never started\)\)"):
        line.pulse()


@pytest.mark.kvm
def test_one_source_per_line_and_lower_only_for_a_level_irqfd(machines):
    m = machines(irqchip=True)
    m.irq_line(4)
    with pytest.raises(ConfigError, match=r"irqfd\(4\): GSI 4 is driven by <IrqLine gsi 4, deasserted> already; one source per line"):
        m.irqfd(4)
    edge = m.irqfd(5)
    with pytest.raises(ConfigError, match=r"irq_line\(5\): GSI 5 is driven by <IrqFd gsi 5, edge, idle>"):
        m.irq_line(5)
    with pytest.raises(ConfigError, match=r"irqfd\(5, level=True\): GSI 5 is driven by"):
        m.irqfd(5, level=True)
    with pytest.raises(ConfigError, match=r"lower\(\) is for a level-triggered irqfd"):
        edge.lower()
    with pytest.raises(ConfigError, match=r"level='yes': True .* or False"):
        m.irqfd(6, level="yes")
    edge.close()
    edge.close()  # idempotent
    with pytest.raises(MachineStateError, match="this irqfd was closed"):
        edge.trigger()
    assert m.irqfd(5, level=True).level  # the GSI is free again


@pytest.mark.kvm
def test_a_device_gets_the_machines_lines_and_none_before_it_is_added(machines):
    device = AckedLevelDevice()
    with pytest.raises(MachineStateError, match=r"irq_line\(\): the device is on no machine; map it with Machine.add_device\(\) first"):
        device.irq_line(4)
    with pytest.raises(MachineStateError, match=r"irqfd\(\): the device is on no machine"):
        device.irqfd(4)
    m = machines(irqchip=True)
    m.add_device(device, ACK_PORT, bus="pio")
    assert device.irq_line(4) is m.irq_line(4)
    assert device.irqfd(9).gsi == 9


# --- metrics --------------------------------------------------------------------------------------


@pytest.mark.kvm
def test_the_line_counters_are_registry_metrics_with_their_units(machines):
    m = machines(irqchip=True, sample_hz=0)
    for name, unit in (("line_raises", "raises"), ("line_pulses", "pulses"), ("line_lowers", "lowers"), ("line_coalesced", "raises"),
                       ("irqfd_triggers", "triggers"), ("irqfd_resamples", "EOIs"), ("irqfd_retriggers", "triggers"), ("msis_sent", "interrupts")):  # fmt: skip
        spec = m.metrics.spec(name)
        assert (spec.kind, spec.unit, spec.cumulative, spec.combine) == ("line", unit, True, "same")
        assert spec.help
    started(m, pic_program(irq=4), "real")
    m.irq_line(4).pulse()
    m.irqfd(3).trigger()
    wait_until(lambda: m.results(0)["handled"] == 1, what="the pulse")  # IRQ3 is masked: the trigger goes nowhere
    m.stop()
    totals = m.metrics.totals()
    assert totals.loc["all", "line_pulses"] == totals.loc["0", "line_pulses"] == 1  # the machine's, not summed
    frame = m.metrics.to_dataframe(metrics=["line_pulses", "irqfd_triggers"])
    assert frame.groupby("metric", observed=True)["value"].max().to_dict() == {"line_pulses": 1, "irqfd_triggers": 1}
    table = m.metrics.irq_lines()
    assert table[["source", "gsi", "trigger", "pulses", "triggers"]].values.tolist() == [["line", 4, "any", 1, 0], ["irqfd", 3, "edge", 0, 1]]


# --- teardown -------------------------------------------------------------------------------------


@pytest.mark.kvm
def test_close_deassigns_every_irqfd_closes_its_fds_and_joins_the_resampler():
    before = open_fds()
    m = Machine(irqchip=True, sample_hz=0, engine="kvm")
    device = AckedLevelDevice(use_irqfd=True)
    m.add_device(device, ACK_PORT, bus="pio")
    started(m, ioapic_program(), "protected")
    device.connect()
    edge, line = m.irqfd(9), m.irq_line(10)
    assert len(open_fds()) > len(before) and any("resampler" in t for t in kvmlab_threads())
    device.fire()
    edge.trigger()
    line.pulse()
    wait_until(lambda: device.acks == 1, what="the level interrupt")
    assert timed(m.close) < PROMPT_S
    assert open_fds() == before, "every eventfd closed with the machine"
    assert not kvmlab_threads()
