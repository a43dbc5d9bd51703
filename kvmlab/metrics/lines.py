"""Counters of the interrupt lines a machine raises from user space with KVM's in-kernel
irqchip: per line (``LineCounters``), and summed over a machine (``LineMetrics.totals``).

Why per machine and not per vCPU like every other counter: a GSI is an input of the machine's
IOAPIC and PIC, and which vCPU it reaches is the guest's choice (its redirection entries), not
the raiser's. So the registry shows these totals in every vCPU's row, and once (not summed)
in 'all' (``MetricSpec.combine == "same"``). The vCPU's side of the same interrupts is in
KVM's own statistics: ``kvm.irq_injections`` counts what each vCPU took.

The machine's doorbells (``Machine.ioeventfd``, ``kvmlab.vstate.doorbells``) are counted here
too (``DoorbellCounters``, ``ioeventfd_*``), for the same reason: the eventfd a guest write
signals does not say which vCPU wrote it, on KVM or on the emulated engine.

Many threads raise (a notebook cell, device handlers on every vCPU thread, the resampler), so
unlike ``VcpuMetrics`` these are written under the lock of the line they count.
"""

from __future__ import annotations

import threading

#: What one line counts (a ``LineCounters`` slot each), in table order.
LINE_FIELDS = ("raises", "pulses", "lowers", "coalesced", "masked", "triggers", "resamples", "retriggers")

#: The machine-wide totals the registry samples: (metric name, per-line field or None, unit, help).
LINE_METRICS = (
    ("line_raises", "raises", "raises", "IRQ line asserts left asserted (IrqLine.raise_(): KVM_IRQ_LINE level 1), a level-triggered device's interrupt"),
    ("line_pulses", "pulses", "pulses", "IRQ line edges (IrqLine.pulse(): KVM_IRQ_LINE 1 then 0), an edge-triggered device's interrupt"),
    ("line_lowers", "lowers", "lowers", "IRQ line deasserts (IrqLine.lower(): KVM_IRQ_LINE level 0)"),
    ("line_coalesced", "coalesced", "raises", "asserts KVM coalesced with an interrupt still pending (KVM_IRQ_LINE_STATUS 0)"),
    ("line_masked", "masked", "raises", "asserts every interrupt controller ignored (KVM_IRQ_LINE_STATUS < 0: masked)"),
    ("irqfd_triggers", "triggers", "triggers", "eventfd writes that raised a GSI without a vCPU exit (KVM_IRQFD), kvmlab's own re-triggers included"),
    ("irqfd_resamples", "resamples", "EOIs", "guest EOIs of a level irqfd, reported on its resample eventfd (KVM_IRQFD_FLAG_RESAMPLE)"),
    ("irqfd_retriggers", "retriggers", "triggers", "resamples after which the device still asserted, so kvmlab triggered again"),
    ("msis_sent", None, "interrupts", "interrupts raise_irq sent as MSIs to a LAPIC with the in-kernel irqchip (KVM_SIGNAL_MSI)"),
    # Doorbells (Machine.ioeventfd, kvmlab.vstate.doorbells): machine-wide, because an eventfd
    # does not say which vCPU wrote it (KVM adds 1 to it inside KVM_RUN and nothing more).
    ("ioeventfd_signals", "doorbell.signals", "writes", "guest writes that rang a doorbell (KVM_IOEVENTFD) instead of exiting, as served by the I/O thread"),
    ("ioeventfd_wakeups", "doorbell.wakeups", "wakeups", "times the I/O thread served a doorbell: one eventfd read, which may sum several writes"),
    ("ioeventfd_errors", "doorbell.errors", "errors", "doorbell handlers that raised (each also in Machine.device_errors, with vcpu None); the I/O thread went on"),
)
LINE_METRIC_NAMES = tuple(name for name, *_ in LINE_METRICS)


class LineCounters:
    """What one line (``source`` "line" or "irqfd", input ``gsi``) did. Written under its
    owner's lock; read by anyone (a slot read is atomic)."""

    __slots__ = ("source", "gsi", "level_triggered") + LINE_FIELDS

    def __init__(self, source: str, gsi: int, level_triggered: bool = False):
        self.source = source
        self.gsi = gsi
        #: for an irqfd: whether it resamples (a level-triggered device); a line is either
        self.level_triggered = level_triggered
        for name in LINE_FIELDS:
            setattr(self, name, 0)

    def values(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LINE_FIELDS}

    def __repr__(self) -> str:
        nonzero = ", ".join(f"{k}={v}" for k, v in self.values().items() if v)
        return f"LineCounters({self.source} {self.gsi}, {nonzero or 'nothing yet'})"


#: What one doorbell counts, in table order.
DOORBELL_FIELDS = ("signals", "wakeups", "errors")


class DoorbellCounters:
    """What one doorbell (``Machine.ioeventfd``) served. Written by the I/O thread (and by the
    thread that stops or closes the machine, for the last drain); read by anyone."""

    __slots__ = ("bus", "address", "size", "datamatch") + DOORBELL_FIELDS

    def __init__(self, bus: str, address: int, size: int, datamatch: int | None):
        self.bus, self.address, self.size, self.datamatch = bus, address, size, datamatch
        for name in DOORBELL_FIELDS:
            setattr(self, name, 0)

    def __repr__(self) -> str:
        return f"DoorbellCounters({self.bus} {self.address:#x}/{self.size}, " + ", ".join(f"{n}={getattr(self, n)}" for n in DOORBELL_FIELDS) + ")"


class LineMetrics:
    """Every line of one machine that was ever made, and the MSIs sent. Lines stay here after
    they are closed, so their counts still add up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lines: list[LineCounters] = []
        #: MSIs ``raise_irq`` sent (``msis_sent``), by the vCPU they went to
        self.msis_by_vcpu: dict[int, int] = {}
        #: every doorbell ever registered (``ioeventfd_*``), kept after it is closed
        self.doorbells: list[DoorbellCounters] = []

    def add_doorbell(self, counters: DoorbellCounters) -> None:
        with self._lock:
            self.doorbells.append(counters)

    def new_line(self, source: str, gsi: int, level_triggered: bool = False) -> LineCounters:
        counters = LineCounters(source, gsi, level_triggered)
        with self._lock:
            self.lines.append(counters)
        return counters

    def count_msi(self, vcpu: int) -> None:
        with self._lock:
            self.msis_by_vcpu[vcpu] = self.msis_by_vcpu.get(vcpu, 0) + 1

    def totals(self) -> tuple[int, ...]:
        """The machine-wide values, in ``LINE_METRICS`` order."""
        lines = list(self.lines)
        bells = list(self.doorbells)
        msis = sum(self.msis_by_vcpu.values())
        return tuple(
            msis if field is None
            else sum(getattr(bell, field[9:]) for bell in bells) if field.startswith("doorbell.")
            else sum(getattr(line, field) for line in lines)
            for _, field, *_ in LINE_METRICS
        )  # fmt: skip

    def doorbell_rows(self) -> list[tuple]:
        """(bus, address, size, datamatch, *DOORBELL_FIELDS) per doorbell, in the order made."""
        return [(b.bus, b.address, b.size, b.datamatch, *(getattr(b, f) for f in DOORBELL_FIELDS)) for b in list(self.doorbells)]

    def rows(self) -> list[tuple]:
        """(source, gsi, trigger, *LINE_FIELDS) per line, in the order they were made."""
        return [
            (line.source, line.gsi, "level" if line.level_triggered else ("edge" if line.source == "irqfd" else "any"), *(getattr(line, f) for f in LINE_FIELDS))
            for line in list(self.lines)
        ]
