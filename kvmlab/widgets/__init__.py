"""Notebook views of a running machine (ipywidgets). They hold no logic: ``kvmlab.lab`` does.

    from kvmlab.widgets import Lab
    Lab(m)             # controls, live exit plot, CPU inspector, console, export

and each piece on its own: ``ControlPanel(m)``, ``ExitPlot(m.metrics)``, ``CpuInspector(m)``,
``Console(m)``. Every view of one machine shares one ``LabSession``: the views observe its
traits (the control panel, the inspector) or follow its clock (the plot, the console), and
its one updater thread runs only while the machine does.
"""

from .console import Console
from .control import ControlPanel
from .inspector import CpuInspector
from .lab import Lab
from .plot import ExitPlot

__all__ = ["Console", "ControlPanel", "CpuInspector", "ExitPlot", "Lab"]
