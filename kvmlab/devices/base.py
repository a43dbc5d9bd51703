"""``Device``: a convenient base for bus devices (the bus itself only needs ``read``/``write``)."""

from __future__ import annotations


class Device:
    """A bus device with a name, a window size and named registers.

    Subclasses override ``read(offset, size) -> int`` and ``write(offset, size, value)``.
    ``registers`` maps offsets to names so metrics and traces can say *which register* a
    guest hammers, not just which address. Both methods run on the vCPU thread that took the
    exit; several vCPUs can call them at once, so keep shared state consistent (one attribute
    store is atomic under the GIL; use a lock for anything longer).
    """

    name: str = "device"
    #: bytes (MMIO) or ports (PIO) the device decodes
    size: int = 1
    registers: dict[int, str] = {}

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
