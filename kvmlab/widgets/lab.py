"""``Lab``: the control panel, the live exit plot, the CPU inspector and the console in one
layout, plus an export of the run. Starts nothing by itself.

What it follows: nothing itself; each part follows the session as its docstring says (the
control panel and inspector its traits, the plot and console its clock). The export's result
comes back through ``session.submit``'s ``done``."""

from __future__ import annotations

import ipywidgets as widgets

from ..lab.export import DEFAULT_FOLDER, export_run
from .base import View, button, escape
from .console import Console
from .control import ControlPanel
from .inspector import CpuInspector
from .plot import ExitPlot


class Lab(View):
    css_class = "kvmlab-lab"

    def __init__(self, machine, *, export_folder: str = DEFAULT_FOLDER):
        super().__init__(machine)
        self.machine = machine
        program = machine.program.program.name if getattr(machine, "program", None) else "nothing loaded"
        title = widgets.HTML(
            f"<h3>kvmlab: {machine.vcpu_count} vCPU(s), {escape(program)}, "
            f"engine {escape(getattr(machine, 'engine', 'kvm'))}</h3>"
        )
        if machine.closed:
            self.children = [title, self._closed_notice("Lab")]
            return
        self.control = ControlPanel(machine)
        self.plot = ExitPlot(machine)
        self.inspector = CpuInspector(machine)
        self.console = Console(machine)
        for part in (self.control, self.plot, self.inspector, self.console):
            part._nest()
        self.tabs = widgets.Tab(children=[self.plot, self.inspector, self.console], titles=["Exits", "CPU inspector", "Console"])
        self.folder = widgets.Text(value=export_folder, description="folder")
        self.export_button = button("Export", "kvmlab-export", "Write the metrics (CSV, Parquet), totals, trace and plot (PNG)")
        self.export_result = widgets.HTML()
        self.export_result.add_class("kvmlab-export-result")
        self.export_button.on_click(lambda _: self.export())
        export_row = widgets.HBox([self.folder, self.export_button])
        self.children = [title, self.control, self.tabs, export_row, self.export_result]

    def export(self) -> None:
        """Queues the export; the result (paths, or why not) appears under the button."""
        folder = self.folder.value
        self.export_button.disabled = True
        self.export_result.value = f"<i>exporting to {escape(folder)} ...</i>"

        def done(paths, error):
            if error is None:
                items = "".join(f"<li><code>{escape(p)}</code></li>" for p in paths)
                self.export_result.value = f"<div class='kvmlab-export-ok'>written:<ul>{items}</ul></div>"
                self.session.post("info", f"exported {len(paths)} files to {paths[0].parent}" if paths else "exported nothing")
            else:
                self.export_result.value = f"<div class='kvmlab-export-error kvmlab-tone-error'>export failed: {escape(error)}</div>"
            self.export_button.disabled = False

        self.session.submit("export", lambda: export_run(self.machine, folder), done)

    def refresh(self) -> None:
        """Renders every part now (a closed machine's Lab has only its notice)."""
        for name in ("control", "plot", "inspector", "console"):
            part = getattr(self, name, None)
            if part is not None:
                part.refresh()
