"""``ControlPanel``: a row per vCPU (state, Pause, Resume, Save state, Dump CPU config, Raise
IRQ) and a row for all (Start, Pause all, Resume all, Stop), and a line counting accesses to
absent hardware. Clicks only queue work on the session.

What it follows: the rows, buttons and phase line observe the session's ``phase``, ``exit``,
``program``, ``states`` and ``pending`` (they change on events: a transition, a stop, a
click) and ``irq_vector`` (Raise IRQ is enabled once the guest chose the mailbox's vector);
the messages observe ``messages``; the absent-hardware line is ``dlink``ed to ``absent``.
``absent`` and ``irq_vector`` follow the session's clock (a counter changes on every exit,
a register on a guest's write, with no event to follow). The panel itself keeps no clock."""

from __future__ import annotations

import ipywidgets as widgets

from ..lab.badges import state_badge
from .base import View, button, escape
from .style import LOG_HEIGHT, badge_html, tone_class

PER_VCPU = (
    ("pause", "Pause", "Pause this vCPU (kicks it out of KVM_RUN)"),
    ("resume", "Resume", "Resume this vCPU"),
    ("save_state", "Save state", "Save this paused vCPU's registers, MSRs, FPU, ... (shown in the inspector)"),
    ("dump_cpu_config", "Dump CPU config", "Dump the CPUID leaves and MSRs set on this paused vCPU"),
    ("raise_irq", "Raise IRQ",
     "Raise the mailbox's interrupt at this vCPU, as its doorbell does (enabled once the guest wrote a vector to IRQ_VECTOR)"),
)
ALL_VCPUS = (
    ("start", "Start", "Start the vCPU threads (they start paused and are resumed)"),
    ("pause", "Pause all", "Pause every running vCPU"),
    ("resume", "Resume all", "Resume every paused vCPU"),
    ("stop", "Stop", "Finish every vCPU thread (the machine cannot restart)"),
)
LOG_EMPTY = "actions you take here, and what came of them, are logged here"


class ControlPanel(View):
    css_class = "kvmlab-control-panel"

    def __init__(self, machine, messages: int = 50):
        """``messages``: how many of the latest messages the log holds (it scrolls; its
        height is fixed, so the views under it stay where they are)."""
        super().__init__(machine)
        self.machine = machine
        self._messages_shown = messages
        if machine.closed:
            self.children = [self._closed_notice("Control panel")]
            return
        self.state_labels: list[widgets.HTML] = []
        self.vcpu_buttons: list[dict[str, widgets.Button]] = []
        rows = []
        for index in range(machine.vcpu_count):
            label = widgets.HTML(layout=widgets.Layout(min_width="160px"))
            label.add_class("kvmlab-state")
            buttons = {}
            for action, text, tip in PER_VCPU:
                b = button(text, f"kvmlab-{action.replace('_', '-')}", tip)
                b.on_click(lambda _, a=action, i=index: self.session.request(a, i))
                buttons[action] = b
            name = widgets.HTML(f"<b>vCPU {index}</b>", layout=widgets.Layout(width="60px"))
            row = widgets.HBox([name, label, *buttons.values()])
            row.add_class(f"kvmlab-vcpu-{index}")
            rows.append(row)
            self.state_labels.append(label)
            self.vcpu_buttons.append(buttons)
        self.all_buttons: dict[str, widgets.Button] = {}
        for action, text, tip in ALL_VCPUS:
            b = button(text, f"kvmlab-all-{action}", tip)
            b.on_click(lambda _, a=action: self.session.request(a, None))
            self.all_buttons[action] = b
        all_row = widgets.HBox([widgets.HTML("<b>all</b>", layout=widgets.Layout(width="60px")), *self.all_buttons.values()])
        all_row.add_class("kvmlab-all")
        self.phase_label = widgets.HTML()
        self.messages = widgets.HTML(layout=widgets.Layout(height=LOG_HEIGHT))
        self.messages.add_class("kvmlab-messages")
        self.absent = widgets.HTML()
        self.absent.add_class("kvmlab-absent")
        self.children = [self.phase_label, *rows, all_row, self.absent, self.messages]
        self._follow(self._render_rows, "phase", "exit", "program", "states", "pending", "irq_vector")
        self._follow(self._render_messages, "messages")
        self._link("absent", (self.absent, "value"), lambda text: f"<span class='kvmlab-tone-quiet'>{escape(text)}</span>" if text else "")
        self.refresh()
        self._attach()

    def refresh(self) -> None:
        """Renders everything from the session's traits now."""
        self._render_rows()
        self._render_messages()

    def _render_rows(self) -> None:
        session = self.session
        with session.lock:
            if session.phase == "closed":
                self.phase_label.value = "<div class='kvmlab-closed'>machine closed</div>"
            else:
                exit_ = session.exit
                exit_text = f" ({escape(exit_.reason)}, exit code {int(exit_)})" if exit_ is not None else ""
                self.phase_label.value = f"<span class='kvmlab-phase'>machine {escape(session.phase)}{exit_text}</span>"
            for status, label, buttons in zip(session.states, self.state_labels, self.vcpu_buttons):
                label.value = badge_html(state_badge(status))
                allowed = session.vcpu_actions(status.index)
                for action, b in buttons.items():
                    b.disabled = action not in allowed
            allowed = session.machine_actions()
            for action, b in self.all_buttons.items():
                b.disabled = action not in allowed or bool(session.pending.get(None))

    def _render_messages(self) -> None:
        recent = self.session.messages[-self._messages_shown :]
        self.messages.value = log_html([(m.level, str(m)) for m in recent])

    def state_text(self, index: int) -> str:
        """The state a row shows, as plain text (for tests and notebooks)."""
        return str(self.session.states[index])


def log_html(lines: list[tuple[str, str]]) -> str:
    """(level, text) lines, oldest first, as the fixed-height log. The box is a reversed
    flex column around one block of lines: a browser keeps such a box scrolled to its end,
    so the newest line shows at the bottom without any script scrolling it."""
    if not lines:
        return f"<div class='kvmlab-log'><div class='kvmlab-log-empty'>{escape(LOG_EMPTY)}</div></div>"
    rows = "".join(f"<div class='kvmlab-message kvmlab-{level} {tone_class(level)}'>{escape(text)}</div>" for level, text in lines)
    return f"<div class='kvmlab-log'><div>{rows}</div></div>"
