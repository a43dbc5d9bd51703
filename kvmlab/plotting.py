"""``RatePlot``: per-vCPU exit rates over time, on one reused matplotlib figure.

One ``Figure`` on the Agg canvas, no pyplot (matplotlib's "embedding" usage): no global figure registry to leak
into, no GUI backend, the same PNG in a terminal, JupyterLab, Voila or VS Code. ``update()``
moves the existing lines with ``set_data`` instead of drawing a new figure per frame.

Drawing happens with the GIL held, and every millisecond of it is a millisecond the vCPU
threads cannot handle exits: a live view must not distort the rates it shows. So a *live*
plot (``window_s`` set) is blitted: its x axis is "seconds ago" (fixed), its y limits move in
1-2-5 steps only when the data outgrows them (or shrinks well below), and between those rare
full redraws a frame restores the cached axes and draws just the lines (~5 ms instead of
~45 ms for the whole figure here). A whole-run plot (``window_s=None``) draws everything once.

Only matplotlib, Pillow and the registry: the CLI writes its PNG with it, and
``kvmlab.widgets`` shows the same PNG in an ``ipywidgets.Image``.
"""

from __future__ import annotations

from pathlib import Path

import io
import math
from typing import Sequence

import numpy as np
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConfigError

DEFAULT_METRICS = ("exit_mmio_read", "exit_mmio_write")
TITLES = {
    "exit_mmio_read": "MMIO reads / s",
    "exit_mmio_write": "MMIO writes / s",
    "exit_io_in": "port reads / s",
    "exit_io_out": "port writes / s",
    "interrupted": "kicks / s",
}


def nice_limit(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


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
                raise ConfigError(f"{name!r} is not a count that grows, so it has no rate; pick a counter")
        self.registry = registry
        self.metrics = list(metrics)
        self.window_s = window_s
        self.live = window_s is not None
        self.vcpus = [str(v) for v in (vcpus if vcpus is not None else range(len(registry)))]
        # Fixed margins, not layout="constrained": the layout engine would run on every frame.
        height = size[1] * len(self.metrics)
        self.figure = Figure(figsize=(size[0], height), dpi=dpi)
        # margins in inches (axis labels need the same room whatever the figure's height)
        self.figure.subplots_adjust(left=0.95 / size[0], right=1 - 0.15 / size[0], top=1 - 0.12 / height, bottom=0.55 / height, hspace=0.15)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(len(self.metrics), 1, sharex=True, squeeze=False)[:, 0]
        self.lines: dict[tuple[str, str], object] = {}
        for axes, metric in zip(self.axes, self.metrics):
            axes.set_ylabel(TITLES.get(metric, f"{metric} / s"))
            axes.grid(True, alpha=0.3)
            for vcpu in self.vcpus:
                (line,) = axes.plot([], [], label=f"vCPU {vcpu}", animated=self.live)
                self.lines[(metric, vcpu)] = line
        self.axes[0].legend(loc="upper left", fontsize="small", ncols=max(1, len(self.vcpus)))
        if self.live:
            self.axes[-1].set_xlabel("seconds ago")
            for axes in self.axes:
                axes.set_xlim(-window_s, 0)
                axes.set_ylim(0, 1)
        else:
            self.axes[-1].set_xlabel("seconds since start")
        self._background = None
        self.updates = 0
        self.full_draws = 0

    def latest(self) -> dict[tuple[str, str], float]:
        """The newest rate of each (metric, vCPU) line (0 where there is none yet)."""
        out = {}
        for key, line in self.lines.items():
            ys = line.get_ydata()
            out[key] = float(ys[-1]) if len(ys) else 0.0
        return out

    def update(self) -> None:
        """Pulls the latest sampled rates into the lines (and the axes' limits)."""
        elapsed, rates = self.registry.window(self.metrics, rates=True, last_s=self.window_s)
        rates = np.nan_to_num(rates)
        xs = elapsed - (elapsed[-1] if len(elapsed) else 0.0) if self.live else elapsed
        for j, (axes, metric) in enumerate(zip(self.axes, self.metrics)):
            peak = 0.0
            for vcpu in self.vcpus:
                ys = rates[:, int(vcpu), j]
                self.lines[(metric, vcpu)].set_data(xs, ys)
                peak = max(peak, float(ys.max()) if len(ys) else 0.0)
            if self.live:
                self._fit_live(axes, peak)
        if not self.live:
            for axes in self.axes:
                axes.relim()
                axes.autoscale_view()
                axes.set_ylim(0, max(axes.get_ylim()[1], 1.0))
        self.updates += 1

    def _fit_live(self, axes, peak: float) -> None:
        """Moves the y limit in 1-2-5 steps: up as soon as the data needs it, down only once
        it uses less than a fifth (so limits, and full redraws, change rarely)."""
        top = axes.get_ylim()[1]
        wanted = nice_limit(peak * 1.1)
        if wanted > top or wanted < top / 5:
            axes.set_ylim(0, wanted)
            self._background = None

    def png(self) -> bytes:
        """The figure as PNG bytes (blitted for a live plot), encoded with light compression."""
        if not self.live:
            self.canvas.draw()
            self.full_draws += 1
        else:
            if self._background is None:
                self.canvas.draw()  # everything but the (animated) lines
                self._background = self.canvas.copy_from_bbox(self.figure.bbox)
                self.full_draws += 1
            else:
                self.canvas.restore_region(self._background)
            for line in self.lines.values():
                line.axes.draw_artist(line)
        width, height = self.canvas.get_width_height(physical=True)
        image = PIL.Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # Pillow compresses without the GIL
        return buffer.getvalue()

    def save(self, path) -> None:
        """Writes the plot as an image file (a live plot is saved as it currently is)."""
        from .metrics.export import atomic_output

        self.update()
        # Through a temporary file and a rename, as every export: a full disk leaves no
        # half-written image under the final name, and raises an ExportWriteError.
        with atomic_output(Path(path)) as out:
            if self.live:
                out.write(self.png())
            else:
                self.figure.savefig(out, format=Path(path).suffix.lstrip(".") or "png")
