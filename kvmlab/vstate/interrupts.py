"""Interrupts raised from user space, and how a vCPU's own thread injects them without an
in-kernel irqchip (Documentation/virt/kvm/api.rst, 4.16 ``KVM_INTERRUPT`` and section 5,
``struct kvm_run``).

Why the vCPU's own thread, and why the window: on x86 ``KVM_INTERRUPT`` is a vCPU ioctl that
is not marked asynchronous, and api.rst section 1 says vCPU ioctls are issued from the vCPU's
thread. Without an irqchip KVM keeps *one* queued vector and injects it at the next entry
whatever the guest's RFLAGS.IF says; a second ``KVM_INTERRUPT`` before the guest took the
first replaces it (measured here: two calls, one handler run, the second vector's). So a
vector may go in only when the last exit said ``ready_for_interrupt_injection`` (the guest can
take one now and none is queued). Otherwise the thread sets ``request_interrupt_window`` and
KVM ends the run with ``KVM_EXIT_IRQ_WINDOW_OPEN`` as soon as the guest can take one, as QEMU
does without an in-kernel irqchip (``kvm_arch_pre_run`` in ``target/i386/kvm/kvm.c``).
Injecting right before ``KVM_RUN``, in the only thread that runs it, is what makes every
raised vector go in exactly once.

"As soon as" differs by KVM. On hardware KVM the window exit follows the STI's shadow. Under
``kvm_pvm`` (nested, its guest code run by KVM's instruction emulator) it came about 1,000
guest instructions after the STI (measured: the same count on every run), so a shorter window
(``sti; nop; cli``) can pass unreported and the vector waits for the next window, or for the
next exit with IF=1: late, still pending, never dropped or doubled.

``ready_for_interrupt_injection`` is an out field KVM rewrites each time ``KVM_RUN`` returns
(an EINTR return included). Between an injection and that return it would still read 1
although a vector is now queued, so ``offer`` writes 0 there itself: a run that the kick's
short-circuit skips (``Vcpu.run_emulation``) can then never inject a second vector over the first.

The pending vectors live in a ``PendingInterrupts`` per vCPU: any thread adds (``raise_irq``),
only the vCPU's thread takes. Its lock makes "nothing pending, so sleep in HLT" and "add, and
wake the sleeper" one step each, so a wake-up is never lost between them.
"""

from __future__ import annotations

import collections
import threading
from time import perf_counter_ns
from typing import Callable

from ..checks import is_whole_number
from ..errors import ConfigError
from ..kvm.run import READY_FOR_INTERRUPT_INJECTION_U8, REQUEST_INTERRUPT_WINDOW_U8
from ..metrics import trace as kinds
from ..metrics.counters import VcpuMetrics

#: The first vector a maskable interrupt may use: 0-31 are the processor's own exceptions
#: and reserved vectors (Intel SDM Vol. 3A, "Exception and Interrupt Vectors"); a device that
#: raised 13 would look to the guest like a #GP without an error code.
FIRST_INTERRUPT_VECTOR = 32
#: The last vector: the IDT (or real mode's IVT) has 256 entries (KVM_NR_INTERRUPTS).
LAST_VECTOR = 255


def check_vector(vector: object) -> int:
    """``vector`` if it is a vector a device may raise (32-255), else a ``ConfigError`` saying why."""
    if not is_whole_number(vector):
        raise ConfigError(f"vector={vector!r}: an interrupt vector is a whole number from {FIRST_INTERRUPT_VECTOR} to {LAST_VECTOR}")
    if not 0 <= vector <= LAST_VECTOR:
        raise ConfigError(f"vector={vector}: x86 has vectors 0 to {LAST_VECTOR} (one per IDT entry); raise one from {FIRST_INTERRUPT_VECTOR} to {LAST_VECTOR}")
    if vector < FIRST_INTERRUPT_VECTOR:
        raise ConfigError(
            f"vector={vector}: vectors 0-{FIRST_INTERRUPT_VECTOR - 1} are the CPU's exceptions (#DE, #GP, #PF, ...), "
            f"not interrupts a device raises; use {FIRST_INTERRUPT_VECTOR} to {LAST_VECTOR}"
        )
    return vector


class PendingInterrupts:
    """The vectors raised for one vCPU and not injected yet, oldest first.

    ``vectors`` is a deque: any thread appends under the lock, the vCPU's thread alone takes
    from the left (a deque's append and popleft are atomic in CPython), and the exit loop
    tests its truth once per run, the only cost pending interrupts add to the hot path.
    Exactly once: a vector leaves the deque only after ``KVM_INTERRUPT`` accepted it.
    """

    __slots__ = ("vectors", "_lock", "_sleeping")

    def __init__(self) -> None:
        self.vectors: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        self._sleeping = False

    def add(self, vector: int) -> bool:
        """Queues ``vector``; True when the vCPU sleeps in HLT and the caller must wake it
        (once: the flag is cleared here, so one wake-up goes out per sleep)."""
        with self._lock:
            self.vectors.append(vector)
            sleeping, self._sleeping = self._sleeping, False
        return sleeping

    def sleep_unless_pending(self) -> bool:
        """On the vCPU's thread, in HLT: True if nothing is pending, and the thread is now
        marked asleep (it blocks on its event channel next); False if a vector is there."""
        with self._lock:
            if self.vectors:
                return False
            self._sleeping = True
            return True

    def awake(self) -> None:
        """The sleeping thread woke (for an event or a wake-up): no more wake-ups are due."""
        with self._lock:
            self._sleeping = False

    def __len__(self) -> int:
        return len(self.vectors)

    def __repr__(self) -> str:
        return f"PendingInterrupts({list(self.vectors)})"


#: Raises of one vector at one vCPU remembered until their handler acknowledges them: far more
#: than a guest that acknowledges has outstanding, and a bound for one that never does.
RAISES_KEPT = 4096


class DeliveryClock:
    """When each raised vector was raised, until its handler says it started: the delivery
    latency, from ``raise_irq`` to the handler's acknowledge (a device's ``irq_acknowledged``,
    the mailbox's IRQ_ACK write). The method, and what it includes: the raise is stamped
    with ``perf_counter_ns`` as it is queued; the acknowledge is the handler's first
    instruction, an MMIO write, stamped when its exit reaches kvmlab, so a latency includes
    that one exit's trip out of the guest (compare ``exit_mmio_write`` latencies) besides the
    kick, the wait for the guest's window, the injection and the CPU's delivery through the
    IDT. Raises of a vector are acknowledged in order (one handler run per injection), so the
    oldest stamp of that vector is the one a handler answers; each vector keeps at most
    ``RAISES_KEPT`` (a guest that never acknowledges costs a bounded amount of memory).
    Only raises through ``KVM_INTERRUPT`` are stamped: on a machine with the in-kernel irqchip
    a raise is an MSI the LAPIC may merge with another, so there is nothing to pair an
    acknowledge with, and ``interrupt_latencies()`` stays empty."""

    __slots__ = ("_raised",)

    def __init__(self) -> None:
        self._raised: dict[int, collections.deque[int]] = {}

    def raised(self, vector: int) -> None:
        stamps = self._raised.get(vector)
        if stamps is None:  # setdefault: two threads raising a new vector at once share one deque
            stamps = self._raised.setdefault(vector, collections.deque(maxlen=RAISES_KEPT))
        stamps.append(perf_counter_ns())

    def acknowledged(self, vector: int, metrics: VcpuMetrics) -> int | None:
        """Records the latency of the oldest unacknowledged raise of ``vector`` (ns, also
        returned); None, and nothing recorded, for a vector nobody raised (a spurious ack)."""
        stamps = self._raised.get(vector)
        if not stamps:
            return None
        latency = perf_counter_ns() - stamps.popleft()
        metrics.irq_delivery_agg.record(latency)
        metrics.irq_delivery_samples.append((vector, latency))
        return latency


def offer(
    pending: PendingInterrupts, u8: memoryview, inject: Callable[[int], None], metrics: VcpuMetrics, trace,
    _ready=READY_FOR_INTERRUPT_INJECTION_U8, _request=REQUEST_INTERRUPT_WINDOW_U8,
) -> None:  # fmt: skip
    """Right before ``KVM_RUN``, on the vCPU's thread, while vectors are pending: injects the
    oldest if the last exit said the guest can take it, and asks for the interrupt window
    while any are left (cleared with the last one, or KVM would exit at every open window)."""
    vectors = pending.vectors
    if u8[_ready]:
        vector = vectors[0]
        inject(vector)  # KVM_INTERRUPT; raises (the vector stays pending) if KVM refuses it
        vectors.popleft()
        u8[_ready] = 0  # one vector is queued in KVM now: none may follow before KVM_RUN returns
        metrics.interrupts_injected += 1
        if trace is not None:
            trace(kinds.INJECTED, vector, 0, 0, perf_counter_ns(), 0)
    u8[_request] = 1 if vectors else 0
