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
from traitlets import validate

from ..lab.session import LabSession
from .style import stylesheet

CLOSED_TEXT = "This machine is closed: its vCPUs and memory are gone. Create a new <code>Machine</code> to run again."


def escape(text) -> str:
    return html.escape(str(text))


SCROLL_ROWS = 24  # a table longer than this scrolls inside a visible scroller


def frame_html(frame, max_rows: int = 200, scroll: bool | None = None) -> str:
    """A DataFrame as a compact HTML table (rendered by the browser, not by an Output widget).

    A short table (the registers) is shown whole: cutting it in a box hides its last rows
    (rip, rflags) from anyone who does not think of scrolling. A long one (CPUID, MSRs)
    scrolls in a box that always shows its scrollbar and says how many rows it holds."""
    shown = frame if len(frame) <= max_rows else frame.head(max_rows)
    table = shown.to_html(classes="kvmlab-table", border=0, max_rows=max_rows, index_names=False)  # no second header row
    more = f"<div><i>{len(frame) - max_rows} more rows</i></div>" if len(frame) > max_rows else ""
    if scroll is None:
        scroll = len(shown) > SCROLL_ROWS
    if not scroll:
        return f"<div class='kvmlab-table-box'>{table}</div>{more}"
    hint = f"<div class='kvmlab-hint'>{len(shown)} rows: scroll the box for all of them</div>"
    return f"{hint}<div class='kvmlab-table-box kvmlab-scroll'>{table}</div>{more}"


class View(widgets.VBox):
    """A VBox bound to a machine's (or registry's) ``LabSession``."""

    css_class = "kvmlab-view"

    def __init__(self, target, **kwargs):
        super().__init__(**kwargs)
        self.add_class("kvmlab-view")
        self.add_class(self.css_class)
        self._stylesheet: widgets.HTML | None = stylesheet()
        self.children = ()
        self.session = LabSession.of(target)
        self._token: int | None = None
        self._followed: list[tuple[Callable, tuple[str, ...]]] = []
        self._links: list[widgets.dlink] = []

    @validate("children")
    def _styled(self, proposal) -> tuple:
        """Keeps the stylesheet first among the children, whatever a view assigns: a view
        shown on its own is styled, and its code need not remember the sheet."""
        children = tuple(c for c in proposal["value"] if c is not getattr(self, "_stylesheet", None))
        sheet = getattr(self, "_stylesheet", None)
        return (sheet, *children) if sheet is not None else children

    def _nest(self) -> None:
        """Drops this view's stylesheet: it sits inside another view (a ``Lab``) whose sheet
        covers it, and one sheet per page is enough."""
        sheet, self._stylesheet = self._stylesheet, None
        if sheet is not None:
            self.children = tuple(c for c in self.children if c is not sheet)
            sheet.close()

    def _closed_notice(self, what: str) -> widgets.HTML:
        notice = widgets.HTML(f"<div class='kvmlab-closed'><b>{escape(what)}</b>: {CLOSED_TEXT}</div>")
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
