"""Interrupts raised from user space without an in-kernel irqchip (issue 13, parts 1 and 4),
on both engines.

``Machine.raise_irq`` queues a vector; the vCPU's own thread injects it with KVM_INTERRUPT
when ``kvm_run.ready_for_interrupt_injection`` allows and asks for the interrupt window
otherwise (Documentation/virt/kvm/api.rst, 4.16 and section 5). The emulated engine takes
the same calls behind the same kvm_run fields and delivers through the guest's table as a
CPU does. The guests here have a table entry for VECTOR (real mode: the IVT; protected and
long mode: an IDT in the program image, ``idtkit``) whose handler counts into the results
area and IRETs; the counts they leave are what the tests compare with what was raised.

Under kvm_pvm the guest's instructions run through KVM's emulator in batches, and the window
exit comes at the end of one (measured: ~1000 instructions after STI), so the programs keep
IF set for longer than that; on hardware KVM the exit follows the STI at once, as it does on
the emulated engine. Handlers return with the guest library's INTERRUPT_RETURN, which
kvm_pvm can emulate in protected mode too (its IRETD cannot: kvmlab/guest/programs/lib/idt.asm).
"""

from __future__ import annotations

import threading
import time

import pytest

from kvmlab import Machine
from kvmlab.devices import Device
from kvmlab.errors import ConfigError, KvmlabError, MachineStateError, MachineTimeoutError, VcpuExitedError
from kvmlab.guest.programs import Program
from kvmlab.kvm.run import RUN, RUN_MAPPING_SIZE
from kvmlab.metrics.counters import VcpuMetrics
from kvmlab.vstate.exits import ExitCode
from kvmlab.vstate.interrupts import PendingInterrupts, offer
from kvmlab.vstate.protocol import VcpuState

from .conftest import KVM_PVM, KVM_REASON
from .idtkit import IRET, count, handler, program

VECTOR = 0x40
RAISER_PORT = 0x10
#: how long Pause, a wake-up and close may take while a vCPU waits in HLT (the issue's bound)
PROMPT_S = 2.0
MODES = ("real", "protected", "long")

#: every program's gates: VECTOR and the first and last vectors a device may raise
GATES = {VECTOR: ("on_irq", "interrupt"), 32: ("on_irq", "interrupt"), 255: ("on_irq", "interrupt")}


def counting(mode: str, name: str, main: str, results=("handled",), **params) -> Program:
    """A program whose interrupts all count into its first result."""
    return program(mode, name, main, GATES, handler(mode, "on_irq", 0), results=results, vector=VECTOR, **params)


def toggle(mode: str, target: int, spin: int = 700) -> Program:
    """IF toggles: a masked stretch (CLI), then an open one (STI), until ``target`` were handled."""
    return counting(mode, "toggle_if", """
toggle:
    cli
    inc dword ptr [RESULTS + 4]
    mov ecx, SPIN
masked:
    dec ecx
    jnz masked
    sti
    mov ecx, SPIN
unmasked:
    dec ecx
    jnz unmasked
    cmp dword ptr [RESULTS], TARGET
    jb toggle
    cli
    hlt
""", results=("handled", "masked_stretches"), spin=spin, target=target)  # fmt: skip


def halt_loop(mode: str, target: int) -> Program:
    """Waits for interrupts in HLT with IF=1 (``sti; hlt``) until ``target`` were handled,
    then CLI; HLT ends it. Each handler returns to the instruction after its HLT."""
    return counting(mode, "halt_loop", """
    sti
wait:
    hlt
    cmp dword ptr [RESULTS], TARGET
    jb wait
    cli
    hlt
""", target=target)  # fmt: skip


#: A device raises VECTOR while IF=0 (its port write); the guest then sets IF and spins until
#: the handler has run, then spins on with IF=1 (tens of thousands of instructions: a window
#: requested with nothing pending would exit again and again). ``before_sti`` must stay 0:
#: nothing may go in while IF=0.
def raised_while_masked(mode: str) -> Program:
    return counting(mode, "raised_while_masked", """
    out RAISER, al
    mov eax, dword ptr [RESULTS]
    mov dword ptr [RESULTS + 4], eax
    sti
    mov ecx, SPIN
spin:
    cmp dword ptr [RESULTS], 0
    jne taken
    dec ecx
    jnz spin
taken:
    mov dword ptr [RESULTS + 8], ecx
    mov ecx, AFTER
after:
    dec ecx
    jnz after
    cli
    hlt
""", results=("handled", "before_sti", "spins_left"), raiser=RAISER_PORT, spin=200000, after=20000)  # fmt: skip


def in_the_shadow(mode: str) -> Program:
    """A vector raised while IF=0, then ``sti`` and a run of ``mov ebx, n``: the handler
    records EBX, so ``taken_at`` says after which instruction the interrupt came. The one
    after STI runs first (SDM Vol. 3A, 6.8.3): 1 is the earliest a CPU takes it."""
    main = """
    mov ebx, 0
    out RAISER, al
    sti
    mov ebx, 1
    mov ebx, 2
    mov ebx, 3
    mov ebx, 4
wait:
    cmp dword ptr [RESULTS], 0
    je wait
    cli
    hlt
"""
    handlers = f"on_irq:\n    mov dword ptr [RESULTS + 4], ebx\n{count(0)}    {IRET[mode]}\n"
    return program(mode, "in_the_shadow", main, {VECTOR: ("on_irq", "interrupt")}, handlers, results=("handled", "taken_at"), raiser=RAISER_PORT)


def idle(mode: str) -> Program:
    """``sti; idle: jmp idle``, for ever: every interrupt comes while the guest jumps to
    itself, right after its STI's bytes."""
    return counting(mode, "idle", "    sti\nidle:\n    jmp idle\n")


#: vCPU 0 waits in HLT with IF=1 for ever; the others end at once (CLI; HLT).
ONE_WAITS = Program(
    "one_waits.asm",
    """
    test di, di
    jnz others
    sti
idle:
    hlt
    jmp idle
others:
    cli
    hlt
""",
)


class Raiser(Device):
    """Raises VECTOR at vCPU 0 on every write: from the vCPU's own thread, mid-exit."""

    name = "raiser"
    size = 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.raise_irq(VECTOR)


def wait_until(predicate, timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.002)


def timed(action) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start




@pytest.fixture
def halted(machines, engine):
    """A started machine whose vCPU 0 waits in HLT with IF=1 (a target it never reaches)."""
    m = machines(engine=engine, sample_hz=0)
    m.load(halt_loop("real", 1_000_000), mode="real")
    m.start()
    wait_until(lambda: m.metrics.vcpu(0).exit_hlt >= 1, what="the first HLT")
    return m


# --- exactly once ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_interrupt_raised_from_other_threads_is_handled_once_while_the_guest_toggles_if(engine_and_kick, machines, mode):
    per_thread, threads = 150, 2
    total = per_thread * threads
    # The emulated engine spends ~0.1-0.2 ms of its vCPU thread on each interrupt (a kick, an
    # offer, a delivery), so raises there come further apart: otherwise the guest hardly
    # runs between them and all 300 can be handled before its first CLI comes round again.
    gap = 0.0002 if engine_and_kick == "kvm" else 0.0008
    m = machines(engine=engine_and_kick, sample_hz=0)
    m.load(toggle(mode, total), mode=mode)
    m.start()
    errors: list[BaseException] = []

    def raise_many() -> None:
        try:
            for i in range(per_thread):
                m.raise_irq(VECTOR)
                time.sleep(gap * (i % 4))
        except BaseException as err:  # a raise refused because the guest ended early (a duplicate)
            errors.append(err)

    raisers = [threading.Thread(target=raise_many) for _ in range(threads)]
    for thread in raisers:
        thread.start()
    for thread in raisers:
        thread.join()
    exit_ = m.wait(20)
    assert errors == []
    assert int(exit_) == 0 and exit_.reason == "every vCPU halted"
    results = m.results(0)
    metrics = m.metrics.vcpu(0)
    assert results["handled"] == total  # none lost (the guest would spin for ever), none twice
    assert metrics.interrupts_injected == total
    assert results["masked_stretches"] > 1
    # Some vectors came while IF was 0 and waited for the window the engine reported.
    assert metrics.irq_window_exits > 0


def test_pause_and_resume_while_interrupts_are_raised_lose_and_duplicate_nothing(engine, machines):
    total = 120
    m = machines(engine=engine, sample_hz=0)
    m.load(toggle("real", total), mode="real")
    m.start()
    done = threading.Event()

    def pause_resume() -> None:
        while not done.is_set():
            try:
                m.pause(0)
                m.resume(0)
            except KvmlabError:
                return  # the guest finished (its vCPU exited)

    storm = threading.Thread(target=pause_resume)
    storm.start()
    try:
        for _ in range(total):
            m.raise_irq(VECTOR)
            time.sleep(0.0003)
        m.wait(20)
    finally:
        done.set()
        storm.join(5)
    assert m.results(0)["handled"] == total
    assert m.metrics.vcpu(0).interrupts_injected == total


@pytest.mark.parametrize("mode", MODES)
def test_a_vector_raised_while_if_is_0_waits_for_sti_and_goes_in_at_the_window(engine_and_kick, machines, mode):
    m = machines(engine=engine_and_kick, sample_hz=0, trace=True)
    m.add_device(Raiser(), RAISER_PORT, bus="pio")
    m.load(raised_while_masked(mode), mode=mode)
    m.start()
    assert int(m.wait(10)) == 0
    results = m.results(0)
    assert results["before_sti"] == 0  # not delivered while IF=0
    assert results["handled"] == 1  # delivered once, after STI
    assert results["spins_left"] > 0  # while the guest waited with IF=1, not at its end
    metrics = m.metrics.vcpu(0)
    # One window exit: the request went with the last pending vector.
    assert (metrics.interrupts_injected, metrics.irq_window_exits, metrics.hlt_wakeups) == (1, 1, 0)
    kinds = [row["kind"] for row in m.final_state(0).trace]
    assert kinds[kinds.index("io_out") :] == ["io_out", "irq_window", "interrupt_injected", "hlt"]
    injected = next(row for row in m.final_state(0).trace if row["kind"] == "interrupt_injected")
    assert injected["address"] == VECTOR


@pytest.mark.parametrize("mode", MODES)
def test_the_interrupt_waits_for_the_instruction_after_sti(engine_and_kick, machines, mode):
    m = machines(engine=engine_and_kick, sample_hz=0)
    m.add_device(Raiser(), RAISER_PORT, bus="pio")
    m.load(in_the_shadow(mode), mode=mode)
    m.start()
    assert int(m.wait(10)) == 0
    results = m.results(0)
    assert results["handled"] == 1 and m.metrics.vcpu(0).irq_window_exits == 1
    if engine_and_kick == "kvm":
        assert results["taken_at"] >= 1  # never inside the shadow; under kvm_pvm much later
    else:
        assert results["taken_at"] == 1  # as a CPU: right after the shadow, not in it


def test_an_idle_loop_right_after_sti_takes_every_interrupt(engine, machines):
    """``sti; idle: jmp idle``: the jump sits right after the STI's byte for ever, and is in
    the STI's shadow only the first time it runs."""
    m = machines(engine=engine, sample_hz=0)
    m.load(idle("real"), mode="real")
    m.start()
    for n in range(1, 6):
        m.raise_irq(VECTOR)
        wait_until(lambda: m.results(0)["handled"] == n, PROMPT_S, f"interrupt {n}")
    assert m.metrics.vcpu(0).interrupts_injected == 5


# --- HLT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_hlt_with_if_1_waits_and_each_interrupt_wakes_it(engine, machines, mode):
    target = 4
    m = machines(engine=engine, sample_hz=0)
    m.load(halt_loop(mode, target), mode=mode)
    m.start()
    metrics = m.metrics.vcpu(0)
    wait_until(lambda: metrics.exit_hlt >= 1, what="the first HLT")
    with pytest.raises(MachineTimeoutError):
        m.wait(0.3)  # HLT with IF=1 did not end the vCPU
    assert m.states[0].state is VcpuState.RUNNING
    wait_until(lambda: str(m.states[0]) == "Running (halted)", PROMPT_S, "the status to say it waits in HLT")
    assert m.results(0)["handled"] == 0
    for n in range(1, target + 1):
        m.raise_irq(VECTOR)
        wait_until(lambda: m.results(0)["handled"] == n, PROMPT_S, f"interrupt {n}")
    assert int(m.wait(PROMPT_S)) == 0  # the guest's own CLI; HLT ended it
    # One wake-up per interrupt, each injected straight from the HLT exit (IF=1: no window).
    assert (metrics.hlt_wakeups, metrics.interrupts_injected, metrics.irq_window_exits) == (target, target, 0)
    assert metrics.exit_hlt == target + 1


def test_pause_resume_and_close_work_at_once_while_the_vcpu_waits_in_hlt(halted):
    m = halted
    assert timed(lambda: m.pause(0)) < PROMPT_S
    assert m.states[0].state is VcpuState.PAUSED
    m.raise_irq(VECTOR)  # pending while paused: not delivered until Resume
    time.sleep(0.2)
    assert m.results(0)["handled"] == 0
    assert timed(lambda: m.resume(0)) < PROMPT_S
    wait_until(lambda: m.results(0)["handled"] == 1, PROMPT_S, "the interrupt raised while paused")
    wait_until(lambda: m.metrics.vcpu(0).exit_hlt >= 2, PROMPT_S, "the next HLT")
    # A Pause and Resume in the wait must not let the guest past its HLT without an interrupt.
    m.pause(0)
    m.resume(0)
    time.sleep(0.2)
    assert m.metrics.vcpu(0).exit_hlt == 2 and m.results(0)["handled"] == 1
    assert timed(m.close) < PROMPT_S
    assert m.states[0].state is VcpuState.FINISHED


def test_save_state_is_refused_while_waiting_in_hlt_as_while_running(halted):
    from kvmlab.errors import VcpuNotAllowedError

    with pytest.raises(VcpuNotAllowedError):
        halted.save_state(0)
    halted.raise_irq(VECTOR)
    wait_until(lambda: halted.results(0)["handled"] == 1, PROMPT_S, "the interrupt")


def test_hlt_with_if_0_still_ends_the_vcpu(engine, machines):
    m = machines(engine=engine, sample_hz=0)
    m.load("cli\nhlt\n", mode="real")
    m.start()
    exit_ = m.wait(PROMPT_S)
    assert (int(exit_), exit_.reason, exit_.vcpu_codes) == (0, "every vCPU halted", {0: 0})
    assert m.final_state(0).reason == "HLT"
    assert m.metrics.vcpu(0).hlt_wakeups == 0


def test_a_guest_that_keeps_if_0_with_a_vector_pending_still_pauses_and_closes(engine_and_kick, machines):
    m = machines(engine=engine_and_kick, sample_hz=0)
    m.load("cli\nspin:\n    jmp spin\n", mode="long")
    m.start()
    m.raise_irq(VECTOR)  # never deliverable: the window never opens
    time.sleep(0.1)
    assert timed(lambda: m.pause(0)) < PROMPT_S
    assert m.save_state(0).regs["rflags"] & 0x200 == 0
    m.resume(0)
    assert timed(m.close) < PROMPT_S
    assert m.metrics.vcpu(0).interrupts_injected == 0


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", [-1, 256, 1 << 32, 1.5, True, "32", None])
def test_a_vector_outside_0_255_or_not_a_number_is_refused(halted, vector):
    with pytest.raises(ConfigError, match="vector"):
        halted.raise_irq(vector)
    assert halted.metrics.vcpu(0).interrupts_injected == 0


@pytest.mark.parametrize("vector", [0, 2, 8, 13, 14, 31])
def test_the_exception_vectors_are_refused(halted, vector):
    with pytest.raises(ConfigError, match="exceptions"):
        halted.raise_irq(vector)


def test_vectors_32_and_255_are_accepted(halted):
    halted.raise_irq(32)
    halted.raise_irq(255)
    wait_until(lambda: halted.results(0)["handled"] == 2, PROMPT_S, "both interrupts")


#: a table that holds no entry at all: limit 0, at an address with no memory
EMPTY_TABLE = {
    "real": "    xor ax, ax\n    mov ds, ax\n    mov bx, table\n    lidt [bx]\n",
    "protected": "    mov eax, table\n    .byte 0x0f, 0x01, 0x18             ; lidt [eax]\n",
    "long": "    mov rax, table\n    lidt [rax]\n",
}


@pytest.mark.emulated
@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_the_guests_table_cannot_deliver_ends_the_vcpu_saying_why(machines, mode):
    """Not a silent triple fault: both engines check the table before the vector goes in,
    and stop the vCPU with the same words, naming the vector, the IDTR and what to do."""
    base = "    .quad 0xbf000\n" if mode == "long" else "    .long 0xbf000\n"
    source = EMPTY_TABLE[mode] + "    sti\nwait:\n    hlt\n    jmp wait\ntable:\n    .word 0\n" + base
    reasons = {}
    for engine in ("emulated", "kvm") if KVM_REASON is None else ("emulated",):
        m = machines(engine=engine, sample_hz=0)
        m.load(source, mode=mode)
        m.start()
        wait_until(lambda: m.metrics.vcpu(0).exit_hlt >= 1, what="the HLT")
        m.raise_irq(VECTOR)
        exit_ = m.wait(PROMPT_S)
        assert (int(exit_), exit_.vcpu_codes) == (ExitCode.GENERIC_ERROR, {0: ExitCode.GENERIC_ERROR})
        assert m.metrics.vcpu(0).interrupts_injected == 0
        reasons[engine] = exit_.reason
    size = {"real": 4, "protected": 8, "long": 16}[mode]
    reason = reasons["emulated"]
    assert reason.startswith(
        f"vCPU 0: injecting interrupt vector 64 failed: interrupt vector 64 (0x40) cannot be delivered: its entry "
        f"(bytes {64 * size:#x}-{65 * size - 1:#x} of the table) is beyond the table's limit; IDTR base 0xbf000, limit 0x0 "
        f"({mode} mode, {size}-byte entries)"
    )
    assert "triple-fault" in reason and "To take it, " in reason
    assert len(set(reasons.values())) == 1, reasons  # the same words on both engines


def test_a_vcpu_out_of_range_or_exited_is_refused(engine, machines):
    m = machines(engine=engine, vcpus=2, sample_hz=0)
    m.load(ONE_WAITS, mode="real")
    m.start()
    wait_until(lambda: m.states[1].state is VcpuState.EXITED, what="vCPU 1 to exit")
    for bad in (2, -1, True, "0", None):
        with pytest.raises(ConfigError, match="vcpu"):
            m.raise_irq(VECTOR, bad)
    with pytest.raises(VcpuExitedError, match="vCPU 1"):
        m.raise_irq(VECTOR, vcpu=1)
    assert m.states[0].state is VcpuState.RUNNING  # vCPU 0 still waits in its HLT


def test_raising_on_a_machine_not_started_stopped_or_closed_is_refused(engine, machines):
    m = machines(engine=engine, sample_hz=0)
    with pytest.raises(MachineStateError, match="not started"):
        m.raise_irq(VECTOR)
    m.load(halt_loop("real", 1), mode="real")
    with pytest.raises(MachineStateError, match="not started"):
        m.raise_irq(VECTOR)
    m.start()
    m.stop()
    with pytest.raises(MachineStateError, match="stopped"):
        m.raise_irq(VECTOR)
    m.close()
    with pytest.raises(MachineStateError, match="closed"):
        m.raise_irq(VECTOR)


@pytest.mark.kvm
def test_with_the_in_kernel_irqchip_raise_irq_is_an_msi_that_a_disabled_lapic_refuses(machines):
    """With the irqchip raise_irq sends an MSI (tests/test_irqchip.py delivers them); a
    real-mode program never software-enables its LAPIC, and KVM says the guest blocked it."""
    from kvmlab.errors import InterruptRefusedError

    m = machines(irqchip=True, sample_hz=0)
    m.load("cli\nhlt\n", mode="real")  # with the irqchip the HLT stays in the kernel
    m.start()
    with pytest.raises(InterruptRefusedError, match=r"vCPU 0's LAPIC refused the MSI .*software-enable its LAPIC \(bit 8 of the spurious"):
        m.raise_irq(VECTOR)
    assert m.metrics.current()["msis_sent"] == 0


def test_a_device_on_no_machine_cannot_raise():
    with pytest.raises(MachineStateError, match="add_device"):
        Raiser().raise_irq(VECTOR)


# --- capabilities ----------------------------------------------------------------------------


def test_both_engines_declare_interrupt_injection(engine, machines):
    assert machines(engine=engine).capabilities.interrupt_injection is True


# --- metrics ---------------------------------------------------------------------------------


def test_the_interrupt_counters_are_registry_metrics_with_their_units(engine, machines):
    m = machines(engine=engine, sample_hz=0)
    for name, unit in (("interrupts_injected", "interrupts"), ("irq_window_exits", "exits"), ("hlt_wakeups", "wakeups")):
        spec = m.metrics.spec(name)
        assert (spec.kind, spec.unit, spec.cumulative) == ("counter", unit, True)
    m.load(halt_loop("real", 2), mode="real")
    m.start()
    wait_until(lambda: m.metrics.vcpu(0).exit_hlt >= 1, what="the first HLT")
    m.raise_irq(VECTOR)
    wait_until(lambda: m.results(0)["handled"] == 1, PROMPT_S, "interrupt 1")
    m.raise_irq(VECTOR)
    m.wait(PROMPT_S)
    now = m.metrics.current(0)
    assert (now["interrupts_injected"], now["hlt_wakeups"]) == (2, 2)


# --- the injection step itself (no KVM: a kvm_run-shaped page and a recording inject) ------


class FakeRun:
    """The bytes ``offer`` reads and writes, at kvmlab's own indices, and what it injected."""

    def __init__(self, ready: int):
        self.u8 = memoryview(bytearray(RUN_MAPPING_SIZE))
        self.u8[RUN.READY_FOR_INTERRUPT_INJECTION_U8] = ready
        self.injected: list[int] = []
        self.metrics = VcpuMetrics(0)

    def offer(self, pending: PendingInterrupts, inject=None) -> None:
        offer(pending, self.u8, inject or self.injected.append, self.metrics, None)

    @property
    def window_requested(self) -> int:
        return self.u8[RUN.REQUEST_INTERRUPT_WINDOW_U8]


def pending_with(*vectors: int) -> PendingInterrupts:
    pending = PendingInterrupts()
    for vector in vectors:
        pending.add(vector)
    return pending


def test_offer_injects_the_oldest_only_when_ready_and_asks_for_the_window_otherwise():
    pending = pending_with(40, 41)
    run = FakeRun(ready=0)
    run.offer(pending)
    assert (run.injected, list(pending.vectors), run.window_requested) == ([], [40, 41], 1)
    run.u8[RUN.READY_FOR_INTERRUPT_INJECTION_U8] = 1  # what KVM says at the window exit
    run.offer(pending)
    assert (run.injected, list(pending.vectors), run.window_requested) == ([40], [41], 1)
    assert run.metrics.interrupts_injected == 1


def test_offer_never_injects_twice_before_kvm_run_returns():
    """A second KVM_INTERRUPT before the guest took the first would replace it (a lost
    vector): after an injection the ready flag reads 0 until KVM writes it again."""
    pending = pending_with(40, 41)
    run = FakeRun(ready=1)
    run.offer(pending)
    run.offer(pending)  # no KVM_RUN in between (a kick's short-circuit skipped it)
    assert run.injected == [40]
    assert run.u8[RUN.READY_FOR_INTERRUPT_INJECTION_U8] == 0


def test_offer_clears_the_window_request_with_the_last_vector():
    pending = pending_with(40)
    run = FakeRun(ready=1)
    run.u8[RUN.REQUEST_INTERRUPT_WINDOW_U8] = 1
    run.offer(pending)
    assert (run.injected, len(pending), run.window_requested) == ([40], 0, 0)


def test_a_vector_kvm_refused_stays_pending():
    def refuse(vector: int) -> None:
        raise ConfigError("refused")

    pending = pending_with(40)
    run = FakeRun(ready=1)
    with pytest.raises(ConfigError):
        run.offer(pending, refuse)
    assert list(pending.vectors) == [40] and run.metrics.interrupts_injected == 0


def test_a_sleeper_gets_one_wake_up_and_none_when_something_is_pending():
    pending = PendingInterrupts()
    assert pending.add(40) is False  # nobody sleeps: the raiser kicks instead
    assert pending.sleep_unless_pending() is False  # 40 is pending: no sleep
    pending.vectors.clear()
    assert pending.sleep_unless_pending() is True
    assert (pending.add(41), pending.add(42)) == (True, False)  # one wake-up per sleep
