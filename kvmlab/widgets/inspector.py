"""``CpuInspector``: a paused vCPU's saved state and CPU configuration, decoded.

Registers with RIP and RFLAGS decoded, segment and control registers (CR0/CR4/EFER bits, the
CPU mode named), CPUID leaves and MSRs as tables, the instructions at RIP, and what changed
since the previous snapshot of the same vCPU. Tables are DataFrames rendered to HTML.

What it follows: the pages observe the session's ``snapshots`` and ``configs`` (and the
picker), the buttons ``phase``, ``states`` and ``pending``. Nothing in it changes
continuously, so it keeps no clock.
"""

from __future__ import annotations

import time

import ipywidgets as widgets

from ..lab import inspect
from .base import View, button, escape, frame_html

TABS = ("Registers", "Segments", "Code at RIP", "CPUID", "MSRs", "Diff")


class CpuInspector(View):
    css_class = "kvmlab-inspector"

    def __init__(self, machine):
        super().__init__(machine)
        self.machine = machine
        if machine.closed:
            self.children = [self._closed_notice("CPU inspector")]
            return
        self.vcpu_picker = widgets.Dropdown(options=[(f"vCPU {i}", i) for i in range(machine.vcpu_count)], value=0, description="show")
        self.save_button = button("Save state", "kvmlab-inspect-save", "Save the selected (paused) vCPU's state")
        self.dump_button = button("Dump CPU config", "kvmlab-inspect-dump", "Dump the selected (paused) vCPU's CPUID and MSRs")
        self.save_button.on_click(lambda _: self.session.request("save_state", self.vcpu_picker.value))
        self.dump_button.on_click(lambda _: self.session.request("dump_cpu_config", self.vcpu_picker.value))
        self.summary = widgets.HTML()
        self.summary.add_class("kvmlab-inspector-summary")
        self.pages = {name: widgets.HTML() for name in TABS}
        for name, page in self.pages.items():
            page.add_class(f"kvmlab-inspector-{name.lower().replace(' ', '-')}")
        self.tabs = widgets.Tab(children=list(self.pages.values()), titles=list(TABS))
        self.children = [widgets.HBox([self.vcpu_picker, self.save_button, self.dump_button]), self.summary, self.tabs]
        self._shown: tuple = ()
        self._follow(self._render_buttons, "phase", "states", "pending")
        self._follow(self._render_pages, "snapshots", "configs", "finals")
        self._picked = False  # the user chose a vCPU: stay on it
        self._moving = False  # the inspector is moving the picker itself
        self._follow_saves()
        self.vcpu_picker.observe(self._picker_moved, names="value")  # the kernel's thread, on a user's choice
        self.refresh()
        self._attach()

    def show(self, item) -> None:
        """Shows a ``VcpuSnapshot`` or ``CpuConfiguration`` taken elsewhere (``m.save_state(i)``)."""
        (self.session.add_config if hasattr(item, "cpuid") else self.session.add_snapshot)(item)
        self._show_vcpu(item.vcpu)

    def _follow_saves(self) -> None:
        """Moves the picker to the vCPU whose state (or CPU config) was just saved, by any
        button, unless the user picked a vCPU: pressing Save state on vCPU 1 in the control
        panel must not leave the inspector showing vCPU 0's old state."""

        def saved(change) -> None:
            vcpu = inspect.newly_saved(change["old"], change["new"])
            if vcpu is not None and not self._picked:
                self._show_vcpu(vcpu)

        names = ("snapshots", "configs")
        self.session.observe(saved, names=list(names))
        self._followed.append((saved, names))

    def _show_vcpu(self, vcpu: int) -> None:
        self._moving = True
        try:
            self.vcpu_picker.value = vcpu
        finally:
            self._moving = False

    def _picker_moved(self, _change) -> None:
        self._picked = self._picked or not self._moving
        self.refresh()

    def refresh(self) -> None:
        """Renders the buttons and pages from the session's traits now."""
        self._render_buttons()
        self._render_pages()

    def _render_buttons(self) -> None:
        allowed = self.session.vcpu_actions(self.vcpu_picker.value)
        self.save_button.disabled = "save_state" not in allowed
        self.dump_button.disabled = "dump_cpu_config" not in allowed

    def _render_pages(self) -> None:
        session = self.session
        with session.lock:
            vcpu = self.vcpu_picker.value
            snapshots, configs = session.snapshots.get(vcpu, ()), session.configs.get(vcpu, ())
            final = inspect.final_to_show(session.finals.get(vcpu), snapshots)
            key = (vcpu, id(snapshots[-1]) if snapshots else None, id(configs[-1]) if configs else None, id(final))  # kept: ids stay unique
            if key == self._shown:  # another vCPU's history changed
                return
            self._shown = key
            if final is not None:
                self._render_final(final, snapshots[-1] if snapshots else None)
            elif snapshots:
                self._render_state(snapshots[-1], snapshots[-2] if len(snapshots) > 1 else None)
            else:
                self.summary.value = f"<i>no saved state of vCPU {vcpu} yet: pause it and press <b>Save state</b></i>"
                for name in ("Registers", "Segments", "Code at RIP", "Diff"):
                    self.pages[name].value = ""
            if configs:
                config = configs[-1]
                self.pages["CPUID"].value = f"<div>vendor {escape(config.vendor())}, {len(config.cpuid)} leaves</div>" + frame_html(inspect.cpuid_table(config))
                unreadable = f"<div><i>not readable here: {', '.join(hex(i) for i in config.unreadable_msrs)}</i></div>" if config.unreadable_msrs else ""
                self.pages["MSRs"].value = frame_html(inspect.msr_table(config.msrs)) + unreadable
            else:
                message = f"<i>no CPU config of vCPU {vcpu} yet: pause it and press <b>Dump CPU config</b></i>"
                self.pages["CPUID"].value = self.pages["MSRs"].value = message

    def _render_final(self, final, previous) -> None:
        """A vCPU that stopped for good: its final state (``inspect.final_view``), and
        under the code, the exits that led there."""
        view = inspect.final_view(final, self._program_range())
        if view.state is not None:
            self._render_state(view.state, previous, view.code)
        else:
            for name in ("Registers", "Segments", "Code at RIP", "Diff"):
                self.pages[name].value = ""
        self.summary.value = f"<div class='kvmlab-final'>{escape(view.summary)}</div>" + self.summary.value
        exits = inspect.last_exits(final)
        self.pages["Code at RIP"].value += f"<div class='kvmlab-last-exits'><b>last exits</b>{frame_html(exits)}</div>"

    def _program_range(self):
        """Where the loaded program lies (code at RIP stops at its end), or None."""
        program = self.machine.program
        return program.range if program is not None else None

    def _render_state(self, state, previous, code=None) -> None:
        mode = inspect.cpu_mode(state.sregs, state.regs["rflags"])
        rip = state.regs["rip"]
        saved = time.strftime("%H:%M:%S", time.localtime(state.taken_at))
        self.summary.value = (
            f"<div class='kvmlab-mode'>vCPU {state.vcpu}: <b>{escape(mode)}</b>, RIP {rip:#x}, "
            f"RFLAGS {escape(inspect.decode_rflags(state.regs['rflags']))}, MP state {inspect.mp_state_name(state.mp_state)}, "
            f"saved {saved}</div>"
        )
        self.pages["Registers"].value = (
            "<div class='kvmlab-side-by-side'>"
            + frame_html(inspect.general_registers(state), scroll=False)
            + frame_html(inspect.control_registers(state), scroll=False)
            + "</div>"
        )
        self.pages["Segments"].value = frame_html(inspect.segments(state))
        code = code if code is not None else inspect.code_at_rip(state, self.machine.memory, program=self._program_range())
        self.pages["Code at RIP"].value = f"<pre class='kvmlab-code'>{escape(code.text())}</pre>"
        if previous is None:
            self.pages["Diff"].value = "<i>one snapshot so far: save the state again to see what changed</i>"
        else:
            changes = inspect.diff(previous, state)
            self.pages["Diff"].value = f"<div>{len(changes)} fields changed since the previous snapshot</div>" + frame_html(changes)

