"""``ExitPlot``: live per-vCPU exit rates, one reused figure rendered to PNG in an ``Image``.

The figure and its data come from ``kvmlab.plotting.RatePlot`` (Agg canvas, no pyplot,
``set_data`` updates); this view only chooses metrics and a window and shows the PNG, with the
latest rate of each line (the line's right end: the same number) as text under it.

What it follows: its own clock (the session's, ``REFRESH_HZ``), not the model's events. Rates
change with every sample, so a redraw per event would be either too many frames or too few;
a frame is drawn only when a new sample arrived. The "final figures" notice observes the
session's ``phase``.
"""

from __future__ import annotations

import ipywidgets as widgets

from ..errors import ConfigError
from ..lab import rates
from ..plotting import DEFAULT_METRICS, RATE_MEANING, RatePlot, preset_of, presets, title
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
        self._build_picker(choose)
        self.window = widgets.IntSlider(value=window_s, min=5, max=600, step=5, description="window, s",
                                        tooltip="the plot shows at most this many seconds (the whole run while it is shorter)")  # fmt: skip
        self.image = widgets.Image(format="png")
        self.image.add_class("kvmlab-plot-image")
        self.rates = widgets.HTML()
        self.rates.add_class("kvmlab-rates")
        self.notice = widgets.HTML()
        controls = widgets.VBox([widgets.HBox([self.preset_picker, self.window]), self.metric_picker])
        self.children = [controls, self.image, self.rates, self.notice]
        self.plot = self._new_plot()
        self._seen: tuple = ()
        self.window.observe(self._reconfigure, names="value")
        self.refresh()
        if not self.session.closed:
            self._follow(self._render_notice, "phase")
            self._follow(self._render_rates, "phase")
            self._follow(self._specs_changed, "program")  # load()/boot(): the vCPUs, and KVM's kvm.* metrics, now exist
            self._attach(self.refresh)

    def _build_picker(self, choose: tuple[str, ...]) -> None:
        """The metric picker: presets ("MMIO", "port I/O", "kernel") as toggle buttons, and
        the chosen metrics as tags one can remove or add (typing a name searches them). A
        multi-select list showed four rows of sixty names and hid what was selected."""
        self._presets = presets(self.registry)
        choices = [spec.name for spec in self.registry.specs if spec.cumulative]
        self.preset_picker = widgets.ToggleButtons(options=list(self._presets), value=preset_of(self.registry, choose), description="show",
                                                   style={"button_width": "auto"},
                                                   tooltips=[", ".join(names) for names in self._presets.values()])  # fmt: skip
        self.preset_picker.add_class("kvmlab-presets")
        self.metric_picker = widgets.TagsInput(value=list(choose), allowed_tags=choices, allow_duplicates=False,
                                               placeholder="add a metric (type to search)", layout=widgets.Layout(width="100%"))  # fmt: skip
        self.metric_picker.add_class("kvmlab-metric-picker")
        self.preset_picker.observe(self._preset_chosen, names="value")
        self.metric_picker.observe(self._reconfigure, names="value")

    def _specs_changed(self) -> None:
        """A plot made before ``load()`` offers the metrics that exist then; the vCPUs bring
        KVM's own (``kvm.*``) with them: offer those too, and the "kernel" preset."""
        choices = [spec.name for spec in self.registry.specs if spec.cumulative]
        if list(self.metric_picker.allowed_tags) == choices:
            return
        with self.session.lock:
            self._presets = presets(self.registry)
            chosen = preset_of(self.registry, self.metric_picker.value)
            self.preset_picker.options = list(self._presets)
            self.preset_picker.tooltips = [", ".join(names) for names in self._presets.values()]
            self.preset_picker.value = chosen
            self.metric_picker.allowed_tags = choices
        self._render_notice()

    def _preset_chosen(self, change) -> None:
        if change["new"] is not None and set(self.metric_picker.value) != set(self._presets[change["new"]]):
            self.metric_picker.value = list(self._presets[change["new"]])

    def _new_plot(self) -> RatePlot:
        return RatePlot(self.registry, list(self.metric_picker.value) or DEFAULT_METRICS, window_s=self.window.value, size=(self._width, 2.0))

    def _reconfigure(self, _change) -> None:
        # On the kernel thread, on a user's change: redraw now (the clock may not be running:
        # a stopped machine has none).
        with self.session.lock:
            preset = preset_of(self.registry, self.metric_picker.value)
            if self.preset_picker.value != preset:
                self.preset_picker.value = preset
            self.plot = self._new_plot()
            self._seen = ()
            self.refresh()

    def refresh(self) -> None:
        """A frame, if a sample arrived since the last one (the clock calls it)."""
        plot = self.plot
        # final: the stop's last sample can be drawn before the registry says it is the last,
        # and a finished run is drawn differently (fitted exactly, "seconds since start")
        key = (id(plot), self.registry.samples, self.registry.ring.last()[1] if self.registry.samples else None, self.registry.final)
        if key == self._seen:
            return
        self._seen = key
        plot.update()
        self.image.value = plot.png()
        self._render_rates()
        self._render_notice()

    def _render_rates(self) -> None:
        """The figures under the plot (``kvmlab.lab.rates``: zero once the machine stopped,
        with the totals); also on a phase change, as a stop brings no new sample."""
        self.rates.value = self._rates_html(self.plot)

    def _rates_html(self, plot: RatePlot) -> str:
        """Each vCPU's rates of the metrics with a panel: while it runs, the right end of
        each line (``RatePlot.latest``), and a line saying what that quantity is, how much
        time the plot spans and which chosen metrics have no panel."""
        running = self.session.running
        parts = []
        for vcpu, shown in rates.figures(plot, self.registry, running).items():
            drawn = [f for f in shown if f.metric in (plot.drawn or ())]
            values = ", ".join(f"{f.rate:,.0f} {f.title} ({f.total:,.0f} in all)" for f in drawn) or "nothing counted"
            parts.append(f"<span class='kvmlab-rate-{vcpu}' data-rate='{rates.vcpu_rate(shown):.1f}'><b>vCPU {vcpu}</b>: {escape(values)}</span>")
        sampler = self.registry.sampler
        interval = f" ({1 / sampler.hz:.2g} s)" if sampler is not None and sampler.hz else ""
        meaning = f"now: {RATE_MEANING}{interval}, the right end of each line" if running else "not running: nothing counted now (0 / s); the totals stay"
        span = f"; the plot spans {plot.span[0]:.1f} s" if plot.span and plot.drawn else ""
        empty = f"; no panel for {', '.join(title(m).removesuffix(' / s') for m in plot.empty)}: none so far" if plot.drawn and plot.empty else ""
        window = f" data-window='{plot.span[0]:.2f}'" if plot.span and plot.drawn else ""
        return " &nbsp; ".join(parts) + f"<div class='kvmlab-hint'{window}>{escape(meaning + span + empty)}</div>"

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
