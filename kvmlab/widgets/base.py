"""What every kvmlab view shares: its session, what it follows of it, the closed-machine
notice, and small HTML helpers. Views render; ``kvmlab.lab`` decides.

A view follows the model in one of two ways, and says which in its docstring:
``_follow`` (``observe`` a session trait: render when it changes, on whichever thread changed
it) or ``_link`` (``dlink`` a trait to a widget's value through a transform), for what has an
event; ``_attach(clock)`` for what changes continuously and has none (the plot's rates, the
console text), run on the session's clock. Every view ``_attach``es: that is what keeps the
session's updater (which delivers vCPU transitions) running while the machine runs.
"""

from __future__ import annotations

import html
from typing import Callable

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
        self._followed: list[tuple[Callable, tuple[str, ...]]] = []
        self._links: list[widgets.dlink] = []

    def _closed_notice(self, what: str) -> widgets.HTML:
        notice = widgets.HTML(f"<div style='color:#a00'><b>{escape(what)}</b>: {CLOSED_TEXT}</div>")
        notice.add_class("kvmlab-closed")
        return notice

    def _follow(self, render: Callable[[], None], *names: str) -> None:
        """Calls ``render()`` whenever one of the session's traits ``names`` changes."""

        def handler(_change) -> None:
            render()

        self.session.observe(handler, names=list(names))
        self._followed.append((handler, names))

    def _link(self, name: str, target: tuple[widgets.Widget, str], transform: Callable) -> None:
        """Keeps ``target`` (widget, trait) = ``transform(session.<name>)``; set at once."""
        self._links.append(widgets.dlink((self.session, name), target, transform))

    def _attach(self, clock: Callable[[], None] | None = None) -> None:
        self._token = self.session.attach(clock)

    def refresh(self) -> None:  # pragma: no cover - every view overrides it
        """Renders everything from the model now."""
        raise NotImplementedError

    def close(self) -> None:
        """Stops following the session, then closes its widgets."""
        for handler, names in self._followed:
            self.session.unobserve(handler, names=list(names))
        self._followed.clear()
        for link in self._links:
            link.unlink()
        self._links.clear()
        if self._token is not None:
            self.session.detach(self._token)
            self._token = None
        for child in self.children:
            _close_tree(child)
        super().close()


def _close_tree(widget: widgets.Widget) -> None:
    """Closes a widget and everything inside it. Closing a Box leaves its children open, and
    an open widget stays in ipywidgets' registry: a button's click handler would then keep
    its view, the session and the machine alive after the view was closed."""
    if isinstance(widget, View):
        widget.close()
        return
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def button(description: str, css: str, tooltip: str, width: str = "auto") -> widgets.Button:
    b = widgets.Button(description=description, tooltip=tooltip, layout=widgets.Layout(width=width))
    b.add_class(css)
    return b
