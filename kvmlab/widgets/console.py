"""``Console``: the guest's serial output as it arrives.

What it follows: the session's clock. Serial output arrives a byte per exit, with no event
worth waking a thread for; the clock redraws only when ``console.version`` moved, and runs
only while the machine does (its last frame comes when the machine stops)."""

from __future__ import annotations

import ipywidgets as widgets

from .base import View, escape

SHOWN = 20_000  # characters kept on screen (the machine keeps up to 1 MiB)


class Console(View):
    css_class = "kvmlab-console-view"

    def __init__(self, machine):
        super().__init__(machine)
        self.machine = machine
        if machine.closed:
            self.children = [self._closed_notice("Console")]
            return
        self.output = widgets.HTML()
        self.output.add_class("kvmlab-console")
        self.children = [widgets.HTML("<b>serial console (COM1)</b>"), self.output]
        self._version = -1
        self.refresh()
        self._attach(self.refresh)

    @property
    def text(self) -> str:
        return self.machine.console.text[-SHOWN:] if not self.machine.closed else ""

    def refresh(self) -> None:
        """Redraws the text if the guest printed since the last frame."""
        if self.machine.closed:
            return
        version = self.machine.console.version
        if version == self._version:
            return
        self._version = version
        body = escape(self.text) or "<i>(nothing printed yet)</i>"
        self.output.value = (
            "<pre class='kvmlab-serial'>" + body + "</pre>"
        )
