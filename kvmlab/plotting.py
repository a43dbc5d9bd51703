"""``RatePlot``: per-vCPU exit rates over time, on one reused matplotlib figure.

One ``Figure`` on the Agg canvas, no pyplot (DESIGN.md): no global figure registry to leak
into, no GUI backend, the same PNG in a terminal, JupyterLab, Voila or VS Code. ``update()``
moves the existing lines with ``set_data`` instead of drawing a new figure per frame, so a
live view redrawing a few times a second allocates almost nothing.

Only matplotlib and the registry: the CLI writes its PNG with it, and ``kvmlab.widgets``
shows the same PNG in an ``ipywidgets.Image``.
"""

from __future__ import annotations

import io
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DEFAULT_METRICS = ("exit_mmio_read", "exit_mmio_write")
TITLES = {
    "exit_mmio_read": "MMIO reads / s",
    "exit_mmio_write": "MMIO writes / s",
    "exit_io_in": "port reads / s",
    "exit_io_out": "port writes / s",
    "interrupted": "kicks / s",
}


class RatePlot:
    def __init__(
        self,
        registry,
        metrics: Sequence[str] = DEFAULT_METRICS,
        *,
        window_s: float | None = 30.0,
        vcpus: Sequence[int] | None = None,
        size: tuple[float, float] = (8.0, 2.2),
        dpi: int = 100,
    ):
        for name in metrics:
            if not registry.spec(name).cumulative:  # raises KeyError listing the names
                raise ValueError(f"{name!r} is not a count that grows, so it has no rate; pick a counter")
        self.registry = registry
        self.metrics = list(metrics)
        self.window_s = window_s
        self.vcpus = [str(v) for v in (vcpus if vcpus is not None else range(len(registry)))]
        self.figure = Figure(figsize=(size[0], size[1] * len(self.metrics)), dpi=dpi, layout="constrained")
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(len(self.metrics), 1, sharex=True, squeeze=False)[:, 0]
        self.lines: dict[tuple[str, str], object] = {}
        for axes, metric in zip(self.axes, self.metrics):
            axes.set_ylabel(TITLES.get(metric, f"{metric} / s"))
            axes.grid(True, alpha=0.3)
            for vcpu in self.vcpus:
                (line,) = axes.plot([], [], label=f"vCPU {vcpu}")
                self.lines[(metric, vcpu)] = line
        self.axes[0].legend(loc="upper left", fontsize="small", ncols=max(1, len(self.vcpus)))
        self.axes[-1].set_xlabel("seconds since start")
        self.updates = 0

    def latest(self) -> dict[tuple[str, str], float]:
        """The newest rate of each (metric, vCPU) line (0 where there is none yet)."""
        out = {}
        for key, line in self.lines.items():
            ys = line.get_ydata()
            out[key] = float(ys[-1]) if len(ys) else 0.0
        return out

    def update(self) -> None:
        """Pulls the latest sampled rates into the lines and rescales."""
        frame = self.registry.to_dataframe(rates=True, metrics=self.metrics, vcpus=self.vcpus, last_s=self.window_s)
        for metric in self.metrics:
            rows = frame[frame["metric"] == metric]
            for vcpu in self.vcpus:
                mine = rows[rows["vcpu"] == vcpu]
                self.lines[(metric, vcpu)].set_data(mine["elapsed_s"].to_numpy(), mine["value"].to_numpy())
        for axes in self.axes:
            axes.relim()
            axes.autoscale_view()
            low, high = axes.get_ylim()
            axes.set_ylim(0, max(high, 1.0))
        self.updates += 1

    def png(self) -> bytes:
        """The figure as PNG bytes."""
        self.canvas.draw()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        return buffer.getvalue()

    def save(self, path) -> None:
        self.update()
        self.figure.savefig(path)
