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

What a newcomer needs from it: the x axis fits the run until the run outgrows the window
(``fitted_window``), only metrics that counted something get a panel, every vCPU's line has
its own dash and markers as well as its colour (``line_style``), and ``latest()`` is the
right end of each line, so a number printed beside the plot is the one it shows.

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
    "interrupts_injected": "interrupts injected / s",
    "irq_window_exits": "interrupt-window exits / s",
    "hlt_wakeups": "wake-ups from HLT / s",
    "coalesced_mmio_write": "coalesced MMIO writes / s",
    "coalesced_drains": "coalesced ring drains / s",
}
#: named sets of metrics the plot's picker offers (those a registry lacks are left out)
PRESETS: dict[str, tuple[str, ...]] = {
    "MMIO": ("exit_mmio_read", "exit_mmio_write"),
    "port I/O": ("exit_io_in", "exit_io_out"),
    "kernel": ("kvm.exits", "kvm.mmio_exits", "kvm.io_exits"),
    "kicks": ("interrupted",),
    "interrupts": ("interrupts_injected", "irq_window_exits", "hlt_wakeups"),
    # the guest's MMIO writes are the sum of the first two: exits against writes that waited
    "coalesced MMIO": ("exit_mmio_write", "coalesced_mmio_write", "coalesced_drains"),
}
#: How each vCPU's line differs from the others' beyond its colour: two vCPUs doing the same
#: work (a ping-pong's writes) draw the same line, and a colour drawn over another hides it
#: exactly. vCPU 0 is thick and solid; the others thinner, dashed or dotted, with markers,
#: so the one underneath shows through.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = (None, "o", "s", "^", "D", "v", "x", "+")
#: the window grows with the run in these steps (x 10^k). Each change of the axes costs a full
#: redraw (~80 ms under the GIL the vCPU threads need), so the steps are few: finer ones (a
#: quarter empty at most) made a Lab cost 15% of the vCPUs' exits in a run's first seconds
#: (benchmarks/lab_overhead.py, docs/benchmarks.md); with these and MIN_LIVE_WINDOW_S, about 7%
#: there and 3% over 10 s
WINDOW_STEPS = (1.0, 2.0, 5.0, 10.0)
#: the shortest window of a running plot: the first seconds of a run would otherwise change the
#: axes (a full redraw) every second, exactly when the rates ramp up (a finished run is fitted
#: exactly, however short)
MIN_LIVE_WINDOW_S = 5.0
#: what the numbers under a live plot are, in words (the same quantity as the line's end)
RATE_MEANING = "counts per second over the last sample interval"


def nice_limit(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def fitted_window(run_s: float, window_s: float, final: bool) -> float:
    """How many seconds the x axis spans: the whole run while it is shorter than the window
    (a 2.6 s run fills the plot instead of its right tenth), then the window. A finished
    run is fitted exactly; a running one in ``WINDOW_STEPS`` (it grows every frame, and
    each change of the axes costs a full redraw)."""
    if run_s >= window_s:
        return float(window_s)
    if final:
        return max(run_s, 0.1)
    run_s = max(run_s, MIN_LIVE_WINDOW_S)
    power = 10 ** math.floor(math.log10(run_s))
    for step in WINDOW_STEPS:
        if run_s <= step * power:
            return float(min(step * power, window_s))
    return float(window_s)


def presets(registry) -> dict[str, tuple[str, ...]]:
    """``PRESETS`` cut to the metrics ``registry`` has (no ``kernel`` on the emulator)."""
    names = {spec.name for spec in registry.specs if spec.cumulative}
    out = {}
    for label, metrics in PRESETS.items():
        kept = tuple(m for m in metrics if m in names)
        if kept:
            out[label] = kept
    return out


def preset_of(registry, metrics: Sequence[str]) -> str | None:
    """The preset whose metrics are exactly ``metrics`` (in any order), if one is."""
    chosen = set(metrics)
    return next((label for label, names in presets(registry).items() if set(names) == chosen), None)


def title(metric: str) -> str:
    return TITLES.get(metric, f"{metric} / s")


def line_style(index: int) -> dict:
    """matplotlib keyword arguments of vCPU ``index``'s line (see ``LINE_STYLES``)."""
    marker = MARKERS[index % len(MARKERS)]
    style = {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "linewidth": 2.4 if index == 0 else 1.3}
    if marker is not None:
        # markers spaced along the line (fractions of the axes' diagonal), staggered per vCPU
        style.update(marker=marker, markersize=4, markevery=(0.04 * (index % 5), 0.12), markerfacecolor="none")
    return style


class RatePlot:
    """Per-vCPU rates of ``metrics``, a panel per metric that has counted anything so far:
    a panel of zeros only pushes the interesting ones down (the caption names the others)."""

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
        self._size = size
        self.figure = Figure(figsize=size, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        #: the metrics with a panel (those that counted anything), in the chosen order
        self.drawn: tuple[str, ...] | None = None
        #: the x axis's span in seconds, and whether it shows a finished run
        self.span: tuple[float, bool] | None = None
        self.axes: list = []
        self.lines: dict[tuple[str, str], object] = {}
        self._background = None
        self.updates = 0
        self.full_draws = 0
        self._layout_key: tuple | None = None
        self._layout(())

    @property
    def empty(self) -> tuple[str, ...]:
        """The chosen metrics that have no panel: nothing counted them so far."""
        return tuple(m for m in self.metrics if m not in (self.drawn or ()))

    def _layout(self, drawn: tuple[str, ...]) -> None:
        """(Re)builds the figure with a panel per metric in ``drawn``, or one panel saying
        there is nothing to draw yet. Rare: only when a metric counts its first event."""
        self.drawn = drawn
        self._layout_key = (drawn, self.registry.samples > 0, self.registry.final)
        self.span = None
        self.figure.clear()
        width, per_panel = self._size
        panels = max(len(drawn), 1)
        height = per_panel * panels if drawn else 1.1
        self.figure.set_size_inches(width, height)
        # Fixed margins, not layout="constrained": the layout engine would run on every frame.
        # Margins in inches (axis labels need the same room whatever the figure's height).
        self.figure.subplots_adjust(left=0.95 / width, right=1 - 0.15 / width, top=1 - 0.12 / height, bottom=0.55 / height, hspace=0.15)
        self.axes = list(self.figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])
        self.lines = {}
        self._background = None
        if not drawn:
            axes = self.axes[0]
            axes.set_axis_off()
            what = " or ".join(title(m).removesuffix(" / s") for m in self.metrics)
            if not self.registry.samples:
                when = "yet: nothing has run"
            else:
                when = ("in this run" if self.registry.final else "so far") + " (pick other metrics above)"
            axes.text(0.5, 0.5, f"no {what} {when}", ha="center", va="center", transform=axes.transAxes, color="0.35")
            return
        for axes, metric in zip(self.axes, drawn):
            axes.set_ylabel(title(metric))
            axes.grid(True, alpha=0.3)
            for index, vcpu in enumerate(self.vcpus):
                (line,) = axes.plot([], [], label=f"vCPU {vcpu}", animated=self.live, **line_style(index))
                self.lines[(metric, vcpu)] = line
        self.axes[0].legend(loc="upper left", fontsize="small", ncols=max(1, len(self.vcpus)))
        for axes in self.axes:
            axes.set_ylim(0, 1)
        if not self.live:
            self.axes[-1].set_xlabel("seconds since start")

    def latest(self) -> dict[tuple[str, str], float]:
        """The newest rate of each (metric, vCPU): exactly the right end of its line (0 where
        there is no line or no point yet), so a number beside the plot is what it shows."""
        out = {(metric, vcpu): 0.0 for metric in self.metrics for vcpu in self.vcpus}
        for key, line in self.lines.items():
            ys = line.get_ydata()
            out[key] = float(ys[-1]) if len(ys) else 0.0
        return out

    def counted(self) -> tuple[str, ...]:
        """The chosen metrics that have counted anything since the machine was created."""
        if not self.registry.samples:
            return ()
        _, values = self.registry.window(self.metrics, rates=False, last_s=0.0)
        totals = np.nan_to_num(values[-1]).sum(axis=0)
        return tuple(m for m, total in zip(self.metrics, totals) if total > 0)

    def update(self) -> None:
        """Pulls the latest sampled rates into the lines (and the axes' limits)."""
        counted = self.counted()
        if (counted, self.registry.samples > 0, self.registry.final) != self._layout_key:
            self._layout(counted)
        elapsed, rates = self.registry.window(self.metrics, rates=True, last_s=self.window_s)
        rates = np.nan_to_num(rates)
        end = float(elapsed[-1]) if len(elapsed) else 0.0
        final = self.registry.final
        if self.live:
            self._fit_x(end, final)
        xs = elapsed - end if self.live and not final else elapsed
        for axes, metric in zip(self.axes, self.drawn):
            j = self.metrics.index(metric)
            peak = 0.0
            for vcpu in self.vcpus:
                ys = rates[:, int(vcpu), j]
                self.lines[(metric, vcpu)].set_data(xs, ys)
                peak = max(peak, float(ys.max()) if len(ys) else 0.0)
            if self.live:
                self._fit_live(axes, peak)
        if not self.live and self.drawn:
            for axes in self.axes:
                axes.relim()
                axes.autoscale_view()
                axes.set_ylim(0, max(axes.get_ylim()[1], 1.0))
        self.updates += 1

    def _fit_x(self, end: float, final: bool) -> None:
        """The x axis spans the run while it is shorter than the window (``fitted_window``):
        "seconds ago" while it runs, "seconds since start" once it has finished."""
        span = (fitted_window(end, self.window_s, final), final)
        if span == self.span:
            return
        self.span = span
        width = span[0]
        for axes in self.axes:
            axes.set_xlim((end - width, end) if final else (-width, 0))
        if self.drawn:
            self.axes[-1].set_xlabel("seconds since start" if final else "seconds ago")
        self._background = None

    def x_limits(self) -> tuple[float, float]:
        """The x axis's limits, in the units its label names."""
        return tuple(self.axes[-1].get_xlim())

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
