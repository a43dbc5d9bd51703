"""The Lab's line about absent hardware: how many accesses reached no device, by kind.

A guest probing for hardware kvmlab lacks reads what a PC shows and logs nothing where a
user would see it (that is the point: probing is not a fault), so the Lab says it instead:
"absent hardware: 12 port reads, 3 MMIO writes". Text from the live counters; the control
panel renders it.
"""

from __future__ import annotations

from ..metrics.counters import ABSENT_COUNTERS

#: counter -> (one, many), as the line words it
WORDS = {
    "absent_io_read": ("port read", "port reads"),
    "absent_io_write": ("port write", "port writes"),
    "absent_mmio_read": ("MMIO read", "MMIO reads"),
    "absent_mmio_write": ("MMIO write", "MMIO writes"),
}
assert set(WORDS) == set(ABSENT_COUNTERS), "a word for every absent_* counter"


def absent_counts(registry) -> dict[str, int]:
    """Each ``absent_*`` counter summed over the vCPUs of a ``MetricsRegistry`` (live values)."""
    return {name: sum(getattr(vcpu, name) for vcpu in registry) for name in ABSENT_COUNTERS}


def absent_summary(registry) -> str:
    """"absent hardware: 12 port reads, 3 MMIO writes" (kinds with none left out), or ""
    when every access reached a device."""
    parts = [f"{count:,} {WORDS[name][count != 1]}" for name, count in absent_counts(registry).items() if count]
    return f"absent hardware: {', '.join(parts)}" if parts else ""
