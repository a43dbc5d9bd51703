"""How a vCPU's state reads at a glance: a symbol, the state's words and a tone.

Colour alone fails one reader in twelve (red against green is the common confusion), so every
state carries a shape too: ▶ running, ❚❚ paused, ■ finished or exited cleanly, ✖ exited
with an error. (Not ⏸: few fonts have it, and a browser without one draws an empty box.) The tone names what the colour means ("ok", "warn", "error", "quiet"); the views
turn it into their theme's colour, so the same state reads the same in light and dark.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..vstate.protocol import VcpuState, VcpuStatus

TONES = ("ok", "warn", "error", "quiet")


@dataclass(frozen=True)
class Badge:
    symbol: str
    text: str
    tone: str  # one of TONES

    def __str__(self) -> str:
        return f"{self.symbol} {self.text}"


def failed(status: VcpuStatus) -> bool:
    """An exited vCPU whose exit code is not 0 (a debug-exit code, a crash, a triple fault):
    the run went wrong, not merely ended."""
    return status.state in (VcpuState.EXITED, VcpuState.FINISHED) and status.exit_code not in (None, 0)


def state_badge(status: VcpuStatus) -> Badge:
    """``▶ Running``, ``❚❚ Paused``, ``■ Exited(0: HLT)``, ``✖ Exited(3: ...) with an error``."""
    text = str(status)
    if status.state is VcpuState.RUNNING:
        return Badge("▶", text, "ok")
    if status.state is VcpuState.PAUSED:
        return Badge("❚❚", text, "warn")
    if failed(status):
        return Badge("✖", f"{text}, an error", "error")
    if status.state in (VcpuState.EXITED, VcpuState.FINISHED):
        return Badge("■", text, "quiet")
    return Badge("○", text, "quiet")  # created: not started yet
