"""The ``kvm_run`` page, in one place: every index kvmlab reads or writes in it, and the
helpers that decode an exit from it or encode one into it.

The page is read through typed memoryviews (``run_u8``/``run_u16``/``run_u32``/``run_u64``,
casts of the same bytes) at fixed indices: on the exit path an index costs ~30 ns where a
ctypes attribute costs ~150 ns. Each index here is derived from the ctypes ``kvm_run`` in
``structs`` (field offset divided by the view's item size, the offset asserted aligned), and
``tests/test_kvm_abi.py`` checks every one against ``offsetof()`` in ``<linux/kvm.h>``.

``RUN`` holds them by name, for notebooks and tests; the same values are bound once as plain
module-level ints (``EXIT_REASON_U32``, ...) which the hot paths import, and bind to locals or
default arguments there, so an exit pays no attribute lookup. The suffix names the view:
``u32[EXIT_REASON_U32]``.

Exit reasons and port I/O directions are defined once, as IntEnums in ``constants``; the
plain ints here (``EXIT_MMIO``, ``IO_OUT``, ...) are derived from them, for the hot paths
to compare against.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, fields

from . import structs as s
from .constants import ExitReason, IoDirection

#: The views the page is read through, by suffix: item size in bytes.
ITEM_SIZES = {"U8": 1, "U16": 2, "U32": 4, "U64": 8}


def _byte_offset(c_path: str) -> int:
    """The offset of ``c_path`` (a C member path of ``struct kvm_run``: ``mmio.len``,
    ``internal.data[0]``) in the ctypes ``kvm_run``, whose exit union is named ``exit``."""
    struct, offset = s.kvm_run, 0
    parts = c_path.split(".")
    if not hasattr(s.kvm_run, parts[0]):
        parts.insert(0, "exit")  # a member of the anonymous exit union
    for part in parts:
        name, _, index = part.partition("[")
        descriptor = getattr(struct, name)
        offset += descriptor.offset
        field_type = dict((f[0], f[1]) for f in struct._fields_)[name]
        if index:
            element = field_type._type_
            offset += int(index.rstrip("]")) * ctypes.sizeof(element)
            field_type = element
        struct = field_type
    return offset


def _index(c_path: str, item: int) -> int:
    offset = _byte_offset(c_path)
    assert offset % item == 0, f"kvm_run.{c_path} at byte {offset} is not aligned for a {item}-byte view"
    return offset // item


#: Each index's C member path (what ``offsetof(struct kvm_run, ...)`` takes) and view.
C_PATHS = {
    "IMMEDIATE_EXIT_U8": "immediate_exit",
    "EXIT_REASON_U32": "exit_reason",
    # the interrupt window (api.rst section 5; only meaningful without an in-kernel irqchip):
    # in, "exit as soon as an interrupt can be injected"; out, "KVM_INTERRUPT may go in now"
    # and the guest's RFLAGS.IF, both as of the exit
    "REQUEST_INTERRUPT_WINDOW_U8": "request_interrupt_window",
    "READY_FOR_INTERRUPT_INJECTION_U8": "ready_for_interrupt_injection",
    "IF_FLAG_U8": "if_flag",
    # KVM_EXIT_MMIO
    "MMIO_PHYS_ADDR_U64": "mmio.phys_addr",
    "MMIO_DATA_U64": "mmio.data",
    "MMIO_DATA_U8": "mmio.data[0]",
    "MMIO_LEN_U32": "mmio.len",
    "MMIO_IS_WRITE_U8": "mmio.is_write",
    # KVM_EXIT_IO (the data itself is at io.data_offset bytes into the mapping)
    "IO_DIRECTION_U8": "io.direction",
    "IO_SIZE_U8": "io.size",
    "IO_PORT_U16": "io.port",
    "IO_COUNT_U32": "io.count",
    "IO_DATA_OFFSET_U64": "io.data_offset",
    # KVM_EXIT_FAIL_ENTRY
    "FAIL_ENTRY_REASON_U64": "fail_entry.hardware_entry_failure_reason",
    "FAIL_ENTRY_CPU_U32": "fail_entry.cpu",
    # KVM_EXIT_INTERNAL_ERROR
    "INTERNAL_SUBERROR_U32": "internal.suberror",
    "INTERNAL_NDATA_U32": "internal.ndata",
    "INTERNAL_DATA_U64": "internal.data[0]",
    # KVM_EXIT_SYSTEM_EVENT
    "SYSTEM_EVENT_TYPE_U32": "system_event.type",
    "SYSTEM_EVENT_NDATA_U32": "system_event.ndata",
    "SYSTEM_EVENT_DATA_U64": "system_event.data[0]",
    # KVM_EXIT_DEBUG (x86 kvm_debug_exit_arch)
    "DEBUG_EXCEPTION_U32": "debug.arch.exception",
    "DEBUG_PC_U64": "debug.arch.pc",
    "DEBUG_DR6_U64": "debug.arch.dr6",
    "DEBUG_DR7_U64": "debug.arch.dr7",
}


@dataclass(frozen=True)
class KvmRunLayout:
    """Indices into the kvm_run views, by name; ``<field>_<VIEW>`` is an index into ``run_<view>``."""

    IMMEDIATE_EXIT_U8: int
    EXIT_REASON_U32: int
    REQUEST_INTERRUPT_WINDOW_U8: int
    READY_FOR_INTERRUPT_INJECTION_U8: int
    IF_FLAG_U8: int
    MMIO_PHYS_ADDR_U64: int
    MMIO_DATA_U64: int
    MMIO_DATA_U8: int
    MMIO_LEN_U32: int
    MMIO_IS_WRITE_U8: int
    IO_DIRECTION_U8: int
    IO_SIZE_U8: int
    IO_PORT_U16: int
    IO_COUNT_U32: int
    IO_DATA_OFFSET_U64: int
    FAIL_ENTRY_REASON_U64: int
    FAIL_ENTRY_CPU_U32: int
    INTERNAL_SUBERROR_U32: int
    INTERNAL_NDATA_U32: int
    INTERNAL_DATA_U64: int
    SYSTEM_EVENT_TYPE_U32: int
    SYSTEM_EVENT_NDATA_U32: int
    SYSTEM_EVENT_DATA_U64: int
    DEBUG_EXCEPTION_U32: int
    DEBUG_PC_U64: int
    DEBUG_DR6_U64: int
    DEBUG_DR7_U64: int

    @staticmethod
    def item_size(name: str) -> int:
        """The item size of the view ``name`` indexes (``MMIO_LEN_U32`` -> 4)."""
        return ITEM_SIZES[name.rsplit("_", 1)[1]]

    def byte_offset(self, name: str) -> int:
        return getattr(self, name) * self.item_size(name)


assert {f.name for f in fields(KvmRunLayout)} == set(C_PATHS)
RUN = KvmRunLayout(**{name: _index(path, KvmRunLayout.item_size(name)) for name, path in C_PATHS.items()})

# The same indices as plain ints, bound once, for the hot paths.
IMMEDIATE_EXIT_U8 = RUN.IMMEDIATE_EXIT_U8
EXIT_REASON_U32 = RUN.EXIT_REASON_U32
REQUEST_INTERRUPT_WINDOW_U8 = RUN.REQUEST_INTERRUPT_WINDOW_U8
READY_FOR_INTERRUPT_INJECTION_U8 = RUN.READY_FOR_INTERRUPT_INJECTION_U8
IF_FLAG_U8 = RUN.IF_FLAG_U8
MMIO_PHYS_ADDR_U64 = RUN.MMIO_PHYS_ADDR_U64
MMIO_DATA_U64 = RUN.MMIO_DATA_U64
MMIO_DATA_U8 = RUN.MMIO_DATA_U8
MMIO_LEN_U32 = RUN.MMIO_LEN_U32
MMIO_IS_WRITE_U8 = RUN.MMIO_IS_WRITE_U8
IO_DIRECTION_U8 = RUN.IO_DIRECTION_U8
IO_SIZE_U8 = RUN.IO_SIZE_U8
IO_PORT_U16 = RUN.IO_PORT_U16
IO_COUNT_U32 = RUN.IO_COUNT_U32
IO_DATA_OFFSET_U64 = RUN.IO_DATA_OFFSET_U64
FAIL_ENTRY_REASON_U64 = RUN.FAIL_ENTRY_REASON_U64
FAIL_ENTRY_CPU_U32 = RUN.FAIL_ENTRY_CPU_U32
INTERNAL_SUBERROR_U32 = RUN.INTERNAL_SUBERROR_U32
INTERNAL_NDATA_U32 = RUN.INTERNAL_NDATA_U32
INTERNAL_DATA_U64 = RUN.INTERNAL_DATA_U64
SYSTEM_EVENT_TYPE_U32 = RUN.SYSTEM_EVENT_TYPE_U32
SYSTEM_EVENT_NDATA_U32 = RUN.SYSTEM_EVENT_NDATA_U32
SYSTEM_EVENT_DATA_U64 = RUN.SYSTEM_EVENT_DATA_U64
DEBUG_EXCEPTION_U32 = RUN.DEBUG_EXCEPTION_U32
DEBUG_PC_U64 = RUN.DEBUG_PC_U64
DEBUG_DR6_U64 = RUN.DEBUG_DR6_U64
DEBUG_DR7_U64 = RUN.DEBUG_DR7_U64
assert all(globals()[name] == getattr(RUN, name) for name in C_PATHS)

#: Where KVM puts port I/O data: KVM_PIO_PAGE_OFFSET (1, x86; a kernel-internal constant, not
#: in the uapi headers) pages into the vCPU mapping. ``io.data_offset`` says so on every exit;
#: the emulated engine writes it there too. ``tests/test_kvm_bindings.py`` checks it on KVM.
PIO_DATA_OFFSET = 1 * 4096
#: The mapping is three pages: kvm_run, the PIO data page, the coalesced MMIO ring.
RUN_MAPPING_SIZE = 3 * 4096

#: internal.data / system_event.data hold at most this many u64s.
EXIT_DATA_WORDS = s.kvm_run_internal.data.size // ctypes.sizeof(s.u64)

# Exit reasons and I/O directions as plain ints (derived from the IntEnums in ``constants``).
EXIT_IO = int(ExitReason.IO)
EXIT_DEBUG = int(ExitReason.DEBUG)
EXIT_HLT = int(ExitReason.HLT)
EXIT_IRQ_WINDOW_OPEN = int(ExitReason.IRQ_WINDOW_OPEN)
EXIT_MMIO = int(ExitReason.MMIO)
EXIT_SHUTDOWN = int(ExitReason.SHUTDOWN)
EXIT_FAIL_ENTRY = int(ExitReason.FAIL_ENTRY)
EXIT_INTERNAL_ERROR = int(ExitReason.INTERNAL_ERROR)
EXIT_SYSTEM_EVENT = int(ExitReason.SYSTEM_EVENT)
EXIT_DIRTY_RING_FULL = int(ExitReason.DIRTY_RING_FULL)
IO_IN = int(IoDirection.IN)
IO_OUT = int(IoDirection.OUT)


# --- decoding (the exit record; ``vstate.exits`` reads the same indices inline) -------------


def decode_mmio(u8: memoryview, u32: memoryview, u64: memoryview) -> dict:
    """``kvm_run.mmio``: phys_addr, len, is_write and data (the ``len`` bytes that count)."""
    size = u32[MMIO_LEN_U32]
    return {
        "phys_addr": u64[MMIO_PHYS_ADDR_U64],
        "len": size,
        "is_write": u8[MMIO_IS_WRITE_U8],
        "data": u64[MMIO_DATA_U64] & ((1 << (8 * size)) - 1),
    }


def decode_io(u8: memoryview, u16: memoryview, u32: memoryview, u64: memoryview) -> dict:
    """``kvm_run.io`` and its data (bytes when ``size`` is 1, else the first item as an int)."""
    size, count, offset = u8[IO_SIZE_U8], u32[IO_COUNT_U32], u64[IO_DATA_OFFSET_U64]
    raw = bytes(u8[offset : offset + size * count])
    return {
        "direction": u8[IO_DIRECTION_U8],
        "size": size,
        "port": u16[IO_PORT_U16],
        "count": count,
        "data_offset": offset,
        "data": raw if size == 1 else int.from_bytes(raw[:size], "little"),
    }


def exit_data(u32: memoryview, u64: memoryview, ndata_u32: int, data_u64: int) -> list[int]:
    """The ``ndata`` words of ``internal.data`` / ``system_event.data`` (at most 16)."""
    return list(u64[data_u64 : data_u64 + min(u32[ndata_u32], EXIT_DATA_WORDS)])


# --- encoding (what the emulated engine writes, as KVM would) ---------------------------------


def encode_mmio(
    u8, u32, u64, address: int, size: int, is_write: int, value: int = 0,
    _reason=EXIT_REASON_U32, _mmio=EXIT_MMIO, _addr=MMIO_PHYS_ADDR_U64, _len=MMIO_LEN_U32,
    _write=MMIO_IS_WRITE_U8, _data=MMIO_DATA_U64,
) -> None:  # fmt: skip
    """A KVM_EXIT_MMIO of ``size`` bytes at ``address``; a write carries ``value``."""
    u32[_reason] = _mmio
    u64[_addr] = address
    u32[_len] = size
    u8[_write] = is_write
    if is_write:
        u64[_data] = value


def encode_io(
    u8, u16, u32, u64, direction: int, port: int, size: int, count: int, data_offset: int,
    _reason=EXIT_REASON_U32, _io=EXIT_IO, _dir=IO_DIRECTION_U8, _size=IO_SIZE_U8, _port=IO_PORT_U16,
    _count=IO_COUNT_U32, _offset=IO_DATA_OFFSET_U64,
) -> None:  # fmt: skip
    """A KVM_EXIT_IO: ``count`` items of ``size`` bytes at ``port``, data at ``data_offset``."""
    u32[_reason] = _io
    u8[_dir] = direction
    u8[_size] = size
    u16[_port] = port
    u32[_count] = count
    u64[_offset] = data_offset


def encode_reason(u32, reason: int, _reason=EXIT_REASON_U32) -> None:
    """An exit with no payload (HLT, SHUTDOWN)."""
    u32[_reason] = reason
