"""Exit handling: what a vCPU does with each ``KVM_EXIT_*`` (Firecracker's ``handle_kvm_exit``).

Both engines hand exits here in KVM's own format: the KVM engine after ``KVM_RUN`` returns, the
emulated engine from its hooks after filling a ``kvm_run``-shaped page. The result is one of
``Emulation.HANDLED`` / ``INTERRUPTED`` / ``DIRTY_RING_FULL`` / ``WAIT_FOR_INTERRUPT`` (a HLT
with interrupts enabled), a ``Stopped`` (the vCPU exits
with a code; ``machine_wide`` when the whole machine must stop) or a ``DebugExitInfo``; exits
Firecracker treats as errors raise ``FaultyKvmExit`` / ``UnhandledKvmExit``.

An access that reaches no device is answered as a PC answers it (a read is all ones, a write
is dropped), counted by direction (``absent_io_read``, ...) and logged at info level, once
per address: probing for hardware is what firmware and kernels do, not a fault. A strict
machine stops the vCPU instead, with an error exit naming the access.

The kvm_run page is read through typed memoryviews at fixed indices (named and derived from
the ctypes struct in ``kvmlab.kvm.run``, checked against ``<linux/kvm.h>`` by the ABI test;
imported here as plain module ints): on this path an index costs ~30 ns where a ctypes
attribute costs ~150 ns, and the MMIO write path is what the benchmarks measure.

The per-address counts cost one dict ``get`` and one store for an address already counted;
only a new address calls ``VcpuMetrics.count_new_address``, which keeps the table bounded.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import traceback
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Callable

from ..errors import FaultyKvmExit, UnhandledKvmExit
from ..kvm.constants import ExitReason, InternalErrorSuberror, SystemEvent
from ..kvm.run import (
    DEBUG_DR6_U64, DEBUG_DR7_U64, DEBUG_EXCEPTION_U32, DEBUG_PC_U64, EXIT_DEBUG, EXIT_DIRTY_RING_FULL,
    EXIT_FAIL_ENTRY, EXIT_HLT, EXIT_INTERNAL_ERROR, EXIT_IO, EXIT_IRQ_WINDOW_OPEN, EXIT_MMIO, EXIT_REASON_U32,
    EXIT_SHUTDOWN, EXIT_SYSTEM_EVENT, FAIL_ENTRY_CPU_U32, FAIL_ENTRY_REASON_U64, IF_FLAG_U8, INTERNAL_DATA_U64, INTERNAL_NDATA_U32,
    INTERNAL_SUBERROR_U32, IO_COUNT_U32, IO_DATA_OFFSET_U64, IO_DIRECTION_U8, IO_OUT, IO_PORT_U16, IO_SIZE_U8,
    MMIO_DATA_U64, MMIO_IS_WRITE_U8, MMIO_LEN_U32, MMIO_PHYS_ADDR_U64, SYSTEM_EVENT_DATA_U64,
    SYSTEM_EVENT_NDATA_U32, SYSTEM_EVENT_TYPE_U32, exit_data,
)  # fmt: skip
from ..metrics import trace as kinds
from ..metrics.counters import VcpuMetrics
from .bus import ALL_ONES, Bus, BusEntry, GuestRequestedExit
from .unhandled import Notice, UnhandledWarnings, describe, outcome, strict_reason

log = logging.getLogger("kvmlab.vcpu")

class Emulation(enum.Enum):
    """What running the vCPU once amounted to (Firecracker's ``VcpuEmulation``)."""

    HANDLED = "handled"
    INTERRUPTED = "interrupted"
    DIRTY_RING_FULL = "dirty ring full"
    #: HLT with RFLAGS.IF = 1: the guest waits for an interrupt (``Vcpu.halted``)
    WAIT_FOR_INTERRUPT = "waiting for an interrupt"


@dataclass(frozen=True)
class Stopped:
    """The vCPU stops with ``code``. ``machine_wide``: the whole machine stops (shutdown,
    reset, debug-exit), not just this vCPU (HLT with interrupts off)."""

    code: int
    reason: str
    machine_wide: bool


@dataclass(frozen=True)
class DebugExitInfo:
    """A KVM_EXIT_DEBUG (breakpoint or single-step), as Firecracker's ``DebugExitInfo``."""

    exception: int
    pc: int
    dr6: int
    dr7: int


class ExitCode(enum.IntEnum):
    """vCPU exit codes, as Firecracker's ``FcExitCode`` for the ones kvmlab produces.
    A guest's debug-exit port write gives its own code instead.

    One difference from Firecracker: ``KVM_EXIT_SHUTDOWN`` is an error here. Firecracker maps
    it to success (``Ok``) because a Linux guest reboots by triple-faulting on purpose
    (``reboot=t``), and a microVM's reboot is its shutdown. kvmlab's programs never reboot:
    a triple fault is a crash (an exception the IDT could not deliver), and reporting it as
    code 0 told students a dead program had succeeded. So it gets its own code, which
    ``kvmlab boot`` turns back into QEMU's status (``kvmlab.cli``)."""

    OK = 0
    GENERIC_ERROR = 1
    #: KVM_EXIT_SHUTDOWN: the CPU triple-faulted (Firecracker: Ok; see above). 3 is free in
    #: Firecracker's table (0 Ok, 1 GenericError, 2 UnexpectedError, 148+ signals and setup).
    TRIPLE_FAULT = 3


STOPPED_HLT = Stopped(ExitCode.OK, "HLT", machine_wide=False)
STOPPED_SHUTDOWN = Stopped(ExitCode.TRIPLE_FAULT, "SHUTDOWN (triple fault)", machine_wide=True)


@dataclass
class DeviceFailure:
    """A device handler raised; the guest got zeros for a read and the vCPU went on. ``vcpu``
    is None for a doorbell's handler, which runs on the I/O thread (``vstate.doorbells``)."""

    vcpu: int | None
    device: str
    kind: str
    address: int
    size: int
    value: int | None
    error: BaseException
    traceback: str

    def __str__(self) -> str:
        what = f"{self.kind} {self.address:#x}/{self.size}"
        who = "the I/O thread" if self.vcpu is None else f"vCPU {self.vcpu}"
        return f"{who}: device {self.device!r} raised {self.error!r} on {what}"


class Peripherals:
    """What a vCPU's exit handling needs: its kvm_run views, the buses, its metrics.

    ``on_device_error`` is the machine's hook for ``DeviceFailure`` records; ``trace`` is an
    optional per-exit recorder (None when tracing is off, so the hot path pays one test);
    ``unhandled`` is the machine's policy for accesses that reach no device and its record
    of those it logged (shared by its vCPUs; a vCPU built alone gets its own).
    """

    __slots__ = (
        "index", "run_u8", "run_u16", "run_u32", "run_u64",
        "mmio_bus", "pio_bus", "metrics", "trace", "on_device_error", "unhandled", "coalesced",
    )  # fmt: skip

    def __init__(
        self,
        index: int,
        run_views: tuple[memoryview, memoryview, memoryview, memoryview],
        mmio_bus: Bus,
        pio_bus: Bus,
        metrics: VcpuMetrics | None = None,
        on_device_error: Callable[[DeviceFailure], None] | None = None,
        unhandled: UnhandledWarnings | None = None,
    ):
        self.index = index
        self.run_u8, self.run_u16, self.run_u32, self.run_u64 = run_views
        self.mmio_bus = mmio_bus
        self.pio_bus = pio_bus
        self.metrics = metrics if metrics is not None else VcpuMetrics(index)
        self.trace = None
        self.on_device_error = on_device_error
        self.unhandled = unhandled if unhandled is not None else UnhandledWarnings()
        #: the VM's coalesced MMIO (``vstate.coalesced``) once a zone exists, drained before
        #: every exit is handled; None until then, so the exit path pays one test
        self.coalesced = None


def handle_kvm_exit(p: Peripherals, err: int):
    """Handles the exit waiting in ``p``'s kvm_run page (``err == 0``) or a failed KVM_RUN (errno).

    Returns ``Emulation.HANDLED`` / ``DIRTY_RING_FULL`` / ``WAIT_FOR_INTERRUPT``, a ``Stopped``
    or a ``DebugExitInfo``;
    raises ``FaultyKvmExit`` / ``UnhandledKvmExit`` for the exits Firecracker treats as errors.
    """
    m = p.metrics
    if p.coalesced is not None:  # before the exit: a read that exits sees every earlier write
        p.coalesced.drain(p)
    if err:
        return _handle_errno(m, err)
    u32 = p.run_u32
    reason = u32[EXIT_REASON_U32]
    if reason == EXIT_MMIO:
        u64 = p.run_u64
        address = u64[MMIO_PHYS_ADDR_U64]
        size = u32[MMIO_LEN_U32]
        bus = p.mmio_bus
        entry = bus.lookup.get(address) or bus.resolve(address)
        if p.run_u8[MMIO_IS_WRITE_U8]:
            value = u64[MMIO_DATA_U64] & ALL_ONES[size]
            m.exit_mmio_write += 1
            counts = m.mmio_write_by_addr
            seen = counts.get(address)
            if seen is not None:
                counts[address] = seen + 1
            else:
                m.count_new_address("mmio_write_by_addr", address)
            if entry is None:
                m.absent_mmio_write += 1
                return _absent(p, "MMIO write", address, size, kinds.MMIO_WRITE, value)
            start = perf_counter_ns()
            try:
                entry.write(address - entry.base, size, value)
            except GuestRequestedExit as request:
                return Stopped(request.code, request.reason, machine_wide=True)
            except Exception as exc:
                _device_failed(p, entry, "MMIO write", address, size, value, exc)
            elapsed = perf_counter_ns() - start
            agg = m.exit_mmio_write_agg
            kind = kinds.MMIO_WRITE
        else:
            m.exit_mmio_read += 1
            counts = m.mmio_read_by_addr
            seen = counts.get(address)
            if seen is not None:
                counts[address] = seen + 1
            else:
                m.count_new_address("mmio_read_by_addr", address)
            if entry is None:
                m.absent_mmio_read += 1
                u64[MMIO_DATA_U64] = value = ALL_ONES[size]  # open bus, as a PC reads where nothing decodes
                return _absent(p, "MMIO read", address, size, kinds.MMIO_READ, value)
            start = perf_counter_ns()
            try:
                value = entry.read(address - entry.base, size) & ALL_ONES[size]
            except Exception as exc:
                _device_failed(p, entry, "MMIO read", address, size, None, exc)
                value = 0
            elapsed = perf_counter_ns() - start
            u64[MMIO_DATA_U64] = value
            agg = m.exit_mmio_read_agg
            kind = kinds.MMIO_READ
        agg.record(elapsed)
        trace = p.trace
        if trace is not None:
            trace(kind, address, size, value, start, elapsed)
        return Emulation.HANDLED
    if reason == EXIT_IO:
        return _handle_io(p, m)
    if reason == EXIT_IRQ_WINDOW_OPEN:
        # Asked for (request_interrupt_window) while a raised vector waited: the guest can
        # take it now, and the run loop injects it before the next KVM_RUN (api.rst 5).
        m.irq_window_exits += 1
        _mark(p, kinds.IRQ_WINDOW)
        return Emulation.HANDLED
    if reason == EXIT_HLT:
        m.exit_hlt += 1
        _mark(p, kinds.HLT)
        # Without an in-kernel irqchip every HLT exits here. kvm_run.if_flag is the guest's
        # RFLAGS.IF as of the exit (api.rst 5: valid without the in-kernel LAPIC; with one,
        # HLT never reaches user space): IF=1 means "wake me with an interrupt".
        if p.run_u8[IF_FLAG_U8]:
            log.debug("vCPU %d: received KVM_EXIT_HLT with IF=1; waiting for an interrupt", p.index)
            return Emulation.WAIT_FOR_INTERRUPT
        log.info("vCPU %d: received KVM_EXIT_HLT", p.index)
        return STOPPED_HLT
    if reason == EXIT_SHUTDOWN:
        log.info("vCPU %d: received KVM_EXIT_SHUTDOWN", p.index)
        m.exit_shutdown += 1
        _mark(p, kinds.SHUTDOWN)
        return STOPPED_SHUTDOWN
    if reason == EXIT_FAIL_ENTRY:
        m.failures += 1
        hw_reason, cpu = p.run_u64[FAIL_ENTRY_REASON_U64], u32[FAIL_ENTRY_CPU_U32]
        log.error("vCPU %d: received KVM_EXIT_FAIL_ENTRY: %d on cpu %d", p.index, hw_reason, cpu)
        raise FaultyKvmExit(f"FailEntry({hw_reason}, {cpu})")
    if reason == EXIT_INTERNAL_ERROR:
        m.failures += 1
        detail = describe_internal_error(p)
        log.error("vCPU %d: received KVM_EXIT_INTERNAL_ERROR: %s", p.index, detail)
        raise FaultyKvmExit(f"InternalError({detail})")
    if reason == EXIT_SYSTEM_EVENT:
        event_type = u32[SYSTEM_EVENT_TYPE_U32]
        data = exit_data(u32, p.run_u64, SYSTEM_EVENT_NDATA_U32, SYSTEM_EVENT_DATA_U64)
        if event_type in (SystemEvent.RESET, SystemEvent.SHUTDOWN):
            log.info("vCPU %d: received KVM_SYSTEM_EVENT type %d, data %s", p.index, event_type, data)
            _mark(p, kinds.SYSTEM_EVENT, event_type)
            return Stopped(ExitCode.OK, f"system event {SystemEvent(event_type).name}", machine_wide=True)
        m.failures += 1
        log.error("vCPU %d: received KVM_SYSTEM_EVENT type %d, data %s", p.index, event_type, data)
        raise FaultyKvmExit(f"SystemEvent({event_type}, {data})")
    if reason == EXIT_DIRTY_RING_FULL:
        return Emulation.DIRTY_RING_FULL
    if reason == EXIT_DEBUG:
        m.exit_debug += 1
        u64 = p.run_u64
        _mark(p, kinds.DEBUG, u64[DEBUG_PC_U64])
        return DebugExitInfo(u32[DEBUG_EXCEPTION_U32], u64[DEBUG_PC_U64], u64[DEBUG_DR6_U64], u64[DEBUG_DR7_U64])
    raise UnhandledKvmExit(ExitReason.name_of(reason))


def _handle_errno(m: VcpuMetrics, err: int):
    """Firecracker's ``Err(errno)`` arm: EAGAIN retries, the rest end the vCPU."""
    if err == errno.EAGAIN:
        return Emulation.HANDLED
    if err == errno.ENOSYS:
        m.failures += 1
        log.error("Received ENOSYS error because KVM failed to emulate an instruction.")
        raise FaultyKvmExit("Received ENOSYS error because KVM failed to emulate an instruction.")
    if err == errno.EFAULT:
        raise FaultyKvmExit(f"{os.strerror(err)} (os error {err})")
    m.failures += 1
    log.error("Failure during vcpu run: %s (os error %d)", os.strerror(err), err)
    raise FaultyKvmExit(f"{os.strerror(err)} (os error {err})")


def _handle_io(p: Peripherals, m: VcpuMetrics):
    """x86 port I/O (Firecracker's ``run_arch_emulation``); ``count`` > 1 for string I/O.

    Written for speed like the MMIO path (serial output is port I/O): one access of one byte
    reads its data straight from the page."""
    u8 = p.run_u8
    size = u8[IO_SIZE_U8]
    port = p.run_u16[IO_PORT_U16]
    count = p.run_u32[IO_COUNT_U32]
    offset = p.run_u64[IO_DATA_OFFSET_U64]
    bus = p.pio_bus
    entry = bus.lookup.get(port) or bus.resolve(port)
    out = u8[IO_DIRECTION_U8] == IO_OUT
    if out:
        m.exit_io_out += 1
        counts = m.io_out_by_port
    else:
        m.exit_io_in += 1
        counts = m.io_in_by_port
    seen = counts.get(port)
    if seen is not None:
        counts[port] = seen + 1
    else:
        m.count_new_address("io_out_by_port" if out else "io_in_by_port", port)
    if entry is None:
        if out:
            m.absent_io_write += 1
            return _absent(p, "port out", port, size, kinds.IO_OUT, 0)
        m.absent_io_read += 1
        u8[offset : offset + size * count] = b"\xff" * (size * count)  # an absent ISA port floats high
        return _absent(p, "port in", port, size, kinds.IO_IN, ALL_ONES[size])
    value = 0
    register = port - entry.base
    start = perf_counter_ns()
    if out:
        if count == 1 and size == 1:  # OUT DX, AL: a UART byte, a POST code
            value = u8[offset]
            try:
                entry.write(register, 1, value)
            except GuestRequestedExit as request:
                return Stopped(request.code, request.reason, machine_wide=True)
            except Exception as exc:
                _device_failed(p, entry, "port out", port, size, value, exc)
        else:
            for at in range(offset, offset + size * count, size):
                value = int.from_bytes(u8[at : at + size], "little")
                try:
                    entry.write(register, size, value)
                except GuestRequestedExit as request:
                    return Stopped(request.code, request.reason, machine_wide=True)
                except Exception as exc:
                    _device_failed(p, entry, "port out", port, size, value, exc)
        agg, trace_kind = m.exit_io_out_agg, kinds.IO_OUT
    else:
        for at in range(offset, offset + size * count, size):
            try:
                value = entry.read(register, size) & ALL_ONES[size]
            except Exception as exc:
                _device_failed(p, entry, "port in", port, size, None, exc)
                value = 0
            if size == 1:
                u8[at] = value
            else:
                u8[at : at + size] = value.to_bytes(size, "little")
        agg, trace_kind = m.exit_io_in_agg, kinds.IO_IN
    elapsed = perf_counter_ns() - start
    agg.record(elapsed)
    trace = p.trace
    if trace is not None:
        trace(trace_kind, port, size, value, start, elapsed)
    return Emulation.HANDLED


def describe_internal_error(p: Peripherals) -> str:
    suberror = p.run_u32[INTERNAL_SUBERROR_U32]
    data = exit_data(p.run_u32, p.run_u64, INTERNAL_NDATA_U32, INTERNAL_DATA_U64)
    try:
        name = InternalErrorSuberror(suberror).name
    except ValueError:
        name = "unknown"
    return f"suberror={suberror} {name}, data=[{', '.join(hex(d) for d in data)}]"


def _mark(p: Peripherals, kind: int, address: int = 0) -> None:
    """A trace row for an exit that reaches no device."""
    if p.trace is not None:
        p.trace(kind, address, 0, 0, perf_counter_ns(), 0)


def _absent(p: Peripherals, kind: str, address: int, size: int, trace_kind: int, value: int) -> Emulation | Stopped:
    """An access no device claims, after the caller counted it by direction (``absent_*``)
    and gave a read all ones: counted in ``unhandled_accesses`` and traced, then one *info*
    line per address and machine (up to ``WARNED_LIMIT``; shown by ``--verbose``, never on
    stderr by itself) and HANDLED, or, on a strict machine, a stop with an error naming it."""
    p.metrics.unhandled_accesses += 1
    if p.trace is not None:
        p.trace(trace_kind, address, size, value, perf_counter_ns(), 0)
    notice = p.unhandled.note(kind, address)
    if notice is Notice.REPEAT:
        return Emulation.HANDLED
    if notice is Notice.STRICT:
        return Stopped(ExitCode.GENERIC_ERROR, strict_reason(kind, address, size), machine_wide=True)
    if notice is Notice.FIRST:
        if log.isEnabledFor(logging.INFO):
            log.info("vCPU %d: %s reached no device; %s, as on a PC", p.index, describe(kind, address, size), outcome(kind))
    else:
        log.info(
            "vCPU %d: %d distinct accesses reached no device; no more lines about new ones "
            "(the metrics count every one: absent_*, address_counts())", p.index, p.unhandled.limit,
        )  # fmt: skip
    return Emulation.HANDLED


def _device_failed(p: Peripherals, entry: BusEntry, kind: str, address: int, size: int, value, exc: Exception) -> None:
    p.metrics.device_errors += 1
    failure = DeviceFailure(p.index, entry.name, kind, address, size, value, exc, traceback.format_exc())
    log.error("%s\n%s", failure, failure.traceback)
    if p.on_device_error is not None:
        p.on_device_error(failure)
