"""``ExitPlot``: live per-vCPU exit rates, one reused figure rendered to PNG in an ``Image``.

The figure and its data come from ``kvmlab.plotting.RatePlot`` (Agg canvas, no pyplot,
``set_data`` updates); this view only chooses metrics and a window and shows the PNG, with the
latest rate of each line as text beside it.

What it follows: its own clock (the session's, ``REFRESH_HZ``), not the model's events. Rates
change with every sample, so a redraw per event would be either too many frames or too few;
a frame is drawn only when a new sample arrived. The "final figures" notice observes the
session's ``phase``.
"""

from __future__ import annotations

import ipywidgets as widgets

from ..errors import ConfigError
from ..lab import rates
from ..plotting import DEFAULT_METRICS, RatePlot
from .base import View, escape


class ExitPlot(View):
    css_class = "kvmlab-exit-plot"

    def __init__(self, metrics, choose=DEFAULT_METRICS, *, window_s: int = 30, width: float = 8.0):
        """``metrics``: a ``MetricsRegistry`` (``m.metrics``) or a ``Machine``."""
        super().__init__(metrics)
        self.registry = self.session.registry
        self._width = width
        choose = tuple(choose)
        for name in choose:
            if not self.registry.spec(name).cumulative:  # KeyError listing the valid names
                raise ConfigError(f"{name!r} is not a count that grows, so it has no rate; pick one of the counters")
        choices = [spec.name for spec in self.registry.specs if spec.cumulative]
        self.metric_picker = widgets.SelectMultiple(options=choices, value=tuple(choose), rows=4, description="metrics")
        self.window = widgets.IntSlider(value=window_s, min=5, max=600, step=5, description="last s")
        self.image = widgets.Image(format="png")
        self.image.add_class("kvmlab-plot-image")
        self.rates = widgets.HTML()
        self.rates.add_class("kvmlab-rates")
        self.notice = widgets.HTML()
        controls = widgets.HBox([self.metric_picker, self.window])
        self.children = [controls, self.image, self.rates, self.notice]
        self.plot = self._new_plot()
        self._seen: tuple = ()
        self.metric_picker.observe(self._reconfigure, names="value")
        self.window.observe(self._reconfigure, names="value")
        self.refresh()
        if not self.session.closed:
            self._follow(self._render_notice, "phase")
            self._follow(self._render_rates, "phase")
            self._attach(self.refresh)

    def _new_plot(self) -> RatePlot:
        return RatePlot(self.registry, self.metric_picker.value or DEFAULT_METRICS, window_s=self.window.value, size=(self._width, 2.0))

    def _reconfigure(self, _change) -> None:
        # On the kernel thread, on a user's change: redraw now (the clock may not be running:
        # a stopped machine has none).
        with self.session.lock:
            self.plot = self._new_plot()
            self._seen = ()
            self.refresh()

    def refresh(self) -> None:
        """A frame, if a sample arrived since the last one (the clock calls it)."""
        plot = self.plot
        key = (id(plot), self.registry.samples, self.registry.ring.last()[1] if self.registry.samples else None)
        if key == self._seen:
            return
        self._seen = key
        plot.update()
        self.image.value = plot.png()
        self._render_rates()
        self._render_notice()

    def _render_rates(self) -> None:
        """The figures beside the plot (``kvmlab.lab.rates``: zero once the machine stopped,
        with the totals); also on a phase change, as a stop brings no new sample."""
        parts = []
        for vcpu, shown in rates.figures(self.plot, self.registry, self.session.running).items():
            values = ", ".join(f"{f.rate:,.0f} {f.title} ({f.total:,.0f} in all)" for f in shown)
            rate = rates.vcpu_rate(shown)
            parts.append(f"<span class='kvmlab-rate-{vcpu}' data-rate='{rate:.1f}'><b>vCPU {vcpu}</b>: {escape(values)}</span>")
        self.rates.value = " &nbsp; ".join(parts)

    def _render_notice(self) -> None:
        notes = []
        if self.registry.kernel_stats_absent:
            notes.append(f"<span class='kvmlab-no-kernel-stats'>KVM's own statistics (kvm.*) are not available: {escape(self.registry.kernel_stats_absent)}</span>")
        if self.session.closed:
            notes.append("<span class='kvmlab-closed'>the machine is closed: these are its final figures</span>")
        self.notice.value = "<i>" + "<br>".join(notes) + "</i>"

    def latest_rate(self, vcpu: int) -> float:
        """Sum of the chosen metrics' rates for one vCPU, as the text shows it (0 once stopped)."""
        return rates.vcpu_rate(rates.figures(self.plot, self.registry, self.session.running)[str(vcpu)])
