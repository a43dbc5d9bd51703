"""What metrics a registry has: each one's name, kind, unit and how vCPUs combine into 'all'.

Names are flat strings used as DataFrame columns / categories:

* counters, Firecracker's names: ``exit_mmio_read``, ``exit_io_out``, ``failures``, ...
* latency aggregates around the device call: ``exit_mmio_write_agg.count`` / ``.min_us`` /
  ``.max_us`` / ``.sum_us``
* the machine's interrupt lines, summed over its lines (``kvmlab.metrics.lines``):
  ``line_raises``, ``line_pulses``, ``irqfd_triggers``, ``msis_sent``, ...; the same value in
  every vCPU's row, since a line belongs to the machine, not to a vCPU
* the machine's doorbells (``Machine.ioeventfd``), summed over them: ``ioeventfd_signals``,
  ``ioeventfd_wakeups``, ``ioeventfd_errors``; machine-wide too, since an eventfd does not say
  which vCPU wrote it
* the kernel's own per-vCPU statistics (KVM's binary stats fd): ``kvm.exits``,
  ``kvm.mmio_exits``, ``kvm.halt_exits``, ``kvm.signal_exits``, ``kvm.insn_emulation``, ...
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kvm.stats import StatType, StatUnit
from .counters import AGGREGATES, COUNTERS
from .lines import LINE_METRICS

COUNTER_HELP = {
    "exit_mmio_read": "MMIO reads that left the guest (KVM_EXIT_MMIO, is_write = 0)",
    "exit_mmio_write": "MMIO writes that left the guest (KVM_EXIT_MMIO, is_write = 1)",
    "exit_io_in": "port reads that left the guest (KVM_EXIT_IO in)",
    "exit_io_out": "port writes that left the guest (KVM_EXIT_IO out)",
    "coalesced_mmio_write": (
        "MMIO writes queued in the coalesced MMIO ring and delivered to their device by this vCPU's drains "
        "(the ring does not say which vCPU wrote; drains outside any vCPU count on vCPU 0)"
    ),
    "coalesced_pio_write": "port writes (OUT) queued in the coalesced ring and delivered by this vCPU's drains (as coalesced_mmio_write)",
    "coalesced_drains": "drains of the coalesced MMIO ring that delivered writes (before exits, pauses, samples, the stop)",
    "exit_hlt": "HLT exits (with IF=0 the vCPU stopped; with IF=1 it waited for an interrupt)",
    "exit_shutdown": "SHUTDOWN exits (triple fault)",
    "exit_debug": "KVM_EXIT_DEBUG (single-step, breakpoints)",
    "interrupted": "KVM_RUN ended by a kick (EINTR), or skipped because one was pending",
    "interrupts_injected": "interrupt vectors injected with KVM_INTERRUPT (raise_irq), each exactly once",
    "irq_window_exits": "KVM_EXIT_IRQ_WINDOW_OPEN: the guest could take an interrupt kvmlab was holding",
    "hlt_wakeups": "HLTs with IF=1 that an interrupt ended (the vCPU waited for it, or found it pending)",
    "failures": "exits that ended the vCPU with an error (Firecracker's failures counter)",
    "unhandled_accesses": "MMIO/port accesses no device claims (the sum of the absent_* counters)",
    "absent_io_read": "port reads no device claims (they read all ones, as on a PC)",
    "absent_io_write": "port writes no device claims (dropped, as on a PC)",
    "absent_mmio_read": "MMIO reads outside RAM that no device claims (they read all ones)",
    "absent_mmio_write": "MMIO writes outside RAM that no device claims (dropped)",
    "device_errors": "device handlers that raised",
}

#: The counters that count something other than exits
COUNTER_UNITS = {"interrupts_injected": "interrupts", "hlt_wakeups": "wakeups", "coalesced_mmio_write": "writes", "coalesced_pio_write": "writes", "coalesced_drains": "drains"}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "counter", "latency", "line" (the machine's, in every vCPU's row) or "kernel"
    cumulative: bool  # only ever grows: a per-second rate makes sense
    combine: str  # how 'all' combines the vCPUs: "sum", "min", "max" or "same" (one machine-wide value)
    unit: str
    help: str

    @property
    def integer(self) -> bool:
        """Whether every value is a whole number: counts of exits, and KVM's statistics (u64s,
        whatever their unit). Why it matters: a DataFrame should show 120000, not 1.2e+05."""
        return self.kind in ("counter", "line", "kernel") or self.name.endswith(".count")


def exit_metric_specs() -> list[MetricSpec]:
    specs = [MetricSpec(name, "counter", True, "sum", COUNTER_UNITS.get(name, "exits"), COUNTER_HELP[name]) for name in COUNTERS]
    for agg in AGGREGATES:
        what = agg[: -len("_agg")]
        unit, timed, shortest, longest, total = AGGREGATE_WORDS.get(agg, AGGREGATE_WORDS[None])
        specs += [
            MetricSpec(f"{agg}.count", "latency", True, "sum", unit, f"{what}: {timed}"),
            MetricSpec(f"{agg}.min_us", "latency", False, "min", "us", f"{what}: {shortest}"),
            MetricSpec(f"{agg}.max_us", "latency", False, "max", "us", f"{what}: {longest}"),
            MetricSpec(f"{agg}.sum_us", "latency", True, "sum", "us", f"{what}: {total}"),
        ]
    return specs


def line_metric_specs() -> list[MetricSpec]:
    """The machine's interrupt-line totals (``kvmlab.metrics.lines``)."""
    return [MetricSpec(name, "line", True, "same", unit, f"{text} (the machine's, in every vCPU's row)") for name, _, unit, text in LINE_METRICS]


#: How each aggregate's four metrics are described: (unit of the count, the count, the
#: minimum, the maximum, the sum); None: the exit kinds' device calls.
AGGREGATE_WORDS = {
    None: ("exits", "device calls timed", "shortest device call", "longest device call", "time spent in device calls"),
    "irq_delivery_agg": (
        "interrupts", "interrupts timed from raise_irq to the handler's acknowledge (IRQ_ACK)",
        "quickest delivery", "slowest delivery", "total delivery time",
    ),
}  # fmt: skip


def _unit(unit, exponent: int) -> str:
    base = {StatUnit.NONE: "", StatUnit.BYTES: "B", StatUnit.SECONDS: "s", StatUnit.CYCLES: "cycles", StatUnit.BOOLEAN: "bool"}.get(unit, "")
    if unit == StatUnit.SECONDS and exponent in (-3, -6, -9):
        return {-3: "ms", -6: "us", -9: "ns"}[exponent]
    return f"{base}*10^{exponent}" if exponent and base else base


def kernel_metric_specs(descriptors) -> list[MetricSpec]:
    """Scalar KVM stats (histograms are left out of time series)."""
    specs = []
    for d in descriptors:
        if d.size != 1:
            continue
        cumulative = d.type == StatType.CUMULATIVE
        combine = "max" if d.type == StatType.PEAK else "sum"
        specs.append(MetricSpec(f"kvm.{d.name}", "kernel", cumulative, combine, _unit(d.unit, d.exponent) or "count", f"KVM's own {d.name}"))
    return specs
