"""What every kvmlab view shares: its session, its refresh registration, the closed-machine
notice, and small HTML helpers. Views render; ``kvmlab.lab`` decides."""

from __future__ import annotations

import html

import ipywidgets as widgets

from ..lab.session import LabSession

CLOSED_TEXT = "This machine is closed: its vCPUs and memory are gone. Create a new <code>Machine</code> to run again."


def escape(text) -> str:
    return html.escape(str(text))


def frame_html(frame, max_rows: int = 200) -> str:
    """A DataFrame as a compact HTML table (rendered by the browser, not by an Output widget)."""
    shown = frame if len(frame) <= max_rows else frame.head(max_rows)
    table = shown.to_html(classes="kvmlab-table", border=0, max_rows=max_rows)
    more = f"<div><i>{len(frame) - max_rows} more rows</i></div>" if len(frame) > max_rows else ""
    return f"<div style='max-height:360px; overflow:auto; font-size:12px'>{table}</div>{more}"


class View(widgets.VBox):
    """A VBox bound to a machine's (or registry's) ``LabSession``."""

    css_class = "kvmlab-view"

    def __init__(self, target, **kwargs):
        super().__init__(**kwargs)
        self.add_class(self.css_class)
        self.session = LabSession.of(target)
        self._token: int | None = None

    def _closed_notice(self, what: str) -> widgets.HTML:
        notice = widgets.HTML(f"<div style='color:#a00'><b>{escape(what)}</b>: {CLOSED_TEXT}</div>")
        notice.add_class("kvmlab-closed")
        return notice

    def _attach(self) -> None:
        self._token = self.session.attach(self.refresh)

    def refresh(self) -> None:  # pragma: no cover - every view overrides it
        raise NotImplementedError

    def close(self) -> None:
        """Stops refreshing this view, then closes its widgets."""
        if self._token is not None:
            self.session.detach(self._token)
            self._token = None
        for child in self.children:
            child.close()
        super().close()


def button(description: str, css: str, tooltip: str, width: str = "auto") -> widgets.Button:
    b = widgets.Button(description=description, tooltip=tooltip, layout=widgets.Layout(width=width))
    b.add_class(css)
    return b
