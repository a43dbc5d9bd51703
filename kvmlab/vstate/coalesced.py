"""Coalesced MMIO (and PIO): guest writes queued in a ring instead of exiting, delivered in order later.

Port zones (``KVM_CAP_COALESCED_PIO``) share the ring: their entries carry ``pio = 1`` and go
to the port bus; everything below holds for them too.

KVM (api.rst 4.66/4.67, ``KVM_CAP_COALESCED_MMIO``) appends a write to a registered zone to
one VM-wide ring, mapped in every vCPU's mmap at the page ``KVM_CAP_COALESCED_MMIO`` names,
and lets the guest go on; a read there still exits. The emulated engine keeps a ring of its
own in the same layout. Either way this module reads it: ``first`` is the VMM's, ``last`` the
writer's; an entry is read, then ``first`` advances (x86 keeps loads in order and so do the
writer's stores, KVM's ``smp_wmb`` between entry and ``last``: nothing more is needed from
Python, as QEMU's ``kvm_flush_coalesced_mmio_buffer`` needs only a compiler barrier there).

One ring, several vCPU threads: ``drain`` runs under the ring's lock (QEMU's
``kvm_flush_coalesced_mmio_buffer`` under a lock too), so each write reaches its device
exactly once and in ring order. It runs before any exit is handled (``handle_kvm_exit``: a
read that exits sees every earlier write), before a Pause is answered, before a metrics
sample, when a zone goes, and at the stop and close.

Which vCPU wrote is not in the ring. The per-vCPU counts (``coalesced_mmio_write``,
``coalesced_drains``) are of the drains that vCPU's thread made; a drain made outside any
vCPU thread (a sample, the stop, a zone removed) counts on vCPU 0. The per-zone counts
(``zones()``) are exact whoever drained. All of these counters change only under the lock.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING

from ..errors import ConfigError, MachineStateError
from ..kvm import structs as ks
from ..kvm.constants import KVM_COALESCED_MMIO_MAX
from ..metrics import trace as kinds
from .bus import ALL_ONES, GuestRequestedExit

if TYPE_CHECKING:
    from .exits import Peripherals
    from .vm import Vm

RING_ENTRIES = KVM_COALESCED_MMIO_MAX
# The layout comes from the ctypes structs (checked against <linux/kvm.h> by the ABI test):
# the header (first, last), then RING_ENTRIES entries (phys_addr, len, pio, data[8]).
_HEADER = ctypes.sizeof(ks.kvm_coalesced_mmio_ring)
_ENTRY = ctypes.sizeof(ks.kvm_coalesced_mmio)
RING_BYTES = _HEADER + _ENTRY * RING_ENTRIES
FIRST_U32 = ks.kvm_coalesced_mmio_ring.first.offset // 4
LAST_U32 = ks.kvm_coalesced_mmio_ring.last.offset // 4
# entry i's fields as indices of the u32 / u64 views: base + stride * i
_ADDR_U64 = (_HEADER + ks.kvm_coalesced_mmio.phys_addr.offset) // 8
_LEN_U32 = (_HEADER + ks.kvm_coalesced_mmio.len.offset) // 4
_PIO_U32 = (_HEADER + ks.kvm_coalesced_mmio.pio.offset) // 4
_DATA_U64 = (_HEADER + ks.kvm_coalesced_mmio.data.offset) // 8
_STRIDE_U64, _STRIDE_U32 = _ENTRY // 8, _ENTRY // 4


@dataclass(eq=False)  # one zone is one object: hashed by identity
class Zone:
    """One registered zone and what went through it."""

    address: int
    size: int
    device: str
    register: str
    #: a port range (``KVM_CAP_COALESCED_PIO``: OUT instructions) rather than MMIO
    pio: bool = False
    #: writes delivered from the ring to the device
    writes: int = 0
    #: drains that delivered at least one of its writes
    drains: int = 0
    open: bool = True

    @property
    def end(self) -> int:
        return self.address + self.size


class Ring:
    """A coalesced MMIO ring over one page (KVM's mapping or the emulated engine's bytes)."""

    def __init__(self, page: memoryview):
        # RING_BYTES (4088) is a multiple of 8: both casts cover header and entries exactly
        self.page = page[:RING_BYTES]
        self.u32 = self.page.cast("I")
        self.u64 = self.page.cast("Q")

    def release(self) -> None:
        self.u32.release()
        self.u64.release()
        self.page.release()

    def push(self, address: int, size: int, value: int, pio: int = 0) -> bool:
        """Appends a write as KVM does (the emulated engine's side); False when the ring is full
        (the write must then exit instead, as KVM's ``coalesced_mmio_write`` refuses it)."""
        u32 = self.u32
        last = u32[LAST_U32]
        following = (last + 1) % RING_ENTRIES
        if following == u32[FIRST_U32]:
            return False
        u64 = self.u64
        u64[_ADDR_U64 + _STRIDE_U64 * last] = address
        u32[_LEN_U32 + _STRIDE_U32 * last] = size
        u32[_PIO_U32 + _STRIDE_U32 * last] = pio
        u64[_DATA_U64 + _STRIDE_U64 * last] = value
        u32[LAST_U32] = following  # after the entry, as KVM publishes it
        return True


class CoalescedMmio:
    """The VM's zones and its ring; ``drain`` delivers what the ring holds."""

    def __init__(self, vm: "Vm"):
        self.vm = vm
        self.lock = threading.Lock()
        self.ring: Ring | None = None
        self.zones: list[Zone] = []
        #: every zone ever registered, for the per-zone table (a removed one keeps its counts)
        self.history: list[Zone] = []
        self._by_page: dict[int, list[Zone]] = {}
        #: who a drain outside any vCPU thread counts on (vCPU 0's exit handling)
        self.default: "Peripherals | None" = None

    # --- zones ---------------------------------------------------------------------------------

    def register(self, address: int, size: int, *, register: str = "", pio: bool = False) -> Zone:
        """Checks and registers a zone (``pio``: of ports); returns it. Raises ``ConfigError``
        with the reason."""
        vm = self.vm
        caps = vm.backend.capabilities
        what = "coalesce_pio" if pio else "coalesce_mmio"
        if pio and not caps.coalesced_pio:
            raise caps.refuse(f"{what}()", "coalesced port I/O (KVM_CAP_COALESCED_PIO)")
        if not caps.coalesced_mmio:
            raise caps.refuse(f"{what}()", "coalesced MMIO (KVM_REGISTER_COALESCED_MMIO)", "use engine='kvm'")
        if not vm.vcpus:
            raise MachineStateError(f"{what}(): load a program first (the ring lives in the vCPUs' kvm_run mappings)")
        if not isinstance(address, int) or not isinstance(size, int) or isinstance(size, bool):
            raise ConfigError(f"{what}({address!r}, {size!r}): need an integer address and size")
        if size <= 0:
            raise ConfigError(f"{what}({address:#x}, {size}): a zone needs at least one byte")
        bus = vm.pio_bus if pio else vm.mmio_bus
        if address < 0 or address + size > bus.limit:
            space = "the 64 Ki ports" if pio else "the guest's physical address space"
            raise ConfigError(f"{what}({address:#x}, {size}): outside {space}")
        end = address + size
        if not pio:
            for rng in vm.memory.ranges:
                if address < rng.end and rng.start < end:
                    raise ConfigError(f"{what}({address:#x}, {size}): overlaps RAM at {rng.start:#x}-{rng.end:#x}; only MMIO exits can be coalesced")
        for zone in self.zones:
            if zone.pio == pio and address < zone.end and zone.address < end:
                raise ConfigError(f"{what}({address:#x}, {size}): overlaps the zone {zone.address:#x}-{zone.end:#x} ({zone.register or zone.device})")
        entry = bus.resolve(address)
        if entry is None or end > entry.base + entry.length:
            raise ConfigError(f"{what}({address:#x}, {size}): not inside one device's window (no device would see the writes)")
        refusal = getattr(entry.device, "coalesce_refusal", None)
        reason = refusal(address - entry.base, size) if refusal is not None else f"{entry.name} declares no registers that may be coalesced"
        if reason:
            raise ConfigError(f"{what}({address:#x}, {size}) on the {entry.name}: refused, {reason}")
        zone = Zone(address, size, entry.name, register or entry.register_name(address - entry.base), pio=pio)
        with self.lock:
            if self.ring is None:
                self.ring = Ring(vm.backend.coalesced_ring())
                self.default = vm.vcpus[0].peripherals
            # Every vCPU drains from now on, set before the zone exists: no exit can be
            # handled without a drain once a write may wait (an attribute store is atomic).
            for vcpu in vm.vcpus:
                vcpu.peripherals.coalesced = self
            vm.backend.register_coalesced_mmio(address, size, pio)
            self.zones.append(zone)
            self.history.append(zone)
            self._index()
        return zone

    def unregister(self, zone: Zone) -> None:
        """Removes ``zone``, then drains: its writes already queued still reach the device."""
        with self.lock:
            if not zone.open:
                return
            self.vm.backend.unregister_coalesced_mmio(zone.address, zone.size, zone.pio)
            zone.open = False
            self.zones.remove(zone)
            self._index()
        self.drain()

    def _index(self) -> None:
        by_page: dict[tuple[bool, int], list[Zone]] = {}
        for zone in self.zones:
            for page in range(zone.address >> 12, ((zone.end - 1) >> 12) + 1):
                by_page.setdefault((zone.pio, page), []).append(zone)
        self._by_page = by_page

    def zone_at(self, address: int, pio: bool = False) -> Zone | None:
        for zone in self._by_page.get((pio, address >> 12), ()):
            if zone.address <= address < zone.end:
                return zone
        return None

    def rows(self) -> list[tuple]:
        return [("pio" if z.pio else "mmio", z.device, z.register, z.address, z.size, z.open, z.writes, z.drains) for z in self.history]

    # --- draining --------------------------------------------------------------------------------

    def drain(self, p: "Peripherals | None" = None) -> int:
        """Delivers every queued write, oldest first, to its device; returns how many. ``p``
        is the draining vCPU's exit handling (its counters and trace); None outside a vCPU."""
        ring = self.ring
        if ring is None:
            return 0
        u32 = ring.u32
        if u32[FIRST_U32] == u32[LAST_U32]:
            return 0
        with self.lock:
            p = p if p is not None else self.default
            m = p.metrics
            buses = (self.vm.mmio_bus, self.vm.pio_bus)
            u64 = ring.u64
            trace = p.trace
            first = u32[FIRST_U32]
            delivered = ports = 0
            touched: set[Zone] = set()
            while first != u32[LAST_U32]:
                address = u64[_ADDR_U64 + _STRIDE_U64 * first]
                size = u32[_LEN_U32 + _STRIDE_U32 * first]
                value = u64[_DATA_U64 + _STRIDE_U64 * first] & ALL_ONES[size if size <= 8 else 8]
                pio = u32[_PIO_U32 + _STRIDE_U32 * first] != 0
                # ``first`` moves on only once the device has the write (below): until then the
                # ring is not empty to a thread that looks without the lock (the quick test at
                # the top), so a vCPU whose exit reads this register waits here for the write.
                first = (first + 1) % RING_ENTRIES
                delivered += 1
                ports += pio
                bus = buses[pio]
                zone = self.zone_at(address, pio) or self._closed_zone_at(address, pio)
                if zone is not None:
                    zone.writes += 1
                    touched.add(zone)
                entry = bus.lookup.get(address) or bus.resolve(address)
                start = perf_counter_ns() if trace is not None else 0
                if entry is not None:
                    try:
                        entry.write(address - entry.base, size, value)
                    except GuestRequestedExit:
                        pass  # a device that ends the machine on a write cannot be coalesced: none declares one
                    except Exception as exc:
                        from .exits import _device_failed  # exits imports nothing from here

                        _device_failed(p, entry, "coalesced port write" if pio else "coalesced MMIO write", address, size, value, exc)
                u32[FIRST_U32] = first  # consumed and delivered: KVM may reuse the slot
                if trace is not None:
                    kind = kinds.COALESCED_IO_OUT if pio else kinds.COALESCED_MMIO_WRITE
                    trace(kind, address, size, value, start, perf_counter_ns() - start)
            m.coalesced_mmio_write += delivered - ports
            m.coalesced_pio_write += ports
            m.coalesced_drains += 1
            for zone in touched:
                zone.drains += 1
        return delivered

    def close(self) -> None:
        """At the machine's close, after the stop's drain: a last drain (nothing may be lost),
        then the ring's views go, so the vCPUs' mappings can be unmapped."""
        self.drain()
        with self.lock:
            ring, self.ring = self.ring, None
            self.zones = []
            self._index()
            for vcpu in self.vm.vcpus:
                vcpu.peripherals.coalesced = None
            if ring is not None:
                ring.release()
            self.default = None

    def _closed_zone_at(self, address: int, pio: bool) -> Zone | None:
        for zone in reversed(self.history):
            if zone.pio == pio and zone.address <= address < zone.end:
                return zone
        return None
