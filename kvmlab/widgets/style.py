"""How every kvmlab view looks: one stylesheet, scoped to the ``kvmlab-*`` classes, and the
HTML of the small things views share (state badges, message levels).

Every colour is one of JupyterLab's theme variables (``--jp-ui-font-color1``,
``--jp-brand-color1``, ``--jp-warn-color0``, ...), never a fixed one: the same Lab then
reads in JupyterLab's light and dark themes (and in Voila and Notebook 7, which define the
same variables). The figures are PNGs with a white background; in a dark theme (JupyterLab
marks its ``<body>`` with ``data-jp-theme-light="false"``) they are inverted, with hues
turned back, so the plot does not glare out of a dark page.

Enabled and disabled buttons must differ at a glance, not by a shade of grey: an enabled
button is outlined and lettered in the brand colour; a disabled one is flat, dashed and
faint, and its cursor says no.

The sheet travels as an ``ipywidgets.HTML`` holding a ``<style>`` block, first child of a
top-level view (a view inside a ``Lab`` drops its own: the Lab's covers it).
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from ..lab.badges import Badge

#: spacing, once: between widgets in a row, between rows, inside boxes
GAP = "6px"
#: the control panel's message log: a fixed height, so a new message never pushes the plot
#: down; the newest line stays in view (the box is anchored at its bottom)
LOG_HEIGHT = "7.5em"
#: how tall a scrolling table (CPUID, MSRs) may grow before it scrolls
TABLE_HEIGHT = "360px"

#: message level -> tone
LEVEL_TONES = {"info": "plain", "warning": "warn", "error": "error"}

TONE_COLOURS = {
    "plain": "var(--jp-ui-font-color1)",
    "ok": "var(--jp-success-color1)",
    "warn": "var(--jp-warn-color0)",
    "error": "var(--jp-error-color1)",
    "quiet": "var(--jp-ui-font-color2)",
}

_TONES_CSS = "\n".join(f".kvmlab-view .kvmlab-tone-{tone} {{ color: {colour}; }}" for tone, colour in TONE_COLOURS.items())

STYLESHEET = f"""
.kvmlab-view {{
  color: var(--jp-ui-font-color1);
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
}}
.kvmlab-view .widget-hbox {{ gap: {GAP}; align-items: center; }}
.kvmlab-view .widget-vbox {{ gap: {GAP}; }}
.kvmlab-view .widget-hbox > .widget-inline-hbox, .kvmlab-view .widget-hbox > .jupyter-button {{ margin: 0; }}
.kvmlab-view h3 {{ color: var(--jp-ui-font-color0); margin: 4px 0; }}
.kvmlab-view code, .kvmlab-view pre {{ font-family: var(--jp-code-font-family); }}

/* buttons: enabled = outlined in the brand colour; disabled = flat, dashed, faint */
.kvmlab-view button.jupyter-button {{
  background: var(--jp-layout-color1);
  color: var(--jp-brand-color1);
  border: 1px solid var(--jp-brand-color1);
  border-radius: 4px;
  font-weight: 600;
  margin: 0;
  padding: 0 10px;
  opacity: 1;
}}
.kvmlab-view button.jupyter-button:enabled:hover {{
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color0);
}}
.kvmlab-view button.jupyter-button:disabled {{
  background: transparent;
  color: var(--jp-ui-font-color3);
  border: 1px dashed var(--jp-border-color1);
  font-weight: normal;
  box-shadow: none;
  opacity: 1;
  cursor: not-allowed;
}}
.kvmlab-view button.jupyter-button.mod-active, .kvmlab-view button.kvmlab-all-start:enabled {{
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color0);
}}
.kvmlab-view button.kvmlab-all-stop:enabled {{
  color: var(--jp-error-color1);
  border-color: var(--jp-error-color1);
}}
.kvmlab-view button.kvmlab-all-stop:enabled:hover {{
  background: var(--jp-error-color1);
  color: var(--jp-ui-inverse-font-color0);
}}

/* states, message levels, notices: colour and a word or symbol, never colour alone */
{_TONES_CSS}
.kvmlab-view .kvmlab-state {{ font-weight: 600; white-space: nowrap; }}
.kvmlab-view .kvmlab-hint, .kvmlab-view .kvmlab-absent {{ color: var(--jp-ui-font-color2); }}
.kvmlab-view .kvmlab-closed {{ color: var(--jp-error-color1); }}
.kvmlab-view .kvmlab-log {{
  height: {LOG_HEIGHT};
  line-height: 1.4;
  overflow-y: auto;
  display: flex;
  flex-direction: column-reverse;
  border: 1px solid var(--jp-border-color2);
  border-radius: 4px;
  padding: 2px 6px;
  background: var(--jp-layout-color1);
  box-sizing: border-box;
}}
.kvmlab-view .kvmlab-log-empty {{ color: var(--jp-ui-font-color2); font-style: italic; }}

/* tables: compact, themed; a long one scrolls in a box whose scrollbar is always there */
.kvmlab-view .kvmlab-table-box {{ font-size: 12px; }}
.kvmlab-view .kvmlab-scroll {{
  max-height: {TABLE_HEIGHT};
  overflow-y: scroll;
  border: 1px solid var(--jp-border-color2);
}}
.kvmlab-view table.kvmlab-table {{ border-collapse: collapse; color: var(--jp-ui-font-color1); line-height: 1.3; }}
.kvmlab-view table.kvmlab-table th, .kvmlab-view table.kvmlab-table td {{
  padding: 1px 8px;
  text-align: left;
  border-bottom: 1px solid var(--jp-border-color2);
  font-family: var(--jp-code-font-family);
}}
.kvmlab-view table.kvmlab-table thead th {{ background: var(--jp-layout-color2); }}
.kvmlab-view .kvmlab-side-by-side {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
.kvmlab-view .widget-tab > .widget-tab-contents, .kvmlab-view .lm-TabPanel-stackedPanel {{ overflow: visible; }}
.kvmlab-view pre.kvmlab-code {{ margin: 0; color: var(--jp-content-font-color1); }}

/* the serial console */
.kvmlab-view pre.kvmlab-serial {{
  background: var(--jp-cell-editor-background);
  color: var(--jp-content-font-color1);
  border: 1px solid var(--jp-border-color2);
  padding: 6px;
  max-height: 240px;
  overflow: auto;
  margin: 0;
}}

/* the plot: a PNG with a white background, inverted (hues kept) in a dark theme */
body[data-jp-theme-light="false"] .kvmlab-view .kvmlab-plot-image {{ filter: invert(0.88) hue-rotate(180deg); }}
.kvmlab-view .kvmlab-rates {{ font-variant-numeric: tabular-nums; }}
.kvmlab-view .kvmlab-presets .widget-toggle-buttons {{ gap: 4px; }}
"""


def stylesheet() -> widgets.HTML:
    """The stylesheet as a widget to put first in a view."""
    sheet = widgets.HTML(f"<style>{STYLESHEET}</style>")
    sheet.add_class("kvmlab-stylesheet")
    return sheet


def badge_html(badge: Badge) -> str:
    """A state as its symbol and words, in its tone's colour."""
    return f"<span class='kvmlab-tone-{badge.tone}'>{html.escape(str(badge))}</span>"


def tone_class(level: str) -> str:
    """The CSS class of a message of ``level`` ("info", "warning", "error")."""
    return f"kvmlab-tone-{LEVEL_TONES[level]}"
