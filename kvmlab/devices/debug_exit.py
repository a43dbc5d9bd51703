"""The debug-exit port: a guest write ends the machine with the value as its exit code.

Like QEMU's ``isa-debug-exit`` (port 0xf4, 4 bytes wide), which test kernels use to report
success or failure. A write raises ``GuestRequestedExit``; exit handling turns it into a
machine-wide stop, whatever the other vCPUs are doing. QEMU makes the process exit status
``(code << 1) | 1``; ``kvmlab boot`` does the same, while ``Machine.wait()`` returns ``code``.
"""

from __future__ import annotations

from ..vstate.bus import GuestRequestedExit
from .base import Device

DEBUG_EXIT_PORT = 0xF4


class DebugExit(Device):
    name = "debug-exit"
    size = 4
    registers = {0: "EXIT"}

    def __init__(self, name: str = "debug-exit"):
        self.name = name
        self.last_code: int | None = None

    def write(self, offset: int, size: int, value: int) -> None:
        self.last_code = value
        raise GuestRequestedExit(value, f"debug-exit port write ({value})")
