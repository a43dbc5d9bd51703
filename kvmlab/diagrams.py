"""Diagrams the notebooks draw, where a picture beats a paragraph: the vCPU state machine, the
path of one exit, and a 4-level page walk of a real address.

Each function returns a ``Diagram``: a matplotlib ``Figure`` (Agg, no pyplot state) that shows
itself as a PNG when a notebook cell ends with it (so the static site keeps it as an image),
and whose texts a test can read.
They are drawn from kvmlab's own definitions (the protocol's states and allowed events, the
page-walk shifts), so a diagram cannot disagree with the code it explains.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOX = dict(boxstyle="round,pad=0.04", linewidth=1.2)
COLOURS = {"state": "#dbe9f6", "kvm": "#fde2c8", "vmm": "#d9f0d3", "guest": "#eeeeee", "table": "#f3e6f5"}


@dataclass(frozen=True)
class Diagram:
    """A drawn figure that a notebook displays as an image."""

    figure: Figure

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()

    def texts(self) -> str:
        """Every text in the figure, its title included, one per line (for tests and readers)."""
        return "\n".join(text.get_text() for ax in self.figure.axes for text in [*ax.texts, ax.title])


def _box(ax, x: float, y: float, text: str, colour: str, width: float = 1.6, height: float = 0.5, size: int = 10) -> None:
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, facecolor=colour, edgecolor="#333", **BOX))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str = "", *, bend: float = 0.0,
           at: tuple[float, float] | None = None, size: int = 8) -> None:
    """An arrow between two points (box edges, not centres), its label at ``at`` or beside its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333", connectionstyle=f"arc3,rad={bend}"))
    if label:
        x, y = at or ((start[0] + end[0]) / 2 + 0.1, (start[1] + end[1]) / 2)
        ax.text(x, y, label, ha="left" if at is None else "center", va="center", fontsize=size, color="#222")


def _canvas(width: float, height: float, xlim: tuple[float, float], ylim: tuple[float, float]):
    figure = Figure(figsize=(width, height), dpi=100)
    ax = figure.add_subplot()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return figure, ax


def vcpu_state_machine() -> Diagram:
    """Firecracker's vCPU states and the events that move between them (``vstate.protocol``)."""
    from .vstate.protocol import ALLOWED_EVENTS, VcpuEvent, VcpuState

    figure, ax = _canvas(11, 4.2, (0, 13), (0, 4.4))
    where = {VcpuState.PAUSED: (2.3, 3.2), VcpuState.RUNNING: (7.7, 3.2), VcpuState.FINISHED: (2.3, 0.9), VcpuState.EXITED: (7.7, 0.9)}
    width, height = 4.2, 0.9
    for state, (x, y) in where.items():
        accepted = [e.value for e in VcpuEvent if e in ALLOWED_EVENTS[state]]
        allowed = "every event" if len(accepted) == len(VcpuEvent) else ", ".join(accepted) or "nothing"
        _box(ax, x, y, f"{state.value}\naccepts: {allowed}", COLOURS["state"], width=width, height=height, size=8)
    (px, py), (rx, ry) = where[VcpuState.PAUSED], where[VcpuState.RUNNING]
    (fx, fy), (ex, ey) = where[VcpuState.FINISHED], where[VcpuState.EXITED]
    _arrow(ax, (px + width / 2, py + 0.2), (rx - width / 2, ry + 0.2), "Resume", at=((px + rx) / 2, py + 0.42))
    _arrow(ax, (rx - width / 2, ry - 0.2), (px + width / 2, py - 0.2), "Pause (a kick)", at=((px + rx) / 2, py - 0.42))
    _arrow(ax, (rx, ry - height / 2), (ex, ey + height / 2), "HLT, shutdown,\ndebug exit, error")
    _arrow(ax, (ex - width / 2, ey), (fx + width / 2, fy), "Finish", at=((fx + ex) / 2, fy + 0.22))
    _arrow(ax, (px, py - height / 2), (fx, fy + height / 2), "Finish")
    ax.text(10.1, 3.2, "SaveState, DumpCpuConfig:\nanswered only while Paused,\nNotAllowed while Running", fontsize=8, va="center")
    ax.text(10.1, 0.9, "every event but Finish\nis answered Exited(code)", fontsize=8, va="center")
    ax.set_title("A vCPU thread's states (Firecracker's vstate/vcpu.rs): a thread starts Paused", fontsize=10)
    return Diagram(figure)


def exit_path() -> Diagram:
    """One exit, from the guest's instruction to the device's answer and back."""
    figure, ax = _canvas(10, 2.6, (0, 12), (0, 3))
    steps = [
        (1.2, "guest", "guest: out dx, al\n(port 0x3f8)", "guest"),
        (3.6, "kvm", "CPU leaves the guest\n(VM exit); KVM fills\nkvm_run: KVM_EXIT_IO", "kvm"),
        (6.0, "vmm", "KVM_RUN returns 0;\nthe vCPU thread reads\nexit_reason", "vmm"),
        (8.4, "vmm", "bus lookup: port 0x3f8\nis the UART; the device\nhandles the byte", "vmm"),
        (10.8, "kvm", "KVM_RUN again:\nthe guest goes on at\nthe next instruction", "kvm"),
    ]
    width = 2.0
    for x, _, text, colour in steps:
        _box(ax, x, 1.5, text, COLOURS[colour], width=width, height=1.1, size=8)
    for (x0, *_), (x1, *_) in zip(steps, steps[1:]):
        _arrow(ax, (x0 + width / 2, 1.5), (x1 - width / 2, 1.5))
    for x, text in ((1.2, "in the guest"), (3.6, "KVM, in the host kernel"), (7.2, "kvmlab, in user space (Python)"), (10.8, "KVM")):
        ax.text(x, 0.65, text, ha="center", fontsize=8, style="italic")
    ax.set_title("The path of one exit: everything between two exits runs in the guest, unseen", fontsize=10)
    return Diagram(figure)


#: (name, shift) of each level of 4-level paging (Intel SDM Vol. 3A, section 4.5)
LEVELS = (("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12))


def page_walk(memory, cr3: int, virtual: int) -> Diagram:
    """The walk of ``virtual`` through the tables in ``memory``: the index bits of each level
    and the entry read there, down to the physical address (4 KiB and 2 MiB pages)."""
    figure, ax = _canvas(10, 3.2, (0, 12), (0, 4))
    _box(ax, 1.4, 3.3, f"virtual\n{virtual:#x}", COLOURS["guest"], width=2.2, height=0.8, size=9)
    _box(ax, 1.4, 1.3, f"CR3\n{cr3:#x}", COLOURS["kvm"], width=2.2, height=0.8, size=9)
    table, x, physical = cr3 & 0x000F_FFFF_FFFF_F000, 1.4, None
    for level, shift in LEVELS:
        index = (virtual >> shift) & 0x1FF
        entry = memory.read_u64(table + 8 * index)
        huge = level == "PD" and entry & 0x80
        next_x = x + 2.3
        _box(ax, next_x, 1.3, f"{level}[{index}]\nat {table + 8 * index:#x}\n= {entry:#x}" + ("\nPS: 2 MiB page" if huge else ""),
             COLOURS["table"], width=1.9, height=1.3 if huge else 1.1, size=8)  # fmt: skip
        ax.text(next_x, 3.3, f"index: bits {shift + 8}:{shift}\n= {index}", ha="center", va="center", fontsize=8)
        _arrow(ax, (x + 0.95 if x > 1.4 else x + 1.1, 1.3), (next_x - 0.95, 1.3))
        x = next_x
        if huge:
            physical = (entry & 0x000F_FFFF_FFE0_0000) | (virtual & 0x1F_FFFF)
            break
        table = entry & 0x000F_FFFF_FFFF_F000
    if physical is None:
        physical = table | (virtual & 0xFFF)
    _box(ax, 11.0, 3.3, f"physical\n{physical:#x}", COLOURS["vmm"], width=1.8, height=0.8, size=9)
    _arrow(ax, (x + 0.95, 1.5), (11.0 - 0.9, 3.3), "+ offset")
    ax.set_title(f"4-level page walk of {virtual:#x}: one 8-byte entry per level, 9 index bits each", fontsize=10)
    return Diagram(figure)
