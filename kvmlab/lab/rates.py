"""What the plot's figures say: each line's rate now, and its total.

Why not the plot's newest point: that is the rate over the *last sample interval*, which a
machine that stopped (or closed) keeps for ever, so a dead machine read "45,000 MMIO writes
/ s" as its final figures. A machine that is not running makes no exits: its rates are zero;
what it did stays in the totals.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plotting import title


@dataclass(frozen=True)
class Figure:
    """One (metric, vCPU) line's figures, as the plot's text shows them."""

    metric: str
    vcpu: str
    rate: float  # per second, now (0 once the machine is not running)
    total: float  # since the start (the counter itself)

    @property
    def title(self) -> str:
        return title(self.metric)


def figures(plot, registry, running: bool) -> dict[str, list[Figure]]:
    """vCPU label -> the figures of each metric ``plot`` shows, in the plot's order.
    ``running``: whether the machine (or, for a plot alone, its metrics) still runs."""
    latest = plot.latest()
    out: dict[str, list[Figure]] = {}
    for vcpu in plot.vcpus:
        current = registry.current(int(vcpu))
        out[vcpu] = [
            Figure(metric, vcpu, latest[(metric, vcpu)] if running else 0.0, float(current.get(metric, 0.0)))
            for metric in plot.metrics
        ]
    return out


def vcpu_rate(figures_of_vcpu: list[Figure]) -> float:
    """The sum of one vCPU's rates (what the plot's ``data-rate`` and ``latest_rate`` give)."""
    return sum(f.rate for f in figures_of_vcpu)
