"""Doorbells (issue 14, part 2): a guest write to an MMIO address or a port that signals an
eventfd instead of exiting (``KVM_IOEVENTFD``, Documentation/virt/kvm/api.rst 4.59), served by
one I/O thread per machine that calls the device's Python handler.

What the guest sees: the write completes at once and the vCPU goes on; KVM (or the emulated
engine, in its MMIO and port callbacks) only adds 1 to the doorbell's eventfd. So the device
learns *that* the guest rang, and how often, never *what* it wrote (use ``datamatch`` to tell
values apart) nor which vCPU wrote (the eventfd does not say: the counts are the machine's).

The rules, checked here once for both engines:

* ``size`` is the write's width, 1, 2, 4 or 8 bytes (a port: 1, 2 or 4, what OUT writes); a
  write of another width to the address is an ordinary exit. (KVM's "any length", ``len`` 0,
  is not offered.)
* ``datamatch``: only a write of that value rings; any other write to the address is an
  ordinary exit to whatever device is there, or to the open bus (``absent_*`` counted, all ones
  for reads) where none is. A datamatch wider than ``size`` bytes could never match: refused.
* An address with no device is allowed: the doorbell is then the device (KVM does the same).
  RAM is refused: a guest's store to RAM never leaves it, so the doorbell would never ring.
* Two doorbells collide where KVM's ``ioeventfd_check_collision`` says they do: the same bus
  and address, and either without a datamatch or both with the same one. Doorbells on the same
  address with different datamatch values are allowed (virtio's notify register, one value
  per queue); a doorbell whose bytes overlap another's at a different address is refused, since
  a write matches only its exact start address and the overlap would only confuse.
* Registering (and closing a doorbell) while the vCPUs run is allowed: KVM's io bus changes
  under SRCU, the emulated engine's table is swapped whole. Once the machine has stopped,
  registering is refused.

What the handler gets: ``handler(count)``, on the I/O thread, where ``count`` is what one read
of the eventfd returned, the number of writes since the last read (an eventfd sums its
writes): N guest writes between two wake-ups are one call with N. The metrics count both,
``signals`` (writes) and ``wakeups`` (calls). A handler that raises is a device error
(``Machine.device_errors``, vCPU None) counted in ``errors``, and the thread goes on. With no
handler the doorbell only counts.

Teardown: at stop the I/O thread is woken and joined, then every eventfd is read once more on
the stopping thread and what is left is served (so no write is ever lost silently); at close
every doorbell is deassigned (``KVM_IOEVENTFD_FLAG_DEASSIGN``) and its eventfd closed before
the VM goes. A doorbell closed by the user while the machine runs is deassigned and drained
at once; its eventfd is closed with the machine (an emulated vCPU may still hold its number
for one more write, which the drain at stop still serves).
"""

from __future__ import annotations

import logging
import selectors
import threading
import traceback
from typing import TYPE_CHECKING, Callable

from ..checks import is_whole_number
from ..errors import ConfigError, MachineStateError
from ..kvm.eventfd import EventFd
from ..metrics.lines import DoorbellCounters, LineMetrics
from .exits import DeviceFailure

if TYPE_CHECKING:
    from ..engines.base import VmBackend

log = logging.getLogger("kvmlab.doorbells")

BUSES = ("mmio", "pio")
SIZES = {"mmio": (1, 2, 4, 8), "pio": (1, 2, 4)}
SPACE = {"mmio": 1 << 52, "pio": 0x10000}
#: how long stop waits for the I/O thread (it wakes at once; this is a bound)
IO_THREAD_JOIN_S = 2.0


class Doorbell:
    """One registered doorbell. ``counters`` has what it served; ``close()`` deassigns it."""

    def __init__(self, owner: "Doorbells", bus: str, address: int, size: int, datamatch: int | None,
                 handler: Callable[[int], object] | None, counters: DoorbellCounters):  # fmt: skip
        self.bus, self.address, self.size, self.datamatch = bus, address, size, datamatch
        self.handler = handler
        self.counters = counters
        self._owner = owner
        self._serving = threading.Lock()  # one drain at a time: the I/O thread, or the closer
        self._server: int | None = None  # the thread serving now (its handler runs)
        self.assigned = False
        self._event = EventFd(f"ioeventfd of {self.where}")

    @property
    def where(self) -> str:
        place = f"port {self.address:#x}" if self.bus == "pio" else f"MMIO {self.address:#x}"
        match = "" if self.datamatch is None else f" = {self.datamatch:#x}"
        return f"{place}/{self.size}{match}"

    def fileno(self) -> int:
        return self._event.fd

    def close(self) -> None:
        """Deassigns the doorbell (those writes exit again) and serves what is left."""
        self._owner.release(self)

    def _drain(self, timeout: float = -1) -> None:
        """Reads the eventfd and serves what it held: one handler call with the count.

        Never on the thread whose handler is running (a handler that closes its own doorbell
        or stops the machine: what is left is served after it returns, or at close), and with
        ``timeout`` never waiting longer than that for a handler that blocks elsewhere."""
        if self._server == threading.get_ident():
            return
        if not self._serving.acquire(timeout=timeout):
            log.error("doorbell %s: its handler still runs after %.1f s; not served again now", self.where, timeout)
            return
        try:
            self._server = threading.get_ident()
            self._serve()
        finally:
            self._server = None
            self._serving.release()

    def _serve(self) -> None:
        """``_drain``'s work, with the serving lock held."""
        if self._event.closed:
            return
        count = self._event.read()
        if not count:
            return
        c = self.counters
        c.signals += count
        c.wakeups += 1
        if self.handler is None:
            return
        try:
            self.handler(count)
        except Exception as exc:
            c.errors += 1
            self._owner.failed(self, count, exc)

    def __repr__(self) -> str:
        state = "assigned" if self.assigned else "deassigned"
        return f"<Doorbell {self.where}, {state}, {self.counters.signals} signals>"


class Doorbells:
    """A machine's doorbells, the I/O thread that serves them, and their teardown."""

    def __init__(self, backend: "VmBackend", ram: Callable[[], list], metrics: LineMetrics,
                 on_error: Callable[[DeviceFailure], None] | None = None):  # fmt: skip
        self._backend = backend
        self._ram = ram  # the RAM ranges (with .start, .end), read at each registration
        self.metrics = metrics
        self._on_error = on_error
        self._lock = threading.Lock()
        self._bells: list[Doorbell] = []  # assigned ones
        self._released: list[Doorbell] = []  # deassigned, fds closed at close()
        self._refusal: str | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake: EventFd | None = None
        self._version = 0

    @property
    def doorbells(self) -> list[Doorbell]:
        return list(self._bells)

    # --- registering -----------------------------------------------------------------------------

    def register(self, address: int, size: int = 4, datamatch: int | None = None,
                 handler: Callable[[int], object] | None = None, bus: str = "mmio") -> Doorbell:  # fmt: skip
        what = f"ioeventfd({address!r}, size={size!r}"
        what += (f", datamatch={datamatch!r}" if datamatch is not None else "") + (f", bus={bus!r})" if bus != "mmio" else ")")
        if self._refusal is not None:
            raise MachineStateError(f"{what}: {self._refusal}")
        caps = self._backend.capabilities
        if not caps.ioeventfd:
            raise caps.refuse(what, "ioeventfd (KVM_IOEVENTFD)", "use engine='kvm'")
        if bus not in BUSES:
            raise ConfigError(f"{what}: bus={bus!r}: 'mmio' (a guest-physical address) or 'pio' (a port)")
        if size not in SIZES[bus] or size is True:
            sizes = ", ".join(map(str, SIZES[bus]))
            raise ConfigError(f"{what}: size={size!r}: a {bus.upper()} doorbell matches writes of {sizes} bytes")
        if not is_whole_number(address) or not 0 <= address <= SPACE[bus] - size:
            space = "a port 0 to 0xffff" if bus == "pio" else "a guest-physical address below 2**52"
            raise ConfigError(f"{what}: address={address!r}: {space}, room for {size} bytes")
        if datamatch is not None and (not is_whole_number(datamatch) or not 0 <= datamatch < 1 << (8 * size)):
            raise ConfigError(
                f"{what}: datamatch={datamatch!r} does not fit in a {size}-byte write (0 to {(1 << (8 * size)) - 1:#x}), "
                "so no write could ever match it"
            )
        if handler is not None and not callable(handler):
            raise ConfigError(f"{what}: handler={handler!r} is not callable; give a function handler(count), or None to only count")
        if bus == "mmio":
            for rng in self._ram():
                if address < rng.end and rng.start < address + size:
                    raise ConfigError(
                        f"{what}: {address:#x} is guest RAM ({rng.start:#x}-{rng.end - 1:#x}); a store to RAM never "
                        "leaves the guest, so the doorbell would never ring. Put it outside RAM (a device's MMIO window)"
                    )
        with self._lock:
            if self._refusal is not None:
                raise MachineStateError(f"{what}: {self._refusal}")
            for other in self._bells:
                if other.bus != bus:
                    continue
                if other.address == address:
                    same_value = other.datamatch is None or datamatch is None or other.datamatch == datamatch
                    if other.size == size and same_value:
                        raise ConfigError(f"{what}: {other!r} already takes these writes (KVM refuses it too: EEXIST); close it first")
                    if other.size != size:
                        raise ConfigError(f"{what}: {other!r} is at the same address with another size; one size per address")
                elif address < other.address + other.size and other.address < address + size:
                    raise ConfigError(f"{what}: overlaps {other!r}; a write rings only the doorbell at its exact address, so overlapping ones are refused")
            bell = Doorbell(self, bus, address, size, datamatch, handler, DoorbellCounters(bus, address, size, datamatch))
            try:
                self._backend.ioeventfd(bell.fileno(), address, size, bus == "pio", datamatch)
            except BaseException:
                bell._event.close()
                raise
            self.metrics.add_doorbell(bell.counters)  # only a doorbell that exists is a row
            bell.assigned = True
            self._bells.append(bell)
            self._version += 1
            self._start_locked()
        return bell

    def release(self, bell: Doorbell) -> None:
        """Deassigns one doorbell and serves what its eventfd still holds."""
        with self._lock:
            if bell not in self._bells:
                return
            self._bells.remove(bell)
            self._deassign(bell)
            self._released.append(bell)
            self._version += 1
            self._poke_locked()
        bell._drain(IO_THREAD_JOIN_S)

    def _deassign(self, bell: Doorbell) -> None:
        if not bell.assigned:
            return
        bell.assigned = False
        try:
            self._backend.ioeventfd_deassign(bell.fileno(), bell.address, bell.size, bell.bus == "pio", bell.datamatch)
        except OSError as err:  # the VM goes anyway; closing it frees the ioeventfd
            log.warning("doorbell %s: KVM_IOEVENTFD deassign failed: %s", bell.where, err)

    def failed(self, bell: Doorbell, count: int, exc: Exception) -> None:
        failure = DeviceFailure(None, f"doorbell {bell.where}", "doorbell", bell.address, bell.size, count, exc, traceback.format_exc())
        log.error("%s\n%s", failure, failure.traceback)
        if self._on_error is not None:
            self._on_error(failure)

    # --- the I/O thread --------------------------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is not None:
            self._poke_locked()
            return
        self._wake = EventFd("I/O thread wake-up")
        self._thread = threading.Thread(target=self._loop, name="kvmlab I/O thread", daemon=True)
        self._thread.start()

    def _poke_locked(self) -> None:
        if self._wake is not None and not self._wake.closed:
            self._wake.write(1)

    def _loop(self) -> None:
        """Waits on every doorbell's eventfd (and the wake-up) and serves what rang. Holds no
        Machine: only this object and its doorbells."""
        wake = self._wake
        selector = selectors.DefaultSelector()
        selector.register(wake.fd, selectors.EVENT_READ, None)
        watched: dict[int, Doorbell] = {}
        version = -1
        try:
            while True:
                with self._lock:
                    if self._refusal is not None:
                        return
                    if version != self._version:
                        version = self._version
                        current = {bell.fileno(): bell for bell in self._bells}
                        for fd in watched.keys() - current.keys():
                            selector.unregister(fd)
                        for fd in current.keys() - watched.keys():
                            selector.register(fd, selectors.EVENT_READ, current[fd])
                        watched = current
                for key, _ in selector.select():
                    if key.data is None:
                        wake.read()
                    else:
                        key.data._drain()
        except Exception:  # a bug must not hang stop(); the last drain still serves what is left
            log.exception("the I/O thread failed; doorbells are served again only at stop")
        finally:
            selector.close()

    def halt(self, reason: str) -> None:
        """The machine stopped (no vCPU writes any more): refuse new doorbells, end the I/O
        thread, and serve what every eventfd still holds. The fds stay until ``close``."""
        with self._lock:
            if self._refusal is None:
                self._refusal = reason
            self._poke_locked()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(IO_THREAD_JOIN_S)
            if thread.is_alive():  # a handler that blocks: say so, and leave its fds to close()
                log.error("the I/O thread did not end within %.1f s of stop (a doorbell handler blocks?)", IO_THREAD_JOIN_S)
        # The closed ones too: on the emulated engine a vCPU that had matched a write just as the
        # doorbell closed still writes its eventfd once (KVM's deassign waits for that itself).
        for bell in list(self._bells) + list(self._released):
            bell._drain(IO_THREAD_JOIN_S)

    def close(self) -> None:
        """Ends the thread, serves the rest, deassigns every doorbell and closes every fd (while
        the VM exists). Idempotent."""
        self.halt("the machine is closed; make a new Machine to ring doorbells")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bells, self._bells = self._bells, []
            released, self._released = self._released, []
            thread, wake = self._thread, self._wake
            alive = thread is not None and thread.is_alive()
        for bell in bells:
            self._deassign(bell)
            bell._drain(IO_THREAD_JOIN_S)  # nothing can ring now: the last word
        for bell in bells + released:
            if bell._serving.acquire(timeout=IO_THREAD_JOIN_S):  # not while a blocked handler runs
                try:
                    bell._event.close()
                finally:
                    bell._serving.release()
            else:
                log.error("doorbell %s: its handler still runs; its eventfd is left to the collector", bell.where)
        if wake is not None and not alive:
            wake.close()

    def __repr__(self) -> str:
        return f"<Doorbells {[bell.where for bell in self._bells]}>"
