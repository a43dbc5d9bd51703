"""MMIO and port-I/O buses: address ranges mapped to devices, as Firecracker's ``Bus``.

A device is anything with ``read(offset, size) -> int`` and ``write(offset, size, value)``
(``BusDevice``): values are little-endian integers of ``size`` bytes and ``offset`` is relative
to the device's base, so a device does not care where it is mapped. Inserting a device over
RAM, a reserved range or another device raises ``DeviceOverlapError`` naming both.

The exit hot path looks devices up through ``lookup``, a dict from exact address to the
resolved entry; the bisect over sorted bases only runs on the first access to an address.
"""

from __future__ import annotations

import bisect
from typing import Protocol, runtime_checkable

from ..errors import ConfigError, DeviceOverlapError, GuestRequestedExit  # noqa: F401  (re-exported)
from .layout import Range


#: All ones in 0 to 8 bytes: the mask of an access of that size, and what a read returns that
#: no device drives (on a PC the undriven data lines float high: "open bus").
ALL_ONES = tuple((1 << (8 * n)) - 1 for n in range(9))


@runtime_checkable
class BusDevice(Protocol):
    """What the buses call. Both run on the vCPU thread that took the exit."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusEntry:
    """A device mapped at [base, base + length)."""

    __slots__ = ("device", "base", "length", "name", "read", "write")

    def __init__(self, device: BusDevice, base: int, length: int, name: str):
        self.device = device
        self.base = base
        self.length = length
        self.name = name
        self.read = device.read
        self.write = device.write

    @property
    def range(self) -> Range:
        return Range(self.base, self.base + self.length)

    def register_name(self, offset: int) -> str:
        """The device's name for the register at ``offset`` (``Device.registers``), else hex."""
        names = getattr(self.device, "registers", None) or {}
        return names.get(offset, f"{offset:#x}")

    def __repr__(self) -> str:
        return f"BusEntry({self.name!r} at {self.range})"


#: Cache at most this many distinct addresses; a guest sweeping a big window falls back to bisect.
_LOOKUP_CACHE_LIMIT = 65536


class Bus:
    """An address space (``mmio`` or ``pio``) of non-overlapping device ranges."""

    def __init__(self, kind: str, limit: int, forbidden: tuple[tuple[Range, str], ...] = ()):
        self.kind = kind
        self.limit = limit
        self._forbidden = forbidden
        self._bases: list[int] = []
        self._entries: list[BusEntry] = []
        #: address -> BusEntry for every address already resolved (the hot path's dict).
        self.lookup: dict[int, BusEntry] = {}

    @property
    def entries(self) -> list[BusEntry]:
        return list(self._entries)

    def check_free(self, rng: Range, what: str) -> None:
        """Refuses, naming it, a device mapped where ``what`` must go."""
        for entry in self._entries:
            if entry.range.overlaps(rng):
                raise DeviceOverlapError(f"{entry.name!r} at {entry.range} lies where {what} must be ({rng}); map it elsewhere")

    def forbid(self, rng: Range, what: str) -> None:
        """Reserves ``rng`` for ``what`` (say, KVM's in-kernel IOAPIC): no device may be mapped
        there from now on, and a device already there is refused now."""
        self.check_free(rng, what)
        self._forbidden = (*self._forbidden, (rng, what))

    def insert(self, device: BusDevice, base: int, length: int, name: str | None = None) -> BusEntry:
        if not isinstance(device, BusDevice):
            raise ConfigError(f"{device!r} is not a bus device: it needs read(offset, size) and write(offset, size, value) methods")
        name = name or getattr(device, "name", None) or type(device).__name__
        if not isinstance(base, int) or not isinstance(length, int) or base < 0 or length <= 0:
            raise ConfigError(f"{self.kind} window for {name!r}: base {base!r} and length {length!r} must be integers, base >= 0, length > 0")
        new = Range(base, base + length)
        if new.end > self.limit:
            raise ConfigError(f"{self.kind} window {new} for {name!r} goes past the end of the {self.kind} space ({self.limit:#x})")
        for rng, what in self._forbidden:
            if rng.overlaps(new):
                raise DeviceOverlapError(
                    f"{self.kind} window {new} for {name!r} overlaps {what} {rng}; "
                    "map devices outside RAM (e.g. in the legacy hole [0xa0000, 0x100000))"
                )
        for entry in self._entries:
            if entry.range.overlaps(new):
                raise DeviceOverlapError(
                    f"{self.kind} window {new} for {name!r} overlaps {entry.name!r} at {entry.range}; "
                    "pick a base outside every existing device window"
                )
        entry = BusEntry(device, base, length, name)
        index = bisect.bisect(self._bases, base)
        self._bases.insert(index, base)
        self._entries.insert(index, entry)
        self.lookup.clear()
        return entry

    def remove(self, device: BusDevice) -> None:
        for i, entry in enumerate(self._entries):
            if entry.device is device:
                del self._bases[i], self._entries[i]
                self.lookup.clear()
                return
        raise ConfigError(f"{device!r} is not on the {self.kind} bus")

    def resolve(self, address: int) -> BusEntry | None:
        """The entry covering ``address`` (slow path; fills ``lookup``)."""
        index = bisect.bisect(self._bases, address) - 1
        if index < 0:
            return None
        entry = self._entries[index]
        if address >= entry.base + entry.length:
            return None
        if len(self.lookup) < _LOOKUP_CACHE_LIMIT:
            self.lookup[address] = entry
        return entry

    def read(self, address: int, size: int) -> int:
        """Convenience for notebooks and tests; exit handling inlines this."""
        entry = self.lookup.get(address) or self.resolve(address)
        if entry is None:
            raise ConfigError(f"no device at {self.kind} address {address:#x}")
        return entry.read(address - entry.base, size)

    def write(self, address: int, size: int, value: int) -> None:
        entry = self.lookup.get(address) or self.resolve(address)
        if entry is None:
            raise ConfigError(f"no device at {self.kind} address {address:#x}")
        entry.write(address - entry.base, size, value)
